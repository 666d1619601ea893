"""The custom-VJP attention equals plain softmax attention, values and grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisonjax import attention


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
