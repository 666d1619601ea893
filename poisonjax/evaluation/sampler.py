"""KV-cache sampling and sequence scoring for the decoder in model.py.

`make_sampler` returns one jittable function: a prefill pass over a batch of
left-padded prompts (padding at position -1, which the cache never attends
to), then `lax.scan` over the G generation steps, one token per step through
the cache. The cache is sized to prompt + G tokens (not the model's
max_seq_len): each step attends over that many keys only. The layers run
unrolled on per-layer weights (model.unstack_layers, once per call), so each
token updates each layer's cache in place.

Sampling is from the model's own softmax at `temperature` (0: argmax), after
optional top-k / top-p filtering. EOS and pad are ordinary tokens here: the
sampler always produces exactly G tokens and the evaluator scores all of
them, so every sample's perplexity averages over the same number of tokens.

`sequence_nll` scores tokens with one full (non-cached) forward pass.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from poisonjax.model import transformer as model_lib


def filter_logits(logits, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """Scaled, filtered logits [..., V] to sample from (filtered-out: -inf)."""
  logits = logits.astype(jnp.float32) / temperature
  neg = jnp.finfo(jnp.float32).min
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the
    # mass strictly before it is < top_p (the top token always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.where(before < top_p, sorted_logits, jnp.inf)
    cutoff = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, neg, logits)
  return logits


def sample_token(logits, keys, temperature: float, top_k: int = 0,
                 top_p: float = 1.0):
  """One token id per row of logits [B, V]; keys [B]: one per row."""
  if temperature <= 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits, temperature, top_k, top_p)
  draw = jax.vmap(lambda k, l: jax.random.categorical(k, l))
  return draw(keys, filtered).astype(jnp.int32)


def empty_cache(model, batch: int, length: int):
  """The decode cache, empty: zeros, every key's position -1 (masked).

  Built from the cache's shapes (eval_shape of init), so no parameters are
  initialised along the way.
  """
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((batch, length), jnp.int32),
                         decode=True)["cache"])

  def fill(path, leaf):
    value = -1 if jax.tree_util.keystr(path).endswith("['cached_pos']") else 0
    return jnp.full(leaf.shape, value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def make_sampler(model_cfg: model_lib.ModelConfig, prompt_len: int,
                 gen_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, return_logits: bool = False):
  """Returns sample(params, tokens [B,L], positions [B,L], rows [B]) -> dict.

  rows are the prompts' global indices: prompt r draws token t with key
  fold_in(fold_in(key(seed), r), t), so a prompt's sample does not depend
  on which batch or device it ran in.

  The dict holds `tokens` [B, G] (the generated ids) and, with
  return_logits, `logits` [B, G, V]: the model's logits that each token was
  drawn from (for tests against a full forward pass).
  """
  total = prompt_len + gen_tokens
  # Layers unrolled (per-layer weights and caches, see unstack_layers).
  cfg = dataclasses.replace(model_cfg, max_seq_len=total, scan_layers=False,
                            remat="none")
  model = model_lib.Transformer(cfg)

  def sample(params, tokens, positions, rows):
    params = model_lib.unstack_layers(params, cfg.num_layers)
    batch = tokens.shape[0]
    cache = empty_cache(model, batch, total)
    logits, state = model.apply({"params": params, "cache": cache}, tokens,
                                positions, decode=True, mutable=["cache"])
    next_pos = positions[:, -1] + 1

    base = jax.random.key(seed)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(base, r))(rows)

    def step(carry, t):
      cache, last_logits, pos = carry
      keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(row_keys)
      tok = sample_token(last_logits, keys, temperature, top_k, top_p)
      out, state = model.apply({"params": params, "cache": cache}, tok[:, None],
                               pos[:, None], decode=True, mutable=["cache"])
      emitted = (tok, last_logits) if return_logits else (tok,)
      return (state["cache"], out[:, 0], pos + 1), emitted

    _, emitted = jax.lax.scan(step, (state["cache"], logits[:, -1], next_pos),
                              jnp.arange(gen_tokens))
    result = {"tokens": emitted[0].T}
    if return_logits:
      result["logits"] = jnp.swapaxes(emitted[1], 0, 1)
    return result

  return sample


def sequence_nll(model_cfg: model_lib.ModelConfig, params, tokens, positions,
                 target_mask):
  """Mean NLL per row of the tokens where target_mask is True.

  tokens/positions/target_mask [B, T]; token t is predicted from the logits
  at t-1 (target_mask[:, 0] is ignored). One full forward pass.
  """
  logits = model_lib.Transformer(model_cfg).apply({"params": params}, tokens,
                                                  positions)
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  mask = target_mask[:, 1:].astype(jnp.float32)
  return (nll * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
