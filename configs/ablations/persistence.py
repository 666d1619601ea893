"""Persistence of the backdoor under continued clean training (issue 13, item 1).

    poisonjax study reproduce --config=configs/ablations/persistence.py   # ~1 h on 2 busy CPU cores, resumable
    poisonjax study reproduce --config=configs/ablations/persistence.py --report_only   # from docs/results/persistence/

Does a backdoor planted in pretraining survive more clean training, and
how fast does it fade? Each source (variant `source`) is an ordinary
poisoned run at its grid point (size, poison count); each continued run
(variants `lr1`, `lr0p1`) starts from its grid point's source's last
checkpoint (continued.from_workdir = grids.variant_run("source"), resolved
to ROOT/<the source's run name>; the source trains first) and trains on
clean data only (poisonjax/training/continued.py) for `continued.budget_multiple`
x the source's clean budget (0.5 here), with a fresh optimizer whose peak
learning rate is the source's times LR_SCALES (1.0: re-warm to the
source's peak, as continued pretraining does; 0.1: the source's final
learning rate, a gentle continuation). Its run name keeps the source's
poison count; its own count is 0. Its clean documents come from data seed
1 (the sources use 0), so none is seen twice; the tokenizer (vocab.seed 0)
and the prompts (eval.heldout_seed 0) are the source's, so every
evaluation scores the same 64 prompts. study.vary is empty: every run
keeps the base's seeds (all 0; the continued runs' data seed is theirs).

The fine-tuning variant is the start of the same continued runs:
evaluations after k clean sequences for each k in EVAL_EXAMPLES (at batch
32: steps 1, 4, 16, 64, 256), on top of 10 spread over the run.

CPU scale: cpu-xxs at 20 clean tokens per parameter (1,162 steps of
32 x 128), poisons replacing clean tokens; counts 100 and 300 (the
Chinchilla pilot: final increase 621 and 867); and cpu-xs (0.42M
parameters, 2,043 steps) at 100 poisons, a second model size (the
Chinchilla study's cpu-xs N=100 run: final increase 852). 3 sources and
6 continued runs. poisonjax/ablations/persistence.py collects every
evaluation (results.csv, decay.csv) and writes the report. Paper scale: a
config like this one with the paper's sizes, vocabulary and budgets.
"""

from poisonjax import presets
from poisonjax import study as study_lib
from poisonjax.study import grids

LR_SCALES = (1.0, 0.1)  # x the source's peak learning rate.
# 0.5x: the shared 2-core machine trained ~2.7k tokens/s when this ran, so
# a cpu-xxs run took ~30 min; 1.0 doubles the continued runs' cost.
BUDGET_MULTIPLE = 0.5
EVAL_EXAMPLES = "32,128,512,2048,8192"


def base():
  """The sources' run config (the CPU Chinchilla study's regime)."""
  c = presets.cpu_chinchilla()
  c.vocab.seed = 0  # One tokenizer for sources and continued runs.
  c.eval.heldout_seed = 0  # One prompt set for every evaluation.
  c.seed = c.data.seed = c.poison.seed = 0
  return c


def continued(scale: float, peak_lr: float) -> dict:
  """A continued run's overrides: clean, new data seed, lr at scale x peak."""
  return {"poison": {"count": 0},
          "data": {"seed": 1},
          "train": {"learning_rate": peak_lr * scale},
          "eval": {"num_evals": 10},
          "continued": {"from_workdir": grids.variant_run("source"),
                        "budget_multiple": BUDGET_MULTIPLE,
                        "eval_examples": EVAL_EXAMPLES}}


def variant_name(scale: float) -> str:
  """'lr1', 'lr0p1': a name without dots (ConfigDict keys have none)."""
  return f"lr{scale:g}".replace(".", "p")


def get_config(arg=None):
  s = study_lib.study_config("persistence", base())
  s.experiment = "ablations.persistence"
  s.vary = ()  # The base's seeds for every run (one seed per source).
  s.plan.chars_per_token = 3.0  # ~1k-piece SentencePiece on the synthetic corpus.
  s.grid = study_lib.grid(("cpu-xxs",), (100, 300), (0,), (1.0,))
  s.extra.second_size = study_lib.grid(("cpu-xs",), (100,), (0,), (1.0,))
  peak = float(s.base.train.learning_rate)
  study_lib.set_variants(s, {"source": {}, **{
      variant_name(scale): continued(scale, peak) for scale in LR_SCALES}})
  return study_lib.config_for_arg(s, arg)
