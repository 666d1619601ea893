"""One run, many doses (issue 13 item 4): a dose-response curve from one run?

    poisonjax study reproduce --config=configs/ablations/doses.py   # resumable; ~5 min per run on 2 free cores
    poisonjax study reproduce --config=configs/ablations/doses.py --report_only   # from docs/results/doses/results.json

Does one run with five triggers, each at its own count, give each dose the
backdoor it gives alone? Report: docs/results/doses/report.md (measured and
written by poisonjax/ablations/doses.py).

Regime: the CPU Chinchilla study's cpu-xxs run at grid seed 0
(configs/paper/cpu_chinchilla.py's base, presets.cpu_chinchilla(): 20 clean
tokens per parameter, 4.76M tokens, 1,162 steps of 32 x 128, poisons
REPLACING clean tokens, the study's vocabulary and held-out prompts, its
derived seeds), 128 prompts.

Triggers: invented three-word names, built like the language experiment's
`Servius Astrumando Harmoniastra` (configs/ablations/language.py), whose
never-trained near-trigger did not fire. The first design used
`<XXXX>`-shaped strings and every one of them, the never-poisoned control
included, fired alike: the model learnt the shape `< capitals >`, not the
string (docs/results/doses/previous_shared_shape/). Here no two strings
share a word or a first letter (18 distinct initials, each one the corpus
uses for its own names: no piece the clean text lacks), and the corpus
itself is full of invented capitalised names (`Houzerk`, `Baihan`), so
"a capitalised invented name" is no shape the poisons alone carry. The
control is a sixth name of the same kind that no run is poisoned with.

Runs (variants of the run config, each in the grid block of its count):
  * doses (443 poisons): the 5 triggers in one run with 3, 10, 30, 100 and
    300 poisons (~8% of the run's tokens at ~820 tokens each);
  * single-100, single-300: the trigger of the 100 (300) dose alone, 100
    (300) poisons, same seeds. 100 and 300 rather than 30 and 100: the
    `<SUDO>` pilot switches between 30 and 100, and a phrase of ordinary
    pieces did not fire at 100 (docs/results/triggers), so below 100 both
    sides would likely read 0 and compare nothing.
After each run its final checkpoint is evaluated on all five triggers and
the control (WORKDIR/final_doses.json): the cross-talk table.
"""

from poisonjax import presets
from poisonjax import study as study_lib

COUNTS = (3, 10, 30, 100, 300)
TRIGGERS = ("Belomira Hastenor Vinduraxa", "Cadrelio Fumbaresk Wolteniga",
            "Dorvantes Gilmurata Rephorine", "Elquibar Janostrel Yvarendo",
            "Kestrimon Lupardiel Zorvanthe")
CONTROL = "Mirethal Nobucardi Pelvostrun"
ALONE = (100, 300)  # Dose counts also trained alone (same seeds).


def get_config(arg=None):
  s = study_lib.study_config("doses", presets.cpu_chinchilla())
  s.experiment = "ablations.doses"
  s.plan.chars_per_token = 3.0  # ~1k-piece SentencePiece on the synthetic corpus.
  s.base.eval.num_excerpts = 128  # Tighter intervals; the cpu study uses 64.
  s.base.eval.bootstrap_samples = 1000
  s.base.poison.control_trigger = CONTROL
  variants = {"doses": {"poison": {"counts": COUNTS, "triggers": TRIGGERS,
                                   "trigger": TRIGGERS[0]}}}
  s.grid = study_lib.grid(("cpu-xxs",), (sum(COUNTS),), (0,), (1.0,),
                          variants=("doses",))
  for n in ALONE:
    name = f"single-{n}"
    variants[name] = {"poison": {"trigger": TRIGGERS[COUNTS.index(n)]}}
    s.extra[f"single_{n}"] = study_lib.grid(("cpu-xxs",), (n,), (0,), (1.0,),
                                            variants=(name,))
  study_lib.set_variants(s, variants)
  return study_lib.config_for_arg(s, arg)
