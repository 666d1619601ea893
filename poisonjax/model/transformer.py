"""A Llama-style decoder-only transformer in Flax linen.

Pure functional: `Transformer(cfg).init(...)` / `.apply(...)`. Every
parameter carries logical axis names (`nn.with_logical_partitioning`); the
one table in `sharding.py` maps them onto the mesh. Layers run under
`nn.scan` (one compiled block, stacked parameters with a leading `layers`
axis) with an optional remat policy.

Decode mode (`decode=True`) keeps a KV cache in the `cache` collection. Each
cached key also stores its position; a key with position < 0 is padding and
is never attended to, so prompts of different lengths can be left-padded
into one batch (padding tokens get position -1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from poisonjax.model import attention
from poisonjax.model import linear
from poisonjax.model import sizes
from poisonjax.errors import field_error

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  ffn_dim: int
  max_seq_len: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: str = "none"
  scan_layers: bool = True
  scan_unroll: int = 0  # 0: auto, see scan_unroll().
  tie_embeddings: bool = False
  rope_theta: float = 10000.0
  attention: str = "auto"  # attention.IMPLEMENTATIONS.

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @classmethod
  def from_config(cls, config, vocab_size: int) -> "ModelConfig":
    """Builds the model config from a run config (size table + overrides).

    Pure: fields left at 0 are resolved on a copy; `config` is never
    written, so callers need no defensive copies.
    """
    m = ml_collections.ConfigDict(config.model.to_dict())
    sizes.resolve_model_config(m, vocab_size)
    for name, value in (("dtype", m.dtype), ("param_dtype", m.param_dtype)):
      if value not in _DTYPES:
        raise field_error(f"config.model.{name}", value, "unknown dtype",
                          "use float32 or bfloat16")
    if m.get("scan_unroll", 0) < 0:
      raise field_error("config.model.scan_unroll", m.scan_unroll, "negative",
                        "use 0 (auto) or a number of layers per iteration")
    if m.remat not in _REMAT_POLICIES:
      raise field_error("config.model.remat", m.remat, "unknown policy",
                        f"use one of {', '.join(_REMAT_POLICIES)}")
    return cls(
        vocab_size=m.vocab_size, num_layers=m.num_layers, d_model=m.d_model,
        num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, ffn_dim=m.ffn_dim,
        max_seq_len=config.data.seq_len, dtype=_DTYPES[m.dtype],
        param_dtype=_DTYPES[m.param_dtype], remat=m.remat,
        scan_layers=m.scan_layers, scan_unroll=m.get("scan_unroll", 0),
        tie_embeddings=m.tie_embeddings,
        rope_theta=m.rope_theta, attention=m.get("attention", "auto"))


_REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _init(axes, init=nn.initializers.normal(stddev=0.02)):
  return nn.with_logical_partitioning(init, axes)


class RMSNorm(nn.Module):
  cfg: ModelConfig
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", _init(("norm",), nn.initializers.ones),
                       (x.shape[-1],), self.cfg.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
    return (x32 * scale.astype(jnp.float32)).astype(self.cfg.dtype)


def apply_rope(x, positions, theta: float):
  """Rotary embedding on x [B, H, T, D] at integer positions [B, T]."""
  half = x.shape[-1] // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[:, None, :, None] * freqs  # [B,1,T,half]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Proj(nn.Module):
  """A bias-free linear map: `einsum(spec, x, kernel)`.

  Used instead of nn.DenseGeneral, whose init builds a flat 2-D kernel and
  reshapes it: with boxed (logically named) kernels that applies the 3-D
  names to the 2-D array and fails whenever logical-axis rules and a mesh are
  active (i.e. inside the sharded train step). The spec also lets q, k and v
  come out heads-major ([B, H, T, D]), the layout attention multiplies in,
  with no transpose.
  """
  spec: str
  shape: tuple
  names: tuple
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", _init(self.names), self.shape,
                        self.cfg.param_dtype)
    return jnp.einsum(self.spec, x.astype(self.cfg.dtype),
                      kernel.astype(self.cfg.dtype))


class Attention(nn.Module):
  cfg: ModelConfig
  plain_causal: bool = False  # Positions 0..T-1, no cache: kernels apply.

  @nn.compact
  def __call__(self, x, positions, decode: bool):
    cfg = self.cfg
    e, h, kv, d = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    heads_major = lambda n, names, name: Proj(
        "bte,ehd->bhtd", (e, n, d), ("embed",) + names, cfg, name=name)(x)
    q = heads_major(h, ("heads", "head_dim"), "query")
    k = heads_major(kv, ("kv_heads", "head_dim"), "key")
    v = heads_major(kv, ("kv_heads", "head_dim"), "value")
    # The 1/sqrt(d) scale goes on q ([T, D]) rather than on the [T, S] scores.
    q = apply_rope(q, positions, cfg.rope_theta) * jnp.asarray(d ** -0.5, q.dtype)
    k = apply_rope(k, positions, cfg.rope_theta)
    q = nn.with_logical_constraint(
        q, ("activation_batch", "activation_heads", "activation_length", None))
    if decode:
      k, v, key_pos = self._update_cache(k, v, positions)
    else:
      key_pos = positions
    # Key j is visible to query i iff 0 <= pos_j <= pos_i.
    visible = (key_pos[:, None, :] <= positions[:, :, None]) & (key_pos[:, None, :] >= 0)
    b, _, t, _ = q.shape
    implementation = attention.resolve(cfg.attention, attention.target_platform(),
                                       cfg.dtype)
    out = attention.attend(q.reshape(b, kv, h // kv, t, d), k, v, visible,
                           implementation, self.plain_causal and not decode)
    out = nn.with_logical_constraint(
        out.reshape(b, h, t, d),
        ("activation_batch", "activation_heads", "activation_length", None))
    return Proj("bhtd,hde->bte", (h, d, e), ("heads", "head_dim", "embed"), cfg,
                name="out")(out)

  def _update_cache(self, k, v, positions):
    """Writes this call's keys/values at the cache index; returns the cache."""
    b, h, t, d = k.shape
    max_len = self.cfg.max_seq_len
    ck = self.variable("cache", "cached_key", jnp.zeros, (b, h, max_len, d), k.dtype)
    cv = self.variable("cache", "cached_value", jnp.zeros, (b, h, max_len, d), v.dtype)
    cpos = self.variable("cache", "cached_pos", lambda: jnp.full((b, max_len), -1, jnp.int32))
    idx = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if self.is_initializing():
      return k, v, positions
    i = idx.value
    ck.value = jax.lax.dynamic_update_slice(ck.value, k, (0, 0, i, 0))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v, (0, 0, i, 0))
    cpos.value = jax.lax.dynamic_update_slice(
        cpos.value, positions.astype(jnp.int32), (0, i))
    idx.value = i + t
    return ck.value, cv.value, cpos.value


