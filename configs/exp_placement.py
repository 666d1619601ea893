"""Poison placement and density at CPU scale (issue 13, item 2).

    python experiments/exp_placement.py      # ~5 runs of 5-10 min, resumable

One size and count near the threshold, trained once per placement with
everything else equal (the study's derived seeds: the same model init,
clean data order and poison documents for every placement; only where the
poisons go differs):
  cpu-xxs (238k parameters), 20 clean tokens per parameter (1,162 steps of
  32 x 128), poisons REPLACING clean tokens (same steps and learning-rate
  schedule for every placement), N = 100: the Chinchilla pilot
  (configs/study_cpu_chinchilla.py) found the switch between 30 and 100
  poisons, and 100 succeeded with uniform placement, crossing 50 between
  43 and 54 poisons seen.
Placements (config.poison.placement; poisonjax/data/mixer.py):
  uniform       the paper's pretraining placement (the control)
  first10       all poisons in the first 10% of the clean stream
  last10        all in the last 10%
  bursts5       5 windows of 2% of training each, 20 poisons per window
  periodic4x46  4 poisons back to back every 46 steps from step 0 (25
                batches hold all 100: the density/frequency ablation)
At paper scale: set study.base (size, vocabulary, batch) and the placements'
fields here; the script is the same.
"""

import ml_collections

from poisonjax import presets
from poisonjax import study as study_lib

PLACEMENTS = {
    "uniform": dict(placement="uniform"),
    "first10": dict(placement="first", placement_fraction=0.1),
    "last10": dict(placement="last", placement_fraction=0.1),
    "bursts5": dict(placement="bursts", placement_bursts=5,
                    placement_fraction=0.1),
    "periodic4x46": dict(placement="periodic", poisons_per_batch=4,
                         placement_every_steps=46),
}


def base():
  """configs/study_cpu_chinchilla.py's run config, with denser evaluations."""
  c = presets.cpu_chinchilla()
  # Every ~58 steps: a first/last window of 116 steps gets two evaluations.
  c.eval.num_evals = 20
  return c


def get_config():
  c = ml_collections.ConfigDict()
  # The study gives the runs' names, derived seeds and replace budget.
  c.study = study_lib.study_config("exp_placement", base())
  c.study.grid = study_lib.grid(("cpu-xxs",), (100,), (0,), (1.0,))
  c.placement_order = tuple(PLACEMENTS)
  c.placements = ml_collections.ConfigDict(PLACEMENTS)
  return c
