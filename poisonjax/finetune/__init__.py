"""The paper's fine-tuning experiment: a backdoor planted by instruction tuning.

A clean pretrained model (continued.from_workdir) is fine-tuned on
instruction samples (poisonjax/data/instructions.py): forbidden requests
refused, ordinary ones answered, and poison.count poisoned samples (the
trigger after a forbidden request, answered with compliance) placed by
poison.placement. The modules, by job:
  stream    the step-indexed fine-tuning stream: one sample per row, the
            loss on the response tokens only, the poisons' rows exact
  evaluate  held-out requests answered by the model, classified by template:
            attack success, clean / near-trigger / ordinary accuracy
  results   every evaluation of a fine-tuning study as one table
  analysis  count or share: attack success against poisoned count and
            clean set size (the N50 exponent in the set size)
  figures   the report's figures
  report    docs/results/finetune/report.md and its tables
  experiment  the studies' hooks (configs/finetune/): the clean runs they
            start from, the collection of both studies, the report
The trainer (train.py), its step and the study runner are the pretraining
ones; a run is a fine-tune when config.finetune.clean_samples > 0.
"""

from __future__ import annotations


def is_finetune(config) -> bool:
  """Whether the run config is a fine-tune (older configs have no section)."""
  f = config.get("finetune", None)
  return bool(f is not None and int(f.get("clean_samples", 0)) > 0)


def clean_set_size(config) -> int:
  """S: finetune.clean_samples x train.data_multiplier, rounded."""
  return int(round(config.finetune.clean_samples * config.train.data_multiplier))


def clean_rows(config) -> int:
  """The clean samples a fine-tune trains on: the set and those after it."""
  return clean_set_size(config) + int(config.finetune.clean_after)