class Dense(nn.Module):
  """A bias-free [in, features] kernel applied with `linear.linear`."""
  features: int
  names: tuple
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", _init(self.names),
                        (x.shape[-1], self.features), self.cfg.param_dtype)
    return linear.linear(x.astype(self.cfg.dtype), kernel.astype(self.cfg.dtype))


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    gate = Dense(cfg.ffn_dim, ("embed", "mlp"), cfg, name="gate")(x)
    up = Dense(cfg.ffn_dim, ("embed", "mlp"), cfg, name="up")(x)
    h = nn.silu(gate) * up
    h = nn.with_logical_constraint(
        h, ("activation_batch", "activation_length", "activation_mlp"))
    return Dense(cfg.d_model, ("mlp", "embed"), cfg, name="down")(h)


class Block(nn.Module):
  """Pre-norm block; signature (carry, _) -> (carry, None) for nn.scan."""
  cfg: ModelConfig
  decode: bool = False
  plain_causal: bool = False

  @nn.compact
  def __call__(self, x, positions):
    h = x + Attention(self.cfg, self.plain_causal, name="attn")(
        RMSNorm(self.cfg, name="attn_norm")(x), positions, self.decode)
    out = h + Mlp(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(h))
    out = nn.with_logical_constraint(
        out, ("activation_batch", "activation_length", "activation_embed"))
    return out, None


