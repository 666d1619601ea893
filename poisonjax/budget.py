"""Token budgets: the clean budget T, and where the poison tokens P go.

The clean budget uses TOTAL parameters (embeddings and output head
included), the Chinchilla convention: T = tokens_per_param x params x
data_multiplier.

The poisons' P tokens (config.poison.budget_mode), the one place that says
why:
  on_top   the run trains on T clean tokens plus P poison tokens (the
           paper's description). More poisons mean more optimizer steps,
           and since the learning-rate schedule spans all of them
           (optim.lr_schedule(num_steps)), a longer schedule too. At the
           paper's shares (~1e-6 of the tokens) that is nothing; at the CPU
           studies' 1-70% it trains runs with different counts differently
           and confounds count with schedule.
  replace  the run trains on T tokens in all: the clean stream is cut at
           C = T - P and the poisons are laid into it as usual (at clean
           offsets ceil(u_j * C), mixer.py). Every count of one size and
           data amount then has the clean run's number of steps and its
           learning-rate schedule, step for step; what gives way is the
           clean stream's last P tokens. A study's default (study/grids.py).
Why the tail and not the clean documents where each poison lands: cutting
the tail keeps every run's clean tokens a prefix of the one shared clean
order, which the per-run cache and the shared token store (data/store.py,
data/overlay.py) both rely on, and keeps the total exactly T (documents
removed in place could not match the poisons' lengths token for token).
Both modes keep the exact poison count. Rate mode supports on_top only.
"""

from __future__ import annotations

from poisonjax import finetune

BUDGET_MODES = ("on_top", "replace")


def poisons_replace_clean(config) -> bool:
  """True if the poisons take the place of clean tokens (budget_mode=replace).

  A run config written before budget_mode existed (config.json of an old
  run) said the same with the boolean poison.inside_budget.
  """
  p = config.poison
  mode = p.get("budget_mode", None)
  if mode is None:
    return bool(p.get("inside_budget", False))
  return mode == "replace"


def clean_tokens_in_stream(config, clean_tokens: int, poison_tokens: int) -> int:
  """C: the clean tokens the stream holds for budget T and P poison tokens."""
  if poisons_replace_clean(config):
    return int(clean_tokens) - int(poison_tokens)
  return int(clean_tokens)


def clean_token_budget(config, vocab_size: int) -> int:
  """Clean training tokens T for this config at this vocabulary size.

  A fine-tune's (poisonjax/finetune/): its clean samples' rows of seq_len.
  """
  if finetune.is_finetune(config):
    return finetune.clean_rows(config) * int(config.data.seq_len)
  from poisonjax.model import transformer as model_lib  # Heavy (jax); data code needs none.

  mcfg = model_lib.ModelConfig.from_config(config, vocab_size)
  params = model_lib.param_counts(mcfg)["total"]
  return int(round(config.train.tokens_per_param * params
                   * config.train.data_multiplier))
