"""Poison placement and density at CPU scale (issue 13, item 2).

    poisonjax study reproduce --config=configs/ablations/placement.py   # 10 runs of ~6-10 min, resumable
    poisonjax study reproduce --config=configs/ablations/placement.py --report_only
    poisonjax study reproduce --config=configs/ablations/placement.py \\
      --out=docs/results/cpu_placement --report_only

Does it matter WHERE in pretraining a fixed number of poisons lie, and how
densely (many in one batch, or spread out)? One size and two counts around
the switch, trained once per placement with everything else equal (the
study's derived seeds: the same model init, clean data order and poison
documents for every placement; only where the poisons go differs):
  cpu-xxs (238k parameters), 20 clean tokens per parameter (1,162 steps of
  32 x 128; presets.cpu_chinchilla()), poisons REPLACING clean tokens (the
  same steps and learning-rate schedule for every placement), N = 30 and
  100: the Chinchilla pilot (configs/paper/cpu_chinchilla.py) found the
  switch between 30 and 100 poisons, and 100 succeeded with uniform
  placement. 20 evaluations per run, so a first/last window of 116 steps
  gets two.
Variants (config.poison.placement*; poisonjax/data/mixer.py):
  uniform       the paper's pretraining placement (the control)
  first10       all poisons in the first 10% of the clean stream
  last10        all in the last 10%
  bursts5       5 windows of 2% of training each
  periodic4x46  4 poisons back to back every 46 steps from step 0 (100
                poisons in 25 batches: the density ablation)
The report (poisonjax/ablations/placement.py): the standard study report
with its 'By variant' section (N50 and the final increase per placement),
then per run where its poisons lie (read from its manifest), its peak
increase and where it first crossed the threshold, and each placement
against uniform at an equal number of poisoned steps (placement.png).

Results. docs/results/placement/: the five placements at 100 poisons
(the runs of the former experiments/exp_placement.py, 20 evaluations
each). docs/results/cpu_placement/: the first four at 30 and 100 poisons
(the former configs/study_cpu_placement.py, 8 runs at the preset's 6
evaluations; standard report only). More seeds:
--config.grid.seeds='(0, 1, 2)'. At paper scale: another base and the
same variants.
"""

from poisonjax import presets
from poisonjax import study as study_lib

VARIANTS = {
    "uniform": {"poison": {"placement": "uniform"}},
    "first10": {"poison": {"placement": "first", "placement_fraction": 0.1}},
    "last10": {"poison": {"placement": "last", "placement_fraction": 0.1}},
    "bursts5": {"poison": {"placement": "bursts", "placement_bursts": 5,
                           "placement_fraction": 0.1}},
    "periodic4x46": {"poison": {"placement": "periodic", "poisons_per_batch": 4,
                                "placement_every_steps": 46}},
}


def get_config(arg=None):
  s = study_lib.study_config("placement", presets.cpu_chinchilla())
  s.experiment = "ablations.placement"
  s.plan.chars_per_token = 3.0  # ~1k-piece SentencePiece on the synthetic corpus.
  s.base.eval.num_evals = 20  # Every ~58 steps.
  s.grid = study_lib.grid(("cpu-xxs",), (30, 100), (0,), (1.0,))
  study_lib.set_variants(s, VARIANTS)
  return study_lib.config_for_arg(s, arg)
