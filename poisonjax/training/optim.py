"""The optimizer: AdamW with warmup + cosine decay and a global-norm clip.

All hyper-parameters come from `config.train`; the schedule's length is the
run's full budget in steps (not `max_steps`), so stopping early never changes
the learning rate a given step sees.
"""

from __future__ import annotations

import optax


def lr_schedule(config, num_steps: int) -> optax.Schedule:
  """Linear warmup to the peak, then cosine down to min_lr_ratio x peak."""
  t = config.train
  warmup = int(round(t.warmup_fraction * num_steps))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate,
      warmup_steps=warmup, decay_steps=max(num_steps, warmup + 1),
      end_value=t.learning_rate * t.min_lr_ratio)


def make_optimizer(config, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  t = config.train
  schedule = lr_schedule(config, num_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(t.grad_clip),
      optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay))
  return tx, schedule
