"""Gradient accumulation: k microbatches give the full batch's update.

The jitted step is called directly (no data pipeline, no run) on a tiny
model over a (data 2, fsdp 2, tensor 2) mesh of the 8 fake CPU devices,
with rows of uneven padding so the token weighting of microbatches matters.
Each step program is compiled with XLA's backend optimizations off (half
the compile time on CPU; the same HLO, the same math).
"""

import jax
import numpy as np
import pytest

from poisonjax import config_checks
from poisonjax.model import transformer as model_lib
from poisonjax.training import optim
from poisonjax import sharding
from poisonjax.training import train_step
from poisonjax.data.vocabulary import PAD_ID
from poisonjax.errors import UserError
from train_common import tiny_config

VOCAB = 512
BATCH = 16  # 4 batch shards x up to 4 microbatches.
STEPS = 3
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def config_for(k: int, batch: int = BATCH):
  return config_checks.validate(tiny_config(
      "/nonexistent", **{"train.batch_size": batch, "train.microbatches": k,
                         "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}))


def batches(config):
  """STEPS batches of random ids; row r keeps its first S - 3r tokens."""
  rng = np.random.default_rng(0)
  s, b = config.data.seq_len, config.train.batch_size
  out = []
  for _ in range(STEPS):
    tokens = rng.integers(PAD_ID + 1, VOCAB, size=(b, s), dtype=np.int32)
    for row in range(b):
      tokens[row, max(s - 3 * row, 2):] = PAD_ID
    out.append(tokens)
  return out


def max_abs_diff(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(x - y))), a, b)))


class Trainer:
  """One mesh, model and initial state; the jitted step for any k."""

  def __init__(self):
    config = config_for(1)
    self.mesh = sharding.make_mesh(config.mesh)
    self.model_cfg = model_lib.ModelConfig.from_config(config, VOCAB)
    self.batch_sh = sharding.batch_sharding(self.mesh)
    _, init, _, self.state_sh, _, _ = self.parts(config)
    with sharding.mesh_context(self.mesh):
      self.start = jax.tree.map(np.asarray, init.lower(
          jax.random.key(0)).compile(FAST_COMPILE)(jax.random.key(0)))

  def parts(self, config):
    tx, schedule = optim.make_optimizer(config, num_steps=10)
    return train_step.build_state_fns(config, self.model_cfg, self.mesh,
                                      tx) + (tx, schedule)

  def run(self, k: int):
    """(per-step loss and grad_norm, final params as numpy) with k."""
    config = config_for(k)
    model, _, _, state_sh, tx, schedule = self.parts(config)
    step = train_step.jit_train_step(config, model, tx, schedule, state_sh,
                                     self.batch_sh)
    state = jax.device_put(self.start, self.state_sh)
    metrics = []
    with sharding.mesh_context(self.mesh):
      for i, tokens in enumerate(batches(config)):
        batch = {"tokens": jax.device_put(tokens, self.batch_sh)}
        if not i:
          step = step.lower(state, batch).compile(FAST_COMPILE)
        state, m = step(state, batch)
        metrics.append({n: float(m[n]) for n in ("loss", "grad_norm")})
    return metrics, jax.tree.map(np.asarray, state["params"])


def test_microbatches_give_the_full_batch_update():
  trainer = Trainer()
  full_metrics, full_params = trainer.run(1)
  assert max_abs_diff(full_params, trainer.start["params"]) > 1e-3  # Moved.
  for k in (2, 4):
    metrics, params = trainer.run(k)
    for m, f in zip(metrics, full_metrics):
      for name in ("loss", "grad_norm"):
        assert abs(m[name] - f[name]) <= 1e-5 * max(1.0, abs(f[name])), (
            k, name, m[name], f[name])
    assert max_abs_diff(params, full_params) <= 1e-5, k


@pytest.mark.parametrize("k", [2, 4])
def test_microbatch_split_keeps_each_devices_rows(k):
  """Every device's microbatch rows are rows it already held (no moves)."""
  config = config_for(k)
  batch_sh = sharding.batch_sharding(sharding.make_mesh(config.mesh))
  rows = np.repeat(np.arange(BATCH, dtype=np.int32)[:, None], 4, axis=1)
  split = jax.jit(lambda x: train_step.split_microbatches(x, k, batch_sh))(
      jax.device_put(rows, batch_sh))
  assert sorted(np.asarray(split)[:, :, 0].ravel()) == list(range(BATCH))
  held = {s.device: set(np.asarray(s.data)[:, 0])
          for s in jax.device_put(rows, batch_sh).addressable_shards}
  for shard in split.addressable_shards:
    data = np.asarray(shard.data)  # [k, rows per device, S]
    assert data.shape[:2] == (k, BATCH // k // 4)
    assert set(data[:, :, 0].ravel()) <= held[shard.device], shard.device


@pytest.mark.parametrize("k,batch", [(0, BATCH), (3, BATCH), (8, BATCH)])
def test_bad_microbatches_is_a_one_line_error(k, batch):
  """0 and 3 fail config validation; 8 divides 16 but not 8 x 4 shards."""
  with pytest.raises(UserError) as e:
    config = config_for(k, batch)
    mesh = sharding.make_mesh(config.mesh)
    train_step.check_microbatches(config, sharding.batch_sharding(mesh))
  message = str(e.value)
  assert message.startswith(f"config.train.microbatches={k}"), message
  assert "\n" not in message
