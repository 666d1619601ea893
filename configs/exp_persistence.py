"""Persistence of the backdoor under continued clean training (issue 13, item 1).

    python experiments/exp_persistence.py          # train, collect, report (resumable)

Each source is an ordinary poisoned run (`run` below, at `size` and poison
count); each continued run starts from the source's last checkpoint and
trains on clean data only (poisonjax/continued.py) for
`continued.budget_multiple` x the source's clean budget (0.5 here), with a fresh
optimizer whose peak learning rate is the source's times each of
`continued.lr_scales` (1.0: re-warm to the source's peak, as continued
pretraining does; 0.1: the source's final learning rate, a gentle
continuation). Its clean documents come from data seed
`continued.data_seed` (the sources use 0), so none is seen twice; the
tokenizer (vocab.seed 0) and the prompts (eval.heldout_seed 0) are the
source's, so every evaluation scores the same 64 prompts.

The fine-tuning variant is the start of the same continued runs:
evaluations after k clean sequences for each k in
`continued.eval_examples` (at batch 32: steps 1, 4, 16, 64, 256), on top
of `continued.num_evals` spread over the run.

CPU scale: cpu-xxs at 20 clean tokens per parameter (1,162 steps of
32 x 128), poisons replacing clean tokens; counts 100 and 300 (the
Chinchilla pilot: final increase 621 and 867); and cpu-xs (0.42M
parameters, 2,043 steps) at 100 poisons, a second model size (the
Chinchilla study's cpu-xs N=100 run: final increase 852). Paper scale: a config like
this one with the paper's sizes, vocabulary and budgets.
"""

import ml_collections

from poisonjax import presets


def base():
  """The sources' run config (the CPU Chinchilla study's regime)."""
  c = presets.cpu_chinchilla()
  c.vocab.seed = 0  # One tokenizer for sources and continued runs.
  c.eval.heldout_seed = 0  # One prompt set for every evaluation.
  c.data.seed = 0
  c.poison.budget_mode = "replace"
  return c


def get_config():
  e = ml_collections.ConfigDict()
  e.run = base()
  # size:poison count, in run order; cpu-xs:100 gives a second model size.
  e.sources = "cpu-xxs:100,cpu-xxs:300,cpu-xs:100"
  e.continued = ml_collections.ConfigDict()
  # 0.5x: the shared 2-core machine trained ~2.7k tokens/s this session, so
  # a cpu-xxs run took ~30 min; 1.0 doubles the continued runs' cost.
  e.continued.budget_multiple = 0.5
  e.continued.data_seed = 1
  e.continued.lr_scales = "1.0,0.1"  # x the source's peak learning rate.
  e.continued.num_evals = 10
  e.continued.eval_examples = "32,128,512,2048,8192"
  e.threshold = 50.0  # Increase counted as a success above this.
  return e
