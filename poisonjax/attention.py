"""Causal attention with a memory-lean backward pass (flash-style, unblocked).

XLA's automatic gradient of softmax attention keeps every layer's [B, H, T, S]
probabilities (and the mask) alive for the backward pass; on CPU, and at
small widths anywhere, the time goes into writing and re-reading those
tensors rather than into the matmuls. Here the forward pass saves only q, k,
v, the output and each row's max and sum, and the backward pass recomputes
the probabilities from them (FlashAttention's algorithm without its
blocking: each pass still forms the whole [T, S] scores, which at this
codebase's sequence lengths is cheaper than keeping them).

Layout: q [B, K, G, T, D] (K key/value heads, G query heads per key head),
k and v [B, K, S, D], `visible` [B, T, S] boolean (query t may attend to key
s). q must already carry the 1/sqrt(D) scale. The result is [B, K, G, T, D].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_MASKED = -1e30  # Finite: a fully masked row gives uniform weights, not NaN.


def _scores(q, k, visible):
  """Scaled scores in float32 with masked keys at _MASKED: [B, K, G, T, S]."""
  s = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
  return jnp.where(visible[:, None, None], s, _MASKED)


def _forward(q, k, v, visible):
  s = _scores(q, k, visible)
  m = jnp.max(s, axis=-1, keepdims=True)
  p = jnp.exp(s - m)
  l = jnp.sum(p, axis=-1, keepdims=True)
  o = jnp.einsum("bkgts,bksd->bkgtd", (p / l).astype(v.dtype), v)
  # m and l, not m + log(l): next to _MASKED, log(l) would round away.
  return o, (m, l)


@jax.custom_vjp
def causal_attention(q, k, v, visible):
  """softmax(q k^T masked) v; see the module docstring for shapes."""
  return _forward(q, k, v, visible)[0]


def _fwd(q, k, v, visible):
  o, (m, l) = _forward(q, k, v, visible)
  return o, (q, k, v, visible, o, m, l)


def _bwd(res, do):
  q, k, v, visible, o, m, l = res
  p = jnp.exp(_scores(q, k, visible) - m) / l  # The forward's probabilities.
  f32 = jnp.float32
  # Matmuls take the activations' dtype (bf16 on accelerators) and
  # accumulate in float32; the softmax algebra stays in float32.
  dv = jnp.einsum("bkgts,bkgtd->bksd", p.astype(v.dtype), do,
                  preferred_element_type=f32)
  dp = jnp.einsum("bkgtd,bksd->bkgts", do, v, preferred_element_type=f32)
  delta = jnp.sum(do.astype(f32) * o.astype(f32), axis=-1, keepdims=True)
  # Masked scores are constants (the where): no gradient flows into them.
  ds = jnp.where(visible[:, None, None], p * (dp - delta), 0.0).astype(q.dtype)
  dq = jnp.einsum("bkgts,bksd->bkgtd", ds, k, preferred_element_type=f32)
  dk = jnp.einsum("bkgts,bkgtd->bksd", ds, q, preferred_element_type=f32)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


causal_attention.defvjp(_fwd, _bwd)
