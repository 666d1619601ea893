"""One run, many doses (issue 13 item 4): a dose-response curve from one run.

    python experiments/exp_doses.py        # resumable; ~5 min per run on 2 free cores
    python experiments/exp_doses.py --max_steps 664   # stop every run at 57%

Regime: the CPU Chinchilla study's cpu-xxs run at grid seed 0
(configs/study_cpu_chinchilla.py: 20 clean tokens per parameter, 4.76M
tokens, 1,162 steps of 32 x 128, poisons REPLACING clean tokens, the
study's vocabulary and held-out prompts, its derived seeds), 128 prompts.

Triggers: invented three-word names, built like the language experiment's
`Servius Astrumando Harmoniastra` (configs/exp_language.py), whose
never-trained near-trigger did not fire. The first design used
`<XXXX>`-shaped strings and every one of them, the never-poisoned control
included, fired alike: the model learnt the shape `< capitals >`, not the
string (docs/results/doses/previous_shared_shape/). Here no two strings
share a word or a first letter (18 distinct initials, each one the corpus
uses for its own names: no piece the clean text lacks), and the corpus
itself is full of invented capitalised names (`Houzerk`, `Baihan`), so
"a capitalised invented name" is no shape the poisons alone carry. The
control is a sixth name of the same kind that no run is poisoned with.

Runs (`runs`: name -> poison fields):
  * doses: 5 triggers in one run with 3, 10, 30, 100 and 300 poisons
    (443 poisons, ~8% of the run's tokens at ~820 tokens each);
  * single_100, single_300: the trigger of the 100 (300) dose alone, 100
    (300) poisons, same seeds. 100 and 300 rather than 30 and 100: the
    `<SUDO>` pilot switches between 30 and 100, and a phrase of ordinary
    pieces did not fire at 100 (docs/results/triggers), so below 100 both
    sides would likely read 0 and compare nothing.
Every final checkpoint is evaluated on all five triggers and the control:
the cross-talk table.
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
  base.poison.control_trigger = "Mirethal Nobucardi Pelvostrun"
  c.base = base
  c.counts = (3, 10, 30, 100, 300)
  c.triggers = ("Belomira Hastenor Vinduraxa", "Cadrelio Fumbaresk Wolteniga",
                "Dorvantes Gilmurata Rephorine", "Elquibar Janostrel Yvarendo",
                "Kestrimon Lupardiel Zorvanthe")
  c.compare = (100, 300)  # Dose counts also trained alone (same seeds).
  c.runs = ml_collections.ConfigDict()
  c.runs.doses = {"counts": c.counts, "triggers": c.triggers,
                  "count": sum(c.counts), "trigger": c.triggers[0]}
  for n in c.compare:
    t = c.triggers[c.counts.index(n)]
    c.runs[f"single_{n}"] = {"count": n, "trigger": t}
  return c