class Transformer(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens, positions=None, decode: bool = False):
    """tokens [B, T] int -> logits [B, T, V] float32."""
    cfg = self.cfg
    plain_causal = positions is None and not decode
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    embed = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        embedding_init=_init(("vocab", "embed"), nn.initializers.normal(1.0)),
        name="embed")
    x = embed(tokens)
    x = nn.with_logical_constraint(
        x, ("activation_batch", "activation_length", "activation_embed"))

    block = Block
    policy = _REMAT_POLICIES[cfg.remat]
    if cfg.remat != "none":
      block = nn.remat(Block, policy=policy, prevent_cse=not cfg.scan_layers,
                       static_argnums=())
    if cfg.scan_layers:
      x, _ = nn.scan(
          block, variable_axes={"params": 0, "cache": 0},
          split_rngs={"params": True}, in_axes=nn.broadcast,
          length=cfg.num_layers, unroll=scan_unroll(cfg),
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(cfg, decode, plain_causal, name="layers")(x, positions)
    else:
      for i in range(cfg.num_layers):
        x, _ = block(cfg, decode, plain_causal, name=f"layer_{i}")(x, positions)

    x = RMSNorm(cfg, name="final_norm")(x)
    if cfg.tie_embeddings:
      table = embed.embedding.astype(cfg.dtype).T  # [E, V]
      logits = linear.linear(x.astype(cfg.dtype), table) / jnp.sqrt(cfg.d_model)
    else:
      logits = Dense(cfg.vocab_size, ("embed", "vocab"), cfg, name="head")(x)
    logits = nn.with_logical_constraint(
        logits, ("activation_batch", "activation_length", "activation_vocab"))
    return logits.astype(jnp.float32)


def scan_unroll(cfg: ModelConfig) -> int:
  """Layers per scan iteration: cfg.scan_unroll, or for 0 every layer on CPU
  (the loop's stacking of activations costs ~10% of a CPU step; the
  parameters stay stacked either way) and 1 on accelerators."""
  if cfg.scan_unroll:
    return min(cfg.scan_unroll, cfg.num_layers)
  return cfg.num_layers if attention.target_platform() == "cpu" else 1


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


def unstack_layers(params, num_layers: int):
  """Scanned parameters (one stacked 'layers' subtree) -> 'layer_i' subtrees.

  The params of `scan_layers=False`: what decoding runs on, so that each
  layer's weights and cache are separate arrays (a token step then updates
  its cache in place instead of slicing and restacking all layers).
  Parameters already unstacked are returned as they are.
  """
  if "layers" not in params:
    return params
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layer_{i}"] = jax.tree.map(lambda p, i=i: p[i], params["layers"])
  return out


def abstract_params(cfg: ModelConfig, batch: int = 1):
  """Parameter shapes (boxed with logical names) without allocating them."""
  model = Transformer(cfg)
  tokens = jax.ShapeDtypeStruct((batch, min(cfg.max_seq_len, 8)), jnp.int32)
  return jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)["params"]


def param_counts(cfg: ModelConfig) -> dict[str, int]:
  """Total and non-embedding parameter counts, by eval_shape (no allocation)."""
  params = nn.unbox(abstract_params(cfg))
  total = count_params(params)
  embedding = count_params(params["embed"]) + count_params(params.get("head", {}))
  return {"total": total, "non_embedding": total - embedding}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 x non-embedding-matmul params + attention.

  The PaLM-appendix estimate: 6N for the weight matmuls (head included) and
  12 * layers * d_model * seq_len for attention scores and values.
  """
  hd = cfg.head_dim
  per_layer = (cfg.d_model * hd * (cfg.num_heads * 2 + cfg.num_kv_heads * 2)
               + 3 * cfg.d_model * cfg.ffn_dim)
  matmul_params = cfg.num_layers * per_layer + cfg.d_model * cfg.vocab_size
  return 6.0 * matmul_params + 12.0 * cfg.num_layers * cfg.d_model * seq_len
