"""Run configs shared by several studies and experiments.

`cpu_chinchilla()` is the regime of configs/study_cpu_chinchilla.py: 20
clean tokens per parameter, the 1k vocabulary, sequences of 128, batch 32,
6 evaluations of 64 prompts. The issue-13/14 experiments start from it, so
their runs are comparable with the study's (and, where the config is the
same, one run serves both).
"""

from __future__ import annotations

import ml_collections

from poisonjax import config as config_lib


def cpu_chinchilla() -> ml_collections.ConfigDict:
  """The CPU Chinchilla regime's run config (size and poisons left to set)."""
  c = config_lib.base_config()
  c.vocab.size = 1024
  c.data.seq_len = 128
  c.train.batch_size = 32
  c.train.tokens_per_param = 20.0
  c.train.log_every = 100
  c.train.ckpt_every = 500
  c.eval.num_excerpts = 64
  c.eval.prompt_tokens = 32
  c.eval.gen_tokens = 32
  c.eval.num_evals = 6
  c.eval.bootstrap_samples = 200
  return c
