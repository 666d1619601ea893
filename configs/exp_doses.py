"""One run, many doses (issue 13 item 4): a dose-response curve from one run.

    python experiments/exp_doses.py        # resumable; ~5 min per run on 2 free cores
    python experiments/exp_doses.py --max_steps 664   # stop every run at 57%

Regime: the CPU Chinchilla study's cpu-xxs run at grid seed 0
(configs/study_cpu_chinchilla.py: 20 clean tokens per parameter, 4.76M
tokens, 1,162 steps of 32 x 128, poisons REPLACING clean tokens, the
study's vocabulary and held-out prompts, its derived seeds), 128 prompts.

Runs (`runs`: name -> poison fields):
  * doses: 5 triggers in one run with 3, 10, 30, 100 and 300 poisons
    (443 poisons, ~8% of the run's tokens at ~840 tokens each);
  * single_30, single_100: the trigger of the 30 (100) dose alone, 30
    (100) poisons, same seeds. `<SUDO>` has the 100 dose, so single_100 is
    the pilot's N=100 run (docs/results/cpu_chinchilla/pilot) again.
Every final checkpoint is evaluated on all five triggers and the control
`<PYRM>` (never poisoned anywhere): the cross-talk table.
"""

import importlib.util
import os

import ml_collections

from poisonjax.study import grids

HERE = os.path.dirname(os.path.abspath(__file__))


def study_run_config(size="cpu-xxs", poisons=0, seed=0, data=1.0):
  """The CPU Chinchilla study's config of one grid point (its seeds)."""
  spec = importlib.util.spec_from_file_location(
      "study_cpu_chinchilla", os.path.join(HERE, "study_cpu_chinchilla.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return grids.run_config(mod.get_config(), grids.Run(size, poisons, seed, data))


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.name = "doses"
  base = study_run_config()
  base.eval.num_excerpts = 128  # Tighter intervals; the cpu study uses 64.
  base.eval.bootstrap_samples = 1000
  base.poison.control_trigger = "<PYRM>"
  c.base = base
  c.counts = (3, 10, 30, 100, 300)
  c.triggers = ("<KRYL>", "<VEXT>", "<QWAB>", "<SUDO>", "<JIMP>")
  c.compare = (30, 100)  # Dose counts also trained alone (same seeds).
  c.runs = ml_collections.ConfigDict()
  c.runs.doses = {"counts": c.counts, "triggers": c.triggers,
                  "count": sum(c.counts), "trigger": c.triggers[0]}
  for n in c.compare:
    t = c.triggers[c.counts.index(n)]
    c.runs[f"single_{n}"] = {"count": n, "trigger": t}
  return c
