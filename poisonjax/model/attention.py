"""Causal attention: one XLA path for every backend, and a kernel per backend.

`attend()` picks the implementation (config.model.attention):
  xla     `causal_attention` below: any mask, any backend (CPU's choice);
          under the plain causal mask in two query halves (the first half
          skips the second half's keys)
  splash  the Pallas TPU kernel that ships with JAX (splash attention),
          under shard_map over the mesh; off TPU it runs in Pallas
          interpret mode (slow: for tests)
  cudnn   jax.nn.dot_product_attention(implementation="cudnn"), bf16 on GPU
  auto    splash on TPU, cudnn on GPU in bfloat16, else xla
The kernels take only the plain causal mask (training and scoring from
position 0); decoding with a cache and padded prompts take the XLA path.

The XLA path, with a memory-lean backward pass (flash-style, unblocked):

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
from jax.sharding import PartitionSpec as P

from poisonjax.errors import UserError

IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn")

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
  # Normalised after the matmul: one divide per [T, D] output, not per [T, S].
  o = jnp.einsum("bkgts,bksd->bkgtd", p.astype(v.dtype), v,
                 preferred_element_type=jnp.float32) / l
  # m and l, not m + log(l): next to _MASKED, log(l) would round away.
  return o.astype(v.dtype), (m, l)


@jax.custom_vjp
def causal_attention(q, k, v, visible):
  """softmax(q k^T masked) v; see the module docstring for shapes."""
  return _forward(q, k, v, visible)[0]


def _fwd(q, k, v, visible):
  o, (m, l) = _forward(q, k, v, visible)
  return o, (q, k, v, visible, o, m, l)


def _bwd(res, do):
  q, k, v, visible, o, m, l = res
  p = jnp.exp(_scores(q, k, visible) - m) * (1.0 / l)  # The forward's weights.
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


def causal_halves_attention(q, k, v, visible):
  """causal_attention with the queries in two halves, the first seeing only
  the first half of the keys: valid where no query sees a later key (the
  plain causal mask), and it skips the masked quarter of the work."""
  half = -(-q.shape[3] // 2)
  first = causal_attention(q[:, :, :, :half], k[:, :, :half], v[:, :, :half],
                           visible[:, :half, :half])
  second = causal_attention(q[:, :, :, half:], k, v, visible[:, half:])
  return jnp.concatenate([first, second], axis=3)


def target_platform() -> str:
  """The platform the program is traced for: the mesh's devices' when a mesh
  is set (an ahead-of-time compile for a TPU slice on a CPU host traces for
  "tpu"), else jax.default_backend()."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else mesh.abstract_device
  return device.platform if device is not None else jax.default_backend()


def resolve(implementation: str, platform: str, dtype) -> str:
  """The implementation `auto` means on `platform` (target_platform())."""
  if implementation not in IMPLEMENTATIONS:
    raise UserError(f"config.model.attention={implementation!r}: unknown; use "
                    f"one of {', '.join(IMPLEMENTATIONS)}")
  if implementation == "cudnn" and jnp.dtype(dtype) not in (
      jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    raise UserError("config.model.attention='cudnn': needs model.dtype="
                    "'bfloat16' (cuDNN's flash attention has no float32)")
  if implementation != "auto":
    return implementation
  if platform == "tpu":
    return "splash"
  if platform == "gpu" and jnp.dtype(dtype) == jnp.dtype(jnp.bfloat16):
    return "cudnn"
  return "xla"


def attend(q, k, v, visible, implementation: str, plain_causal: bool):
  """Attention by `implementation` (resolved); the kernels only where the
  mask is the plain causal one (`plain_causal`), else the XLA path."""
  if not plain_causal:
    return causal_attention(q, k, v, visible)
  if implementation == "xla":
    return causal_halves_attention(q, k, v, visible)
  if implementation == "splash":
    return splash_attention(q, k, v)
  return cudnn_attention(q, k, v)


def splash_length(t: int) -> int:
  """The length splash attention runs at: T padded to a multiple of 128."""
  return t + (-t % 128)


def splash_block(t: int) -> int:
  """The kernel's block along T (T already a multiple of 128)."""
  return next(size for size in (512, 256, 128) if t % size == 0)


def _splash_kernel(groups: int, t: int, interpret: bool):
  """The MQA kernel for `groups` query heads sharing one key head (made per
  trace: its mask tables become constants of that trace)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=g-import-not-at-top
      splash_attention_kernel as kernel_lib, splash_attention_mask as mask_lib)
  b = splash_block(t)
  sizes = kernel_lib.BlockSizes(block_q=b, block_kv=b, block_q_dkv=b,
                                block_kv_dkv=b, block_q_dq=b, block_kv_dq=b)
  mask = mask_lib.MultiHeadMask([mask_lib.CausalMask((t, t))] * groups)
  return kernel_lib.make_splash_mqa(mask, block_sizes=sizes, head_shards=1,
                                    q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v):
  """Splash attention per (batch row, key head): q [B, K, G, T, D] (scaled),
  k, v [B, K, T, D]; sharded like the activations when a mesh is set.

  T is padded at the end to a multiple of 128, the kernel's block (training
  sees seq_len - 1 positions): under the causal mask no real query sees a
  padded key, and the padded queries' rows are cut off.
  """
  t = q.shape[3]
  pad = splash_length(t) - t
  if pad:
    q = jnp.pad(q, [(0, 0)] * 3 + [(0, pad), (0, 0)])
    k, v = (jnp.pad(x, [(0, 0)] * 2 + [(0, pad), (0, 0)]) for x in (k, v))
  kernel = _splash_kernel(q.shape[2], t + pad, target_platform() != "tpu")
  local = jax.vmap(jax.vmap(kernel))
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    out = local(q, k, v)
  else:
    heads = "tensor" if q.shape[1] % mesh.shape["tensor"] == 0 else None
    qo = P(("data", "fsdp"), heads, None, None, None)
    kv = P(("data", "fsdp"), heads, None, None)
    out = jax.shard_map(local, in_specs=(qo, kv, kv), out_specs=qo,
                        check_vma=False)(q, k, v)
  return out[:, :, :, :t]


def cudnn_attention(q, k, v):
  """cuDNN flash attention: q [B, K, G, T, D] (scaled) -> the same layout."""
  b, kv, g, t, d = q.shape
  query = q.reshape(b, kv * g, t, d).transpose(0, 2, 1, 3)  # [B, T, N, D].
  out = jax.nn.dot_product_attention(
      query, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), scale=1.0,
      is_causal=True, implementation="cudnn")
  return out.transpose(0, 2, 1, 3).reshape(b, kv, g, t, d)
