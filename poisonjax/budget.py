"""Token budgets: Chinchilla clean tokens from the model's parameter count.

The budget uses TOTAL parameters (embeddings and output head included), the
Chinchilla convention: clean tokens = tokens_per_param x params x
data_multiplier. Poison tokens come on top (see poisonjax.data.stream).
"""

from __future__ import annotations

from poisonjax import model as model_lib


def clean_token_budget(config, vocab_size: int) -> int:
  """Clean training tokens T for this config at this vocabulary size."""
  mcfg = model_lib.ModelConfig.from_config(config, vocab_size)
  params = model_lib.param_counts(mcfg)["total"]
  return int(round(config.train.tokens_per_param * params
                   * config.train.data_multiplier))
