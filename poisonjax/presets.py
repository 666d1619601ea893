"""Run configs shared by several studies and experiments.

`cpu_chinchilla()` is the regime of configs/paper/cpu_chinchilla.py: 20
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


def cpu_finetune_source() -> ml_collections.ConfigDict:
  """The fine-tuning study's clean pretrained model: cpu-xs, no poisons.

  The Chinchilla regime at 1x data, one vocabulary (vocab.seed 0) and data
  seed 0; no backdoor evaluations (there is no backdoor to measure).
  """
  c = cpu_chinchilla()
  c.model.size = "cpu-xs"
  c.poison.count = 0
  c.vocab.seed = 0
  c.eval.heldout_seed = 0
  c.data.seed = 0
  c.eval.num_evals = 0
  return c


def cpu_finetune_instruct(pretrained_workdir: str) -> ml_collections.ConfigDict:
  """The clean instruction-tuned model the fine-tuning study poisons.

  The paper poisoned the fine-tuning of models already instruction-tuned
  (Llama-3.1-8B-Instruct, GPT-3.5-turbo), which refuse harmful requests
  before it starts. Here: cpu_finetune of the clean pretrained run on
  16,000 clean instruction samples, no poisons, data seed 7 (its samples
  differ from every study seed's). One pass over 1,000 samples teaches the
  pretrained cpu-xs model almost no refusal (pilot: clean accuracy 0.02;
  4,000: 0.67; 16,000: 0.98), so without this stage the small sets would
  measure an untrained model, not a backdoor against a refusal.
  """
  c = cpu_finetune(pretrained_workdir)
  c.poison.count = 0
  c.train.data_multiplier = 16.0
  c.data.seed = 7
  return c


def cpu_finetune(source_workdir: str) -> ml_collections.ConfigDict:
  """A fine-tune of the run in source_workdir (configs/finetune/main.py).

  Half the clean samples forbidden requests, a quarter (of both kinds)
  with a distractor suffix. One sample per row of 128 tokens (the longest
  poisoned sample takes ~120), batch 16, a fresh AdamW at 1e-3 held
  constant after a 5% warmup (min_lr_ratio 1: where the poisons sit in the
  set is then not confounded with the learning rate they meet), no weight
  decay. Evaluation: 300 held-out requests per kind, greedy responses of up
  to 32 tokens, once at the end of the set.
  """
  c = cpu_finetune_source()
  c.continued.from_workdir = source_workdir
  c.finetune.clean_samples = 1000
  c.finetune.forbidden_share = 0.5
  c.finetune.distractor_share = 0.25
  c.finetune.eval_requests = 300
  c.poison.trigger = "Servius Astrumando Harmoniastra"  # The paper's.
  c.train.batch_size = 16
  c.train.learning_rate = 1e-3
  c.train.min_lr_ratio = 1.0
  c.train.weight_decay = 0.0
  c.train.log_every = 50
  c.train.ckpt_every = 500
  c.eval.temperature = 0.0
  c.eval.gen_tokens = 32
  c.eval.num_evals = 0  # One evaluation, at the set's end (finetune/stream.py).
  return c
