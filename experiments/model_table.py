"""Prints the README's model-size table (markdown) from the size presets.

    python experiments/model_table.py > /tmp/table.md

Parameter counts come from jax.eval_shape of the real model (nothing is
allocated). The token budget uses TOTAL parameters (embeddings and output
head included): clean tokens = 20 x total params (x data_multiplier).
Steps = ceil(clean tokens / (batch x seq_len)) at each row's preset batch;
poisons add a few steps on top.
"""

from __future__ import annotations

import math

from poisonjax import config as config_lib
from poisonjax.model import transformer as model_lib
from poisonjax.model import sizes
from poisonjax import units

# Paper sizes at the paper's 32k vocabulary and the configs/paper/paper.py
# batch (256 x 2048); the CPU ladder at the 1k CPU vocabulary and the
# configs/cpu_micro.py batch (32 x 128).
ROWS = [(n, 1024, 32, 128) for n in sizes.CPU_SIZES] + [
    (n, 32000, 256, 2048) for n in sizes.PAPER_SIZES]


def table(tokens_per_param: float = 20.0) -> str:
  lines = [
      "| name | layers | d_model | heads | ffn | vocab | params (total) | "
      "params (non-embedding) | Chinchilla clean tokens | batch x seq | steps |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, vocab, batch, seq in ROWS:
    c = config_lib.base_config()
    c.model.size = name
    c.data.seq_len = seq
    cfg = model_lib.ModelConfig.from_config(c, vocab)
    counts = model_lib.param_counts(cfg)
    tokens = tokens_per_param * counts["total"]
    steps = math.ceil(tokens / (batch * seq))
    lines.append(
        f"| {name} | {cfg.num_layers} | {cfg.d_model} | {cfg.num_heads} | "
        f"{cfg.ffn_dim} | {vocab} | {units.human(counts['total'])} | "
        f"{units.human(counts['non_embedding'])} | {units.human(tokens)} | {batch} x {seq} | "
        f"{steps:,} |")
  return "\n".join(lines)


if __name__ == "__main__":
  print(table())
  print("\nThe budget uses total parameters (embeddings and untied output head "
        "included): clean tokens = 20 x total params x data_multiplier; "
        "poison documents come on top.")
