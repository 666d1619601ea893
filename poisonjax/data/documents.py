"""The stream as documents, each with its exact ground truth.

A document is what the stream builder wrote between two EOS ids (EOS
included), so splitting the token stream after every EOS gives them back;
the cuts also include every poison span's start, because the last clean
document is cut at the clean budget without its EOS and a poison may follow
it directly. A document is a poison iff its [start, end) is a span of
spans.npy, and the count found must equal the manifest's (else the split
is wrong and nothing measured on it could be trusted).

Only the boundaries are held for the whole stream (one int64 per
document); tokens and texts are read a chunk of documents at a time, so a
big stream is scored without holding its texts. `max_clean_docs` samples
that many clean documents (deterministically, by `seed`) and keeps every
poison: rates are per class, so they stay unbiased estimates for the clean
side and exact for the poisons.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

_SCAN_TOKENS = 1 << 24  # Tokens read per step while finding EOS ids.


@dataclasses.dataclass(frozen=True)
class Document:
  """One document: where it lies in the stream and what it is."""

  index: int  # Its rank among all the stream's documents.
  start: int  # Stream positions [start, end), the trailing EOS included.
  end: int
  poison_id: int  # The manifest's poison id; -1 for a clean document.
  tokens: np.ndarray  # int32 ids without the trailing EOS.
  text: str  # tokens decoded.

  @property
  def is_poison(self) -> bool:
    return self.poison_id >= 0


def read_tokens(stream, a: int, b: int) -> np.ndarray:
  """Stream positions [a, b) as int32 (a cached stream or a store overlay)."""
  tokens = np.zeros(b - a, np.int32)
  stream.read_into(tokens, np.zeros(b - a, np.bool_), a, b)
  return tokens


def boundaries(stream, eos_id: int) -> np.ndarray:
  """Sorted cut positions 0 = c_0 < ... < c_n = num_tokens: document k is
  [c_k, c_{k+1})."""
  n = int(stream.num_tokens)
  cuts = [np.array([0, n], np.int64), stream.spans[:, 0].astype(np.int64)]
  for a in range(0, n, _SCAN_TOKENS):
    b = min(n, a + _SCAN_TOKENS)
    cuts.append(np.flatnonzero(read_tokens(stream, a, b) == eos_id) + a + 1)
  return np.unique(np.concatenate(cuts))


def poison_ids_of(stream, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
  """Each document's poison id (-1: clean), checked against the manifest."""
  out = np.full(len(starts), -1, np.int64)
  spans = stream.spans
  k = np.searchsorted(starts, spans[:, 0])
  found = (k < len(starts)) & (starts[np.minimum(k, len(starts) - 1)] == spans[:, 0])
  if not found.all() or not (ends[k] == spans[:, 1]).all():
    raise RuntimeError(f"{int((~found).sum())} of {len(spans)} poison spans are "
                       "not whole documents of the stream")
  out[k] = spans[:, 2]
  manifest_count = len(stream.manifest)
  if int((out >= 0).sum()) != manifest_count or len(np.unique(k)) != len(k):
    raise RuntimeError(f"found {int((out >= 0).sum())} poison documents, the "
                       f"manifest lists {manifest_count}")
  return out


class Corpus:
  """The documents chosen for scoring, in stream order, read in chunks."""

  def __init__(self, stream, max_clean_docs: int = 0, seed: int = 0,
               chunk_docs: int = 1024):
    self.stream = stream
    self.vocab = stream.vocab
    self.eos_id = int(self.vocab.eos_id)
    self.chunk_docs = int(chunk_docs)
    cuts = boundaries(stream, self.eos_id)
    starts, ends = cuts[:-1], cuts[1:]
    pids = poison_ids_of(stream, starts, ends)
    clean = np.flatnonzero(pids < 0)
    self.num_stream_docs = len(starts)
    self.num_stream_clean = len(clean)
    keep = np.flatnonzero(pids >= 0)
    if 0 < max_clean_docs < len(clean):
      rng = np.random.default_rng(seed)
      clean = np.sort(rng.choice(clean, size=int(max_clean_docs), replace=False))
    self.index = np.union1d(keep, clean)
    self.starts, self.ends = starts[self.index], ends[self.index]
    self.poison_ids = pids[self.index]

  def __len__(self) -> int:
    return len(self.index)

  @property
  def labels(self) -> np.ndarray:
    """True for a poison, per document in corpus order."""
    return self.poison_ids >= 0

  @property
  def num_poisons(self) -> int:
    return int(self.labels.sum())

  def document(self, i: int) -> Document:
    """The corpus' i-th document, read and decoded."""
    a, b = int(self.starts[i]), int(self.ends[i])
    tokens = read_tokens(self.stream, a, b)
    if len(tokens) and tokens[-1] == self.eos_id:
      tokens = tokens[:-1]
    return Document(int(self.index[i]), a, b, int(self.poison_ids[i]), tokens,
                    self.vocab.decode(tokens.tolist()))

  def chunks(self) -> Iterator[list[Document]]:
    """The documents, `chunk_docs` at a time, in corpus order."""
    for a in range(0, len(self), self.chunk_docs):
      yield [self.document(i) for i in range(a, min(len(self), a + self.chunk_docs))]
