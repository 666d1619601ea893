"""The clean token store: one tokenized clean corpus for every run of a study.

The per-run cache (stream.py) tokenizes the whole stream again for every
poison count, poison seed and budget. The clean part never changes between
those runs, so it is tokenized once per (clean source, data seed,
vocabulary) into a store that every run reads; a run with clean budget C
reads only the first C tokens, and the poisons are laid over it at read
time (overlay.py).

Layout (local or gs://, everything through etils.epath):
  index.json              spec, dtype, and per shard: first document,
                          documents, tokens, the end of every BLOCK_DOCS-th
                          document, sha256 of both files
  shard-NNNNNN.tokens     raw little-endian uint16/uint32 ids of its documents,
                          each ending with EOS
  shard-NNNNNN.ends       uint32: each document's end, relative to the shard
Shard i holds documents [i*D, (i+1)*D) of the source's training order (D =
docs_per_shard), so a shard is a pure function of (source, vocabulary, i):
workers build shards independently, in any order, in any number, and the
bytes do not depend on how many there were. The store grows by appending
shards (a bigger budget later extends it; nothing is rebuilt).

Why raw arrays and not ArrayRecord: ids are fixed-width, so token t is at
byte t*itemsize of its shard and any range is one seek + read, through any
epath backend; array_record 0.8.6 opens files with a local-only reader
(gs:// fails, google/array_record#120). docs/data_at_scale.md has the
measured sizes of both.

This module is the on-disk format (the names above, the spec, the index)
and the reader; building, and opening a store that may need building
(open_store), are store_build.py's. Building runs a multiprocessing pool (spawn start method:
safe after JAX has started threads), one task per shard. Synthetic and text-file documents
are reachable by index, so each worker reads its own range; a TFDS split is
read in order (its shuffle buffer), once, by the parent, which sends each
shard's documents to a worker. Files appear by atomic rename and
the index is merged before it is written (the longer shard list wins: all
builders write the same bytes), so two builders racing waste work but never
corrupt the store.

A build may be split across machines (`build_part`: part h of n builds the
planned shards i with i % n == h). Each shard's index entry is also written
next to it (shard-NNNNNN.json), so index.json is assembled from those files
(`finalize`) by whichever part finds them all, or by `--finalize`; racing
finalizers write the same bytes. The plan (docs per shard, shard count) is a
pure function of (source, vocabulary, --tokens, index.json), so every part
computes the same one without talking to the others.
"""

from __future__ import annotations

import hashlib
import json
from concurrent import futures

import numpy as np

from poisonjax import files
from poisonjax.data import sources, vocabulary
from poisonjax.errors import UserError

FORMAT = "poisonjax-token-store-v1"
DOCS_PER_SHARD = 1 << 17  # ~56M tokens (112 MB) at C4's ~427 tokens/document.
BLOCK_DOCS = 4096  # The index keeps every BLOCK_DOCS-th document end.
LOOKUP_THREADS = 16  # Parallel small reads (poison boundaries, shard entries).
INDEX = "index.json"


def shard_name(i: int) -> str:
  """Shard i's files: NAME.tokens, NAME.ends and NAME.json (its index entry)."""
  return f"shard-{i:06d}"


def read_index(path) -> dict | None:
  """The store's index.json, or None where none is written yet."""
  p = files.as_path(path) / INDEX
  return files.read_json(p) if p.exists() else None


def store_spec(config, vocab) -> dict:
  """What the store's tokens depend on (and nothing a run may vary)."""
  return {"format": FORMAT, "source": sources.get_source(config).key(),
          "vocab_sha256": vocabulary.fingerprint(vocab)}


def store_path(config, vocab):
  """config.data.store as a path; 'auto': under cache_dir, keyed by the spec."""
  where = str(config.data.store)
  if where != "auto":
    return files.as_path(where)
  spec = json.dumps(store_spec(config, vocab), sort_keys=True, default=str)
  key = hashlib.sha256(spec.encode()).hexdigest()[:20]
  return files.as_path(vocabulary.cache_dir(config)) / "stores" / key


