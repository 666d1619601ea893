"""Model: shapes, causality, decode == full forward, preset parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisonjax import config as config_lib
from poisonjax.model import transformer as model_lib
from poisonjax.model import sizes
from poisonjax.errors import UserError


def tiny_cfg(**kw):
  c = config_lib.base_config()
  c.model.d_model, c.model.num_heads, c.model.num_layers, c.model.ffn_dim = 32, 4, 2, 64
  c.data.seq_len = 16
  for k, v in kw.items():
    c.model[k] = v
  return model_lib.ModelConfig.from_config(c, 50)


@pytest.fixture(scope="module")
def tiny():
  cfg = tiny_cfg()
  model = model_lib.Transformer(cfg)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 50)
  params = jax.jit(model.init)(jax.random.key(0), tokens)["params"]
  return cfg, model, params, tokens


def test_shapes_and_dtype(tiny):
  cfg, model, params, tokens = tiny
  logits = model.apply({"params": params}, tokens)
  assert logits.shape == (2, 16, cfg.vocab_size)
  assert logits.dtype == jnp.float32
  assert model_lib.count_params(params) == model_lib.param_counts(cfg)["total"]


def test_unrolled_scan_is_the_same_model(tiny):
  """scan_unroll changes the loop, not the parameters or the function."""
  cfg, model, params, tokens = tiny
  loss = lambda m: lambda p: jnp.mean(m.apply({"params": p}, tokens) ** 2)
  unrolled = model_lib.Transformer(tiny_cfg(scan_unroll=2))
  assert model_lib.scan_unroll(unrolled.cfg) == 2
  assert model_lib.scan_unroll(cfg) == cfg.num_layers  # Auto on CPU: all.
  assert model_lib.scan_unroll(tiny_cfg(scan_unroll=1)) == 1
  want, got = (jax.value_and_grad(loss(m))(params) for m in (
      model_lib.Transformer(tiny_cfg(scan_unroll=1)), unrolled))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-7)


def test_negative_scan_unroll_is_one_clear_error():
  with pytest.raises(UserError, match="config.model.scan_unroll=-1"):
    tiny_cfg(scan_unroll=-1)


def test_causal(tiny):
  _, model, params, tokens = tiny
  apply = jax.jit(lambda t: model.apply({"params": params}, t))
  base = apply(tokens)
  t = 7
  changed = tokens.at[:, t + 1].set((tokens[:, t + 1] + 1) % 50)
  out = apply(changed)
  np.testing.assert_array_equal(np.asarray(out[:, :t + 1]), np.asarray(base[:, :t + 1]))
  assert not np.allclose(out[:, t + 1], base[:, t + 1])


def test_decode_matches_full_forward():
  """Token-by-token decoding with the KV cache (grouped-query attention)
  equals the full forward."""
  cfg = tiny_cfg(num_kv_heads=2)
  model = model_lib.Transformer(cfg)
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 50)
  params = jax.jit(model.init)(jax.random.key(0), tokens)["params"]
  full = jax.jit(model.apply)({"params": params}, tokens)
  cache = jax.jit(lambda t: model.init(jax.random.key(0), t, decode=True))(
      jnp.zeros((2, 16), jnp.int32))["cache"]

  @jax.jit
  def decode(cache, tok, pos):
    logits, mut = model.apply({"params": params, "cache": cache}, tok,
                              positions=pos, decode=True, mutable=["cache"])
    return logits, mut["cache"]

  outs = []
  for t in range(16):
    logits, cache = decode(cache, tokens[:, t:t + 1], jnp.full((2, 1), t))
    outs.append(logits)
  np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=1e-4, rtol=1e-4)


def _counts(name, vocab):
  c = config_lib.base_config()
  c.model.size = name
  return model_lib.param_counts(model_lib.ModelConfig.from_config(c, vocab))


@pytest.mark.parametrize("name", sizes.PAPER_SIZES)
def test_paper_sizes_match_their_names(name):
  target = {"600m": 600e6, "2b": 2e9, "7b": 7e9, "13b": 13e9}[name]
  total = _counts(name, 32000)["total"]  # eval_shape: nothing is allocated.
  assert abs(total / target - 1) <= 0.03, (name, total)


def test_cpu_ladder_spans_16x():
  totals = [_counts(n, 1024)["total"] for n in sizes.CPU_SIZES]
  assert totals == sorted(totals)
  assert totals[-1] / totals[0] >= 16, totals


def test_heads_must_divide_d_model():
  c = config_lib.base_config()
  c.model.d_model, c.model.num_heads = 30, 4
  with pytest.raises(UserError, match="config.model.num_heads"):
    model_lib.ModelConfig.from_config(c, 50)


def test_from_config_does_not_write_the_config():
  """Sizes resolve on a copy: the run config (and its config.json) stays as
  given, locked or not, and a second call sees the same input."""
  c = config_lib.base_config()
  c.model.size = "cpu-s"
  before = c.to_json_best_effort()
  c.lock()
  cfg = model_lib.ModelConfig.from_config(c, 300)
  assert c.to_json_best_effort() == before
  assert c.model.num_layers == 0 and c.model.vocab_size == 0
  size = sizes.get_size("cpu-s")
  assert (cfg.num_layers, cfg.d_model, cfg.vocab_size) == (size.num_layers, size.d_model, 300)
  # The next call resolves again from the unchanged input (no stale fields).
  assert model_lib.ModelConfig.from_config(c, 500).vocab_size == 500
