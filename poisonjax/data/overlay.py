"""A run's stream as the shared clean token store plus its poison overlay.

The mixed stream is the store's first C clean tokens (C = T, or T minus
the poison tokens with poison.budget_mode=replace: budget.py) with the
run's N poison documents laid in: poison j goes at the first document boundary at
or after clean offset ceil(u_j * C) (mixer.py), so the stream is

  clean[0:P_0] poison_0 clean[P_0:P_1] poison_1 ... clean[P_{N-1}:C]

with P_k the boundaries in stream order. The overlay keeps only O(N):
the N boundaries (one small block read each, from the store's document
ends), the poison documents' ids and their spans in the mixed stream. Batch
k on process h maps its row range to clean and poison pieces by binary
search over the spans and reads only those clean tokens from the store.
Nothing proportional to the run is built per run or per host.

It gives the per-run cache's batches token for token (the same documents,
EOS after each, the last clean document cut at C, poisons after it, the
final partial batch padded with 0), and the same manifest and counts,
because it reuses TrainingStream's manifest and poison bookkeeping, which
read only the spans.
"""

from __future__ import annotations

import numpy as np

from poisonjax.data import filtered, mixer, poison, sources, store as store_lib
from poisonjax.data import store_build
from poisonjax.data import stream as stream_lib
from poisonjax.data import vocabulary
from poisonjax.errors import UserError, field_error


def _poisons_and_budget(config, vocab, clean_tokens: int):
  """The run's poisons (by id) and its clean tokens C (as the cache computes)."""
  p = config.poison
  n = int(p.count)
  src = sources.get_source(config)
  poisons = poison.make_poisons(config, vocab.tokenizer, src, range(n))
  poison_tokens = sum(len(q.tokens) for q in poisons)
  return poisons, stream_lib.check_clean_left(config, int(clean_tokens),
                                              poison_tokens)


