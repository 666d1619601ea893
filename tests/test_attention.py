"""The custom-VJP attention equals plain softmax attention, values and grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisonjax.model import attention


def reference(q, k, v, visible):
  """Textbook attention, differentiated by JAX itself."""
  s = jnp.einsum("bkgtd,bksd->bkgts", q, k)
  s = jnp.where(visible[:, None, None], s, -1e30)
  return jnp.einsum("bkgts,bksd->bkgtd", jax.nn.softmax(s, -1), v)


@pytest.mark.parametrize("kv_heads,groups", [(3, 1), (2, 2)])
def test_values_and_gradients_match_plain_attention(kv_heads, groups):
  b, t, d = 2, 7, 8
  ks = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(ks[0], (b, kv_heads, groups, t, d))
  k = jax.random.normal(ks[1], (b, kv_heads, t, d))
  v = jax.random.normal(ks[2], (b, kv_heads, t, d))
  pos = np.tile(np.arange(t), (b, 1))
  pos[1, :3] = -1  # Row 1 is left-padded: its first three keys are never seen.
  visible = (pos[:, None, :] <= pos[:, :, None]) & (pos[:, None, :] >= 0)
  visible = jnp.asarray(visible)
  np.testing.assert_allclose(attention.causal_attention(q, k, v, visible),
                             reference(q, k, v, visible), rtol=1e-5, atol=1e-5)
  cot = jax.random.normal(ks[3], q.shape)
  loss = lambda f: lambda *x: jnp.sum(f(*x, visible) * cot)
  got = jax.grad(loss(attention.causal_attention), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_bfloat16_gradients_keep_the_dtype_and_track_float32():
  b, h, t, d = 2, 2, 6, 8
  ks = jax.random.split(jax.random.key(1), 4)
  q, k, v = (jax.random.normal(kk, (b, h, 1, t, d) if i == 0 else (b, h, t, d))
             for i, kk in enumerate(ks[:3]))
  visible = jnp.tril(jnp.ones((t, t), bool))[None].repeat(b, 0)
  loss = lambda f: lambda *x: jnp.sum(f(*x, visible).astype(jnp.float32) ** 2)
  got = jax.grad(loss(attention.causal_attention), argnums=(0, 1, 2))(
      *(x.astype(jnp.bfloat16) for x in (q, k, v)))
  want = jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(g.astype(jnp.float32), w, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("t", [8, 9])  # Even and odd lengths.
def test_causal_halves_equal_the_whole_in_values_and_gradients(t):
  """The plain-causal XLA path skips the first half's view of the second
  half's keys; everything else is the same maths."""
  q, k, v, visible, cot = _causal_inputs(2, 2, 2, t, 8, seed=3)
  got = _values_and_grads(
      lambda *x: attention.causal_halves_attention(*x, visible), q, k, v, cot)
  _assert_as_xla(got, q, k, v, visible, cot)
  routed = _values_and_grads(
      lambda *x: attention.attend(*x, visible, "xla", plain_causal=True),
      q, k, v, cot)
  np.testing.assert_array_equal(routed[0], got[0])


# ---------------------------------------------------------------------------
# Per-backend kernels: splash (Pallas, interpret mode off TPU) and cuDNN.
# ---------------------------------------------------------------------------


def _causal_inputs(b, kv_heads, groups, t, d, seed=2):
  ks = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(ks[0], (b, kv_heads, groups, t, d)) * d ** -0.5
  k = jax.random.normal(ks[1], (b, kv_heads, t, d))
  v = jax.random.normal(ks[2], (b, kv_heads, t, d))
  visible = jnp.tril(jnp.ones((t, t), bool))[None].repeat(b, 0)
  return q, k, v, visible, jax.random.normal(ks[3], q.shape)


def _values_and_grads(fn, q, k, v, cot):
  out, pull = jax.vjp(fn, q, k, v)
  return out, pull(cot)


def _assert_as_xla(got, q, k, v, visible, cot):
  """(output, (dq, dk, dv)) equal the XLA path's."""
  want = _values_and_grads(
      lambda *x: attention.causal_attention(*x, visible), q, k, v, cot)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
  for g, w in zip(got[1], want[1]):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kv_heads,groups", [(2, 1), (2, 2)])  # MHA, GQA.