def token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= 65536 else np.uint32


def read_bytes(path, offset: int, nbytes: int) -> bytes:
  """nbytes of a file from offset: the one place the store reads data."""
  with path.open("rb") as f:
    f.seek(offset)
    data = f.read(nbytes)
  if len(data) != nbytes:
    raise UserError(f"token store file {path} is shorter than its index says "
                    f"(wanted bytes {offset}..{offset + nbytes}); rebuild the "
                    "store (`poisonjax data build-store`) into a new directory")
  return data


class TokenStore:
  """Read-only random access to a built store's clean tokens and boundaries."""

  def __init__(self, path):
    self.path = files.as_path(path)
    self.index = files.read_json(self.path / INDEX)
    self.dtype = np.dtype(self.index["dtype"]).newbyteorder("<")
    self.shards = self.index["shards"]
    counts = [s["num_tokens"] for s in self.shards]
    self.cum_tokens = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    docs = [s["num_docs"] for s in self.shards]
    self.cum_docs = np.concatenate([[0], np.cumsum(docs)]).astype(np.int64)

  @property
  def num_tokens(self) -> int:
    return int(self.cum_tokens[-1])

  @property
  def num_docs(self) -> int:
    return int(self.cum_docs[-1])

  def _file(self, shard: int, kind: str):
    return self.path / f"{self.shards[shard]['name']}.{kind}"

  def read(self, start: int, stop: int) -> np.ndarray:
    """Clean tokens [start, stop), reading only the shards that hold them."""
    if not 0 <= start <= stop <= self.num_tokens:
      raise IndexError(f"tokens [{start}, {stop}) outside the store's "
                       f"{self.num_tokens}")
    parts = []
    s = int(np.searchsorted(self.cum_tokens, start, side="right")) - 1
    while start < stop:
      lo, hi = self.cum_tokens[s], self.cum_tokens[s + 1]
      end = min(stop, int(hi))
      if end > start:
        raw = read_bytes(self._file(s, "tokens"), (start - lo) * self.dtype.itemsize,
                          (end - start) * self.dtype.itemsize)
        parts.append(np.frombuffer(raw, self.dtype))
      start, s = end, s + 1
    return np.concatenate(parts) if parts else np.zeros(0, self.dtype)

  def _first_end_at_or_after(self, position: int) -> tuple[int, int]:
    """(end, document index) of the first document ending at >= position."""
    s = int(np.searchsorted(self.cum_tokens[1:], position, side="left"))
    shard = self.shards[s]
    rel = position - int(self.cum_tokens[s])
    block = self.index["block_docs"]
    b = int(np.searchsorted(shard["block_ends"], rel, side="left"))
    first = b * block
    n = min(block, shard["num_docs"] - first)
    ends = np.frombuffer(read_bytes(self._file(s, "ends"), first * 4, n * 4), "<u4")
    k = int(np.searchsorted(ends, rel, side="left"))
    return int(self.cum_tokens[s]) + int(ends[k]), int(self.cum_docs[s]) + first + k

  def document_ends(self, positions) -> tuple[np.ndarray, np.ndarray]:
    """For each position p: the first document end >= p, and that document.

    One small block read per position (in parallel threads: on gs:// each
    is a round trip), so the cost is O(positions), not O(store).
    """
    positions = [int(p) for p in positions]
    if any(not 0 <= p <= self.num_tokens for p in positions):
      raise IndexError(f"a position is outside the store's {self.num_tokens} tokens")
    with futures.ThreadPoolExecutor(LOOKUP_THREADS) as pool:
      found = list(pool.map(self._first_end_at_or_after, positions))
    ends = np.array([e for e, _ in found], np.int64).reshape(-1)
    docs = np.array([d for _, d in found], np.int64).reshape(-1)
    return ends, docs
