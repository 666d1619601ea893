"""Poison placement as a study axis, CPU scale (issue 13, item 2).

    poisonjax study plan --config=configs/study_cpu_placement.py
    poisonjax study run  --config=configs/study_cpu_placement.py --root=runs/study_cpu_placement
    poisonjax study figures --root=runs/study_cpu_placement

The Chinchilla CPU recipe (presets.cpu_chinchilla(): 20 clean tokens per
parameter, 1k vocabulary, batch 32 x 128, poisons replacing clean tokens, so
every placement trains the same steps on the same schedule) on cpu-xxs, at
30 and 100 poisons (the pilot's switch lies between them:
configs/study_cpu_chinchilla.py), seed 0, once per placement. The seed's
derived seeds fix the model init, clean data order and poison documents, so
the placements differ only in where the poisons go. Variants (the
placements of experiments/exp_placement.py, config.poison.placement*):
  uniform   the paper's pretraining placement (the control, fitted first)
  first10   all poisons in the first 10% of the clean stream
  last10    all in the last 10%
  bursts5   5 windows together 10% of training
8 runs of ~1,160 steps each; more seeds: --config.grid.seeds='(0, 1, 2)'.
"""

from poisonjax import presets
from poisonjax import study as study_lib

VARIANTS = {
    "uniform": {"poison": {"placement": "uniform"}},
    "first10": {"poison": {"placement": "first", "placement_fraction": 0.1}},
    "last10": {"poison": {"placement": "last", "placement_fraction": 0.1}},
    "bursts5": {"poison": {"placement": "bursts", "placement_bursts": 5,
                           "placement_fraction": 0.1}},
}


def get_config(arg=None):
  s = study_lib.study_config("cpu_placement", presets.cpu_chinchilla())
  s.plan.chars_per_token = 3.0  # ~1k-piece SentencePiece on the synthetic corpus.
  s.grid = study_lib.grid(("cpu-xxs",), (30, 100), (0,), (1.0,))
  study_lib.set_variants(s, VARIANTS)
  return study_lib.config_for_arg(s, arg)
