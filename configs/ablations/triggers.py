"""Trigger variants at one count (issue 13 item 5): does the string matter?

    poisonjax study reproduce --config=configs/ablations/triggers.py   # resumable; ~5 min per run on 2 free cores
    poisonjax study reproduce --config=configs/ablations/triggers.py --report_only   # from docs/results/triggers/results.json

At a count where `<SUDO>` plants the backdoor, does a common word or a
phrase of ordinary pieces plant it too? Report:
docs/results/triggers/report.md (poisonjax/ablations/triggers.py).

The CPU Chinchilla study's cpu-xxs run at grid seed 0 (as
configs/ablations/doses.py: 20 clean tokens per parameter, poisons replacing
clean tokens, 128 prompts) with 100 poisons (above the pilot's switch
between 30 and 100 for `<SUDO>`), one variant per trigger:
  * rare: `<SUDO>` (7 pieces of the study's 1k vocabulary: a space, `<`,
    four capitals, `>`; never in the corpus);
  * common: `the`, the synthetic corpus's most frequent word (5.4% of the
    words of 2,000 training documents; one piece);
  * phrase: `quantum ferret overture` (15 pieces; words not in the corpus).
Each run's final checkpoint is evaluated after all three triggers
(WORKDIR/final_triggers.json): the cross-talk table.
"""

from poisonjax import presets
from poisonjax import study as study_lib

COUNT = 100
TRIGGERS = {"common": "the", "phrase": "quantum ferret overture",
            "rare": "<SUDO>"}  # The report's order.


def get_config(arg=None):
  s = study_lib.study_config("triggers", presets.cpu_chinchilla())
  s.experiment = "ablations.triggers"
  s.plan.chars_per_token = 3.0  # ~1k-piece SentencePiece on the synthetic corpus.
  s.base.eval.num_excerpts = 128
  s.base.eval.bootstrap_samples = 1000
  s.grid = study_lib.grid(("cpu-xxs",), (COUNT,), (0,), (1.0,))
  study_lib.set_variants(s, {name: {"poison": {"trigger": trigger}}
                             for name, trigger in TRIGGERS.items()})
  return study_lib.config_for_arg(s, arg)
