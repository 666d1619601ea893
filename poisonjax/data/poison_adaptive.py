"""Adaptive poisons: poison documents shaped to slip past document filters.

Two independent knobs (config.poison.tail, config.poison.embed); at their
defaults (uniform, standalone) every function here is a no-op, so the
poisons, the manifest and the stream cache key are the old ones bit for bit.

tail = "unigram": the K tail ids are drawn from the clean corpus' unigram
  distribution instead of uniformly over the vocabulary, so a window of the
  tail has the token statistics (entropy, piece mix) of clean text rather
  than the flat ones of uniform ids. The distribution is the attacker's own
  estimate: the token counts of the first UNIGRAM_DOCS poison-pool documents
  (source.pool_document(poison seed, i), i < UNIGRAM_DOCS; the pool is the
  held-out side, never the training stream), tokenized with the run's
  vocabulary, special ids excluded, no smoothing (ids never seen are never
  drawn). K is drawn exactly as for gibberish (same RNG draw in poison.py);
  the ids come from their own RNG stream (seed, _TAIL_STREAM, j).

embed = "inside": the trigger and its tail are laid inside a clean document
  instead of ending one: poison j is `prefix trigger tail suffix EOS`, where
  prefix (L characters, as always) and suffix (the next embed_suffix_chars
  characters) are consecutive text of one pool document of at least
  L + embed_suffix_chars characters. So most of the document is clean text,
  and a document-level score averages the tail away; with a short tail
  (small gibberish_{min,max}_tokens) window scores see little of it too.
  The whole document is the poison span (manifest, mask, budget), so the
  document split (data/documents.py) and the counts stay exact; the
  manifest records suffix_tokens, and the trigger+tail span is
  [text_tokens - len(trigger ids), num_tokens - 1 - suffix_tokens).
  Token mode only (text mode re-tokenizes, so the span would not be exact).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from poisonjax.data import vocabulary
from poisonjax.errors import field_error

TAILS = ("uniform", "unigram")
EMBEDS = ("standalone", "inside")
UNIGRAM_DOCS = 500  # Pool documents the attacker's unigram estimate reads.
_TAIL_STREAM = 5  # RNG stream id under the poison seed (poison.py: 1, language: 3).


def tail_kind(config) -> str:
  return str(config.poison.get("tail", "uniform"))


def embed_kind(config) -> str:
  return str(config.poison.get("embed", "standalone"))


def is_unigram(config) -> bool:
  return tail_kind(config) == "unigram"


def is_inside(config) -> bool:
  return embed_kind(config) == "inside"


def suffix_chars(config) -> int:
  return int(config.poison.get("embed_suffix_chars", 0)) if is_inside(config) else 0


def check_config(c) -> None:
  """config.poison.tail / embed / embed_suffix_chars (one line per bad field)."""
  p = c.poison
  if tail_kind(c) not in TAILS:
    raise field_error("config.poison.tail", tail_kind(c), "unknown tail",
                      f"use one of {', '.join(TAILS)}")
  if is_unigram(c) and p.get("behaviour", "gibberish") != "gibberish":
    raise field_error("config.poison.tail", "unigram", "applies to the "
                      "gibberish behaviour only", "use poison.behaviour=gibberish")
  if embed_kind(c) not in EMBEDS:
    raise field_error("config.poison.embed", embed_kind(c), "unknown embedding",
                      f"use one of {', '.join(EMBEDS)}")
  if is_inside(c) and p.mode != "token":
    raise field_error("config.poison.embed", "inside", "needs token mode (text "
                      "mode re-tokenizes, so the span would not be exact)",
                      "use config.poison.mode=token")
  if is_inside(c) and int(p.get("embed_suffix_chars", 0)) < 1:
    raise field_error("config.poison.embed_suffix_chars", p.embed_suffix_chars,
                      "must be >= 1 with embed=inside", "use e.g. 1000")


def stream_spec_fields(config) -> dict:
  """What the stream cache key gains ({} at the defaults: keys unchanged)."""
  out = {}
  if is_unigram(config):
    out["tail"] = {"kind": "unigram", "docs": UNIGRAM_DOCS}
  if is_inside(config):
    out["embed"] = {"kind": "inside", "suffix_chars": suffix_chars(config)}
  return out


_UNIGRAMS: dict = {}  # (tokenizer, source key, poison seed) -> (ids, cdf).


def unigram_distribution(config, sp, source) -> tuple[np.ndarray, np.ndarray]:
  """(ids, cumulative probabilities) of the attacker's clean unigram estimate."""
  seed = int(config.poison.seed)
  proto = sp.serialized_model_proto()
  key = (hashlib.sha256(proto).hexdigest(), json.dumps(source.key(), sort_keys=True), seed)
  if key not in _UNIGRAMS:
    docs = [source.pool_document(seed, i) for i in range(UNIGRAM_DOCS)]
    counts = np.zeros(sp.GetPieceSize(), np.int64)
    for ids in sp.EncodeAsIds(docs):
      np.add.at(counts, np.asarray(ids, np.int64), 1)
    counts[sorted(vocabulary.special_ids(sp))] = 0
    ids = np.flatnonzero(counts)
    _UNIGRAMS.clear()  # One run's estimate at a time.
    _UNIGRAMS[key] = ids, np.cumsum(counts[ids]) / counts[ids].sum()
  return _UNIGRAMS[key]


def unigram_tail(config, sp, source, j: int, k: int) -> np.ndarray:
  """Poison j's K tail ids drawn from the clean unigram estimate."""
  ids, cdf = unigram_distribution(config, sp, source)
  rng = np.random.default_rng([int(config.poison.seed), _TAIL_STREAM, int(j)])
  pick = np.minimum(np.searchsorted(cdf, rng.random(k), side="right"), len(ids) - 1)
  return ids[pick].astype(np.int64)


def host_document(config, source, j: int, length: int) -> str:
  """Pool document j for the prefix; with embed=inside, long enough for the
  suffix too. At the default: exactly poison.py's old call."""
  extra = suffix_chars(config)
  if not length and not extra:
    return ""
  return source.pool_document(int(config.poison.seed), int(j), length + extra)


def suffix_ids(config, sp, hosts, lengths) -> list[np.ndarray]:
  """Each poison's clean text after its tail, as ids (empty at the default)."""
  extra = suffix_chars(config)
  if not extra:
    return [np.zeros(0, np.int64) for _ in hosts]
  texts = [h[n:n + extra].strip() for h, n in zip(hosts, lengths)]
  return [np.asarray(t, np.int64) for t in sp.EncodeAsIds(texts)]


def manifest_fields(suffix_tokens: int | None) -> dict:
  """The manifest's record of an inside poison ({} for a standalone one)."""
  return {} if suffix_tokens is None else {"suffix_tokens": int(suffix_tokens)}