class OverlayStream(stream_lib.TrainingStream):
  """TrainingStream's interface over a TokenStore and the run's poisons.

  Inherits num_steps, num_poisons, manifest, write_manifest, poisons_seen
  and poison_id_at (they read only the spans); overrides how tokens are read.
  """

  def __init__(self, config, vocab, store: store_lib.TokenStore, clean_tokens: int):
    # Not TrainingStream.__init__: there is no per-run cache directory to read.
    self.config, self.vocab, self.store = config, vocab, store
    self.dir = str(store.path)
    self.seq_len = int(config.data.seq_len)
    self.batch_size = int(config.train.batch_size)
    self.manifest_path = None  # Nothing is written into the shared store.
    poisons, C = _poisons_and_budget(config, vocab, clean_tokens)
    if C > store.num_tokens:
      raise UserError(f"token store {store.path} holds {store.num_tokens:,} "
                      f"clean tokens, the run needs {C:,}; extend it with "
                      f"`poisonjax data build-store --tokens={C}`")
    self._place(config, poisons, C)
    self.num_sequences = -(-self.num_tokens // self.seq_len)
    self._last_steps = (self.spans[:, 1] - 1) // (self.seq_len * self.batch_size)

  def _place(self, config, poisons: list, C: int) -> None:
    """Boundaries, spans, manifest and the poison ids, all O(N)."""
    n = len(poisons)
    order, offsets, u = mixer.run_schedule(config, C, [len(q.tokens) for q in poisons])
    bounds = np.minimum(self.store.document_ends(offsets)[0], C)
    num_docs = int(self.store.document_ends([C])[1][0]) + 1
    if n > num_docs:
      raise field_error("config.poison.count", n,
                        f"more poisons than the {num_docs} clean documents in "
                        f"the clean budget T={C}", "lower the count or raise "
                        "the budget (config.train.data_multiplier)")
    docs = [poisons[int(j)] for j in order]
    lengths = np.array([len(q.tokens) for q in docs], np.int64)
    before = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    starts = bounds + before[:-1]
    self.spans = np.stack([starts, starts + lengths,
                           np.array([q.id for q in docs], np.int64)], axis=1)
    self.spans = self.spans.reshape(-1, 3).astype(np.int64)
    self._bounds = bounds.astype(np.int64)
    self._poison_ids = (np.concatenate([q.tokens for q in docs]).astype(np.int32)
                        if docs else np.zeros(0, np.int32))
    self._poison_first = before[:-1]
    self.clean_tokens, self.poison_tokens = int(C), int(before[-1])
    self.num_tokens = self.clean_tokens + self.poison_tokens
    self.base_manifest = [
        {"id": q.id, "fraction": float(u[q.id]), "clean_offset": int(b),
         "start": int(s), "num_tokens": len(q.tokens),
         "prefix_chars": len(q.prefix), "text_tokens": q.num_text_tokens,
         "gibberish_tokens": len(q.gibberish), **poison.manifest_fields(q)}
        for q, b, s in zip(docs, bounds.tolist(), starts.tolist())]
    self.meta = {"store": self.dir, "num_tokens": self.num_tokens,
                 "clean_tokens": self.clean_tokens,
                 "poison_tokens": self.poison_tokens, "num_clean_docs": num_docs,
                 "num_poisons": n, "dtype": self.store.dtype.name}

  def read_into(self, tokens: np.ndarray, mask: np.ndarray, a: int, b: int) -> None:
    """Writes mixed-stream tokens [a, min(b, num_tokens)) into tokens/mask."""
    spans, n = self.spans, len(self.spans)
    lo = int(np.searchsorted(spans[:, 1], a, side="right"))
    hi = int(np.searchsorted(spans[:, 0], b, side="left"))
    for k in range(lo, hi):  # Poisons overlapping [a, b).
      s, e = int(spans[k, 0]), int(spans[k, 1])
      x0, x1 = max(s, a), min(e, b)
      first = int(self._poison_first[k]) + x0 - s
      tokens[x0 - a:x1 - a] = self._poison_ids[first:first + x1 - x0]
      mask[x0 - a:x1 - a] = True
    for i in range(lo, hi + 1):  # Clean pieces: the one before poison i.
      m0 = int(spans[i - 1, 1]) if i > 0 else 0
      c0 = int(self._bounds[i - 1]) if i > 0 else 0
      m1 = int(spans[i, 0]) if i < n else self.num_tokens
      x0, x1 = max(m0, a), min(m1, b)
      if x1 > x0:
        tokens[x0 - a:x1 - a] = self.store.read(c0 + x0 - m0, c0 + x1 - m0)


def training_stream(config, clean_tokens: int, may_build: bool = True):
  """The run's stream: the per-run cache, or the store + overlay (data.store);
  with data.drop_scores, that stream filtered (filtered.py).

  may_build: whether a missing or too small store may be built here (False
  on a multi-process run: build it once with `poisonjax data build-store`).
  """
  if filtered.is_filtered(config):  # Filter, then train.
    base = training_stream(filtered.unfiltered_config(config), clean_tokens,
                           may_build)
    return filtered.filtered_stream(config, base, clean_tokens)
  if not config.data.store:
    return stream_lib.build_stream(config, clean_tokens)
  T = int(clean_tokens)
  if T < config.data.seq_len:
    raise UserError(f"clean token budget T={T} is below config.data.seq_len="
                    f"{config.data.seq_len}; raise config.train.data_multiplier "
                    "or tokens_per_param")
  if config.poison.rate > 0:
    raise field_error("config.data.store", config.data.store,
                      "not supported in rate mode (config.poison.rate > 0)",
                      "use config.poison.count, or config.data.store='' for "
                      "the per-run cache")
  vocab = vocabulary.get_vocabulary(config)
  store = store_build.open_store(config, vocab, T, may_build)
  return OverlayStream(config, vocab, store, T)