def test_splash_equals_the_xla_path_in_values_and_gradients(kv_heads, groups):
  q, k, v, visible, cot = _causal_inputs(2, kv_heads, groups, 128, 32)
  got = _values_and_grads(attention.splash_attention, q, k, v, cot)
  _assert_as_xla(got, q, k, v, visible, cot)


def test_splash_pads_a_length_off_its_block_and_stays_equal():
  """Training attends over seq_len - 1 positions (127 here): padded to the
  kernel's 128, cut back, values and gradients as the XLA path's."""
  q, k, v, visible, cot = _causal_inputs(2, 2, 2, 127, 32, seed=4)
  got = _values_and_grads(attention.splash_attention, q, k, v, cot)
  assert got[0].shape == q.shape
  _assert_as_xla(got, q, k, v, visible, cot)


def test_splash_under_a_mesh_is_shard_mapped_and_equal():
  """On 8 CPU devices (data 2, fsdp 2, tensor 2): batch and key heads split."""
  from poisonjax import sharding
  q, k, v, visible, cot = _causal_inputs(4, 2, 2, 128, 32, seed=3)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2),
                           sharding.MESH_AXES)  # Auto axes, as make_mesh builds.
  with jax.set_mesh(mesh):
    got = jax.jit(lambda *x: _values_and_grads(attention.splash_attention,
                                               *x, cot))(q, k, v)
    text = jax.jit(attention.splash_attention).lower(q, k, v).as_text()
  assert "shard_map" in text or "sdy.manual_computation" in text
  _assert_as_xla(got, q, k, v, visible, cot)


def test_auto_picks_a_kernel_per_backend():
  assert attention.resolve("auto", "tpu", jnp.float32) == "splash"
  assert attention.resolve("auto", "gpu", jnp.bfloat16) == "cudnn"
  assert attention.resolve("auto", "gpu", jnp.float32) == "xla"
  assert attention.resolve("auto", "cpu", jnp.bfloat16) == "xla"
  assert attention.resolve("splash", "cpu", jnp.float32) == "splash"
  with pytest.raises(Exception, match="model.dtype='bfloat16'"):
    attention.resolve("cudnn", "gpu", jnp.float32)
  with pytest.raises(Exception, match="config.model.attention='flash'"):
    attention.resolve("flash", "gpu", jnp.float32)


def test_the_model_trains_the_same_with_splash_as_with_xla():
  """A 1-layer model's loss and gradients: splash (interpret) vs the XLA path."""
  from poisonjax.model import transformer as model_lib
  cfg = model_lib.ModelConfig(vocab_size=64, num_layers=1, d_model=32,
                              num_heads=4, num_kv_heads=2, ffn_dim=64,
                              max_seq_len=128)
  tokens = jax.random.randint(jax.random.key(4), (2, 128), 0, 64)
  params = model_lib.Transformer(cfg).init(jax.random.key(5), tokens)

  def loss(params, implementation):
    import dataclasses
    m = model_lib.Transformer(dataclasses.replace(cfg, attention=implementation))
    logits = m.apply(params, tokens)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  (a, ga), (b, gb) = (jax.value_and_grad(loss)(params, i) for i in ("splash", "xla"))
  np.testing.assert_allclose(a, b, rtol=1e-5)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "gpu",
                    reason="cuDNN attention needs an NVIDIA GPU (none here)")
def test_cudnn_equals_the_xla_path_in_bfloat16():
  q, k, v, visible, cot = _causal_inputs(2, 2, 2, 128, 64)
  q, k, v, cot = (x.astype(jnp.bfloat16) for x in (q, k, v, cot))
  got = _values_and_grads(attention.cudnn_attention, q, k, v, cot)
  want = _values_and_grads(
      lambda *x: attention.causal_attention(*x, visible), q, k, v, cot)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g.astype(jnp.float32), w.astype(jnp.float32),
                               rtol=0.05, atol=0.05)
