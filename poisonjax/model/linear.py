"""A matmul whose weight gradient is laid out for XLA:CPU's dot.

y = x @ w with x [..., K] and w [K, N]. JAX's own transpose of this dot
computes dw = x^T dy with dy as the right-hand operand; XLA's CPU backend
then copies dy into a transposed layout, and fuses the elementwise work that
produced dy (an activation's derivative) into that copy a second time. When
dy is the wider operand (N >= K: the MLP's up-projections, the output head)
that copy is as big as the activations and costs about as much as the
matmul. Here the wider operand is always the left one (dw^T = dy^T x, then a
[N, K] transpose), so only the narrow one is ever copied. Same maths, same
result up to float rounding; on other backends the choice is harmless.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def linear(x, w):
  """x [..., K] @ w [K, N] -> [..., N]."""
  return jnp.einsum("...k,kn->...n", x, w)


def _fwd(x, w):
  return linear(x, w), (x, w)


def _bwd(res, dy):
  x, w = res
  k, n = w.shape
  x2, dy2 = x.reshape(-1, k), dy.reshape(-1, n)
  dx = jnp.einsum("...n,kn->...k", dy, w)
  if n >= k:  # dy is the wider operand: keep it on the left.
    dw = jnp.einsum("mn,mk->nk", dy2, x2).T
  else:
    dw = jnp.einsum("mk,mn->kn", x2, dy2)
  return dx.astype(x.dtype), dw.astype(w.dtype)


linear.defvjp(_fwd, _bwd)
