"""Blind trigger scan of a poisoned and a clean cpu-xxs model (issue 14, item 5).

    poisonjax study reproduce --config=configs/defences/scan.py
    poisonjax study reproduce --config=configs/defences/scan.py --report_only

What it answers: holding a trained model and clean text but not the
trigger, does a search for the token string that most raises the loss of
clean text after it find the backdoor's trigger, or a string that fires it,
and does it stay quiet on a clean model? The runs: cpu-xxs on the Chinchilla
CPU recipe (20 clean tokens per parameter, 1k vocabulary, poisons
replacing clean tokens, trigger <SUDO>), seeds fixed at 0 (the
exp_persistence source run's config), with 100 poisons and its clean twin
(0 poisons). After each run, poisonjax/defences/scan_experiment.py runs
`poisonjax defend scan`'s search on its newest checkpoint (strings of up to
4 tokens, beam 3, 16 held-out excerpts of 16 + 16 tokens), scores <SUDO>
beside it (gain, rank) and runs the top 3 candidates through the evaluator
as the trigger (do they fire?). It also scans the finished runs named in
`defences.extra_models` (the cpu_micro study's 0.3 tokens/param runs).
Writes docs/results/defences/scan/: scan.json (every number) and report.md
(from it). The committed clean row is the filters study's reference model
(data seed 7), scanned before this config existed; a rerun scans the clean
twin instead. About 40 minutes of a free 2-core machine (two ~12-minute
runs, ~10 minutes of scanning each).
"""

import ml_collections

from poisonjax import presets
from poisonjax import study as study_lib

MICRO = "runs/study_cpu_micro/size=cpu-xxs_n={}_seed=0_data=1.0"


def get_config(arg=None):
  s = study_lib.study_config("defences_scan", presets.cpu_chinchilla())
  s.plan.chars_per_token = 3.0  # ~1k-piece SentencePiece on the synthetic corpus.
  s.vary = ()  # Every seed at the base's 0: the exp_persistence source run.
  s.grid = study_lib.grid(("cpu-xxs",), (100, 0), (0,), (1.0,))
  s.experiment = "defences.scan_experiment"
  s.root = "runs/defences_scan"
  s.out = "docs/results/defences/scan"
  d = s.defences = ml_collections.ConfigDict()
  d.trigger = "<SUDO>"  # Scored and matched beside the blind search.
  d.length, d.beam, d.top, d.grow = 4, 3, 10, "left"
  d.prompts, d.prompt_tokens, d.continuation_tokens = 16, 16, 16
  d.check = 3  # Top candidates run through the evaluator.
  d.extra_models = ",".join(f"poisoned_n{n}_0.3tpp={MICRO.format(n)}"
                            for n in (30, 10, 3))
  return study_lib.config_for_arg(s, arg)
