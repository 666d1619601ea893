"""sampler.py against the model's full forward pass (flax lm1b's
temperature_sampler_test is the model): greedy limits, determinism per
prompt, a forced token, and the KV cache's logits.

One random tiny model (grouped-query attention, left-padded prompts); each
sampler setting is compiled once and shared by the tests.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from poisonjax.model import transformer as model_lib
from poisonjax.evaluation import sampler

L, G = 6, 5
CFG = model_lib.ModelConfig(vocab_size=31, num_layers=2, d_model=16, num_heads=4,
                            num_kv_heads=2, ffn_dim=32, max_seq_len=32)
# Prompt lengths: a full row, padded rows and a one-token prompt.
LENGTHS = (6, 3, 1, 4)


@jax.jit
def _init(key):
  return model_lib.Transformer(CFG).init(key, jnp.zeros((1, 4), jnp.int32))


def _params(seed):
  """Random params with sharp attention: at init scale (stddev 0.02) the
  scores are near zero and a wrong position or mask barely moves a logit."""
  params = nn.unbox(_init(jax.random.key(seed))["params"])
  attn = params["layers"]["attn"]
  for name in ("query", "key"):
    attn[name]["kernel"] = attn[name]["kernel"] * 10.0
  return params


def _prompts(seed, lengths=LENGTHS):
  """Left-padded prompts [B, L] and positions (-1 on padding)."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((len(lengths), L), np.int32)
  positions = np.full((len(lengths), L), -1, np.int32)
  for i, n in enumerate(lengths):
    tokens[i, L - n:] = rng.integers(3, CFG.vocab_size, n)
    positions[i, L - n:] = np.arange(n)
  return tokens, positions


@functools.lru_cache(maxsize=None)
def _sampler(temperature, top_k=0, seed=7):
  return jax.jit(sampler.make_sampler(CFG, L, G, temperature, top_k, seed=seed,
                                      return_logits=True))


def _sample(params, tokens, positions, rows=None, **settings):
  rows = np.arange(len(tokens), dtype=np.int32) if rows is None else rows
  out = _sampler(**settings)(params, tokens, positions, rows)
  return jax.tree.map(np.asarray, out)


@jax.jit
def _forward(params, tokens, positions):
  return model_lib.Transformer(CFG).apply({"params": params}, tokens, positions)


def _window(tokens, positions, gen):
  """Prompt + generation as one [B, L+G] sequence with its positions."""
  full_p = np.concatenate([positions, positions[:, -1:] + 1 + np.arange(G)], 1)
  return np.concatenate([tokens, gen], 1).astype(np.int32), full_p


def test_temperature_zero_is_argmax_of_the_full_forward_pass():
  params = _params(1)
  tokens, positions = _prompts(1)
  got = _sample(params, tokens, positions, temperature=0.0)["tokens"]
  # Greedy decoding by whole-sequence passes: token t is the argmax at
  # position L-1+t given tokens < t (later slots are masked out causally).
  want = np.zeros((len(tokens), G), np.int32)
  for t in range(G):
    full_t, full_p = _window(tokens, positions, want)
    want[:, t] = np.asarray(_forward(params, full_t, full_p))[:, L - 1 + t].argmax(-1)
  np.testing.assert_array_equal(got, want)


def test_top_k_one_at_temperature_one_is_greedy():
  params = _params(2)
  tokens, positions = _prompts(2)
  greedy = _sample(params, tokens, positions, temperature=0.0)["tokens"]
  top1 = _sample(params, tokens, positions, temperature=1.0, top_k=1)["tokens"]
  np.testing.assert_array_equal(top1, greedy)
  # Without the filter, sampling departs from greedy somewhere.
  free = _sample(params, tokens, positions, temperature=1.0)["tokens"]
  assert (free != greedy).any()


def test_samples_do_not_depend_on_the_batch():
  """Prompt r draws from fold_in(seed, r): the same tokens in any batch."""
  params = _params(3)
  tokens, positions = _prompts(3)
  whole = _sample(params, tokens, positions, temperature=1.0)["tokens"]
  assert len({tuple(r) for r in whole}) > 1  # Rows are not all alike.
  rows = np.array([3, 1], np.int32)  # A smaller batch, in another order.
  pair = _sample(params, tokens[rows], positions[rows], rows=rows,
                 temperature=1.0)["tokens"]
  np.testing.assert_array_equal(pair, whole[rows])


def test_a_model_that_favours_one_token_is_sampled_as_such():
  """Blocks zeroed (identity), every embedding the same: the head decides."""
  params = jax.tree.map(np.array, _params(4))
  favoured = 17
  params["layers"]["attn"]["out"]["kernel"][...] = 0.0
  params["layers"]["mlp"]["down"]["kernel"][...] = 0.0
  params["embed"]["embedding"][...] = 1.0
  params["head"]["kernel"][...] = 0.0
  params["head"]["kernel"][:, favoured] = 5.0  # Logit 80 vs 0 for the rest.
  tokens, positions = _prompts(4)
  got = _sample(params, tokens, positions, temperature=1.0)["tokens"]
  assert (got == favoured).all(), got


def test_cached_decode_logits_equal_full_forward():
  params = _params(5)
  tokens, positions = _prompts(5)
  out = _sample(params, tokens, positions, temperature=1.0)
  full = np.asarray(_forward(params, *_window(tokens, positions, out["tokens"])))
  # Token t was drawn from the logits at position L-1+t of the full pass.
  np.testing.assert_allclose(out["logits"], full[:, L - 1:L - 1 + G],
                             atol=1e-5, rtol=0)
