"""Building the clean token store (store.py): a pool of workers, or parts.

Building runs a multiprocessing pool (spawn start method: safe after JAX
has started threads), one task per shard; `build_part` lets several
machines split one build (part h of n builds the planned shards i with
i % n == h) and `finalize` assembles index.json from the shards' entries.
`open_store` is how a run gets its store: read, or built or extended first
when allowed. store.py's docstring describes the layout and why it is built
this way.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import math
import multiprocessing
import time
import uuid
from concurrent import futures

import numpy as np
import sentencepiece as spm

from poisonjax import files
from poisonjax.data import sources, synthetic
from poisonjax.data.store import (BLOCK_DOCS, DOCS_PER_SHARD, INDEX,
                                  LOOKUP_THREADS, TokenStore, read_index,
                                  shard_name, store_path, store_spec,
                                  token_dtype)
from poisonjax.errors import UserError

_ENCODE_DOCS = 1024  # Documents per SentencePiece batch call.
_INDEX_EVERY_S = 30.0  # How often a long build saves its progress.

_WORKER: dict = {}


def _init_worker(config, model_proto: bytes, path: str, docs_per_shard: int,
                 block_docs: int, dtype: str) -> None:
  _WORKER.update(source=sources.get_source(config), path=files.as_path(path),
                 sp=spm.SentencePieceProcessor(model_proto=model_proto),
                 docs_per_shard=docs_per_shard, block_docs=block_docs,
                 dtype=np.dtype(dtype).newbyteorder("<"))


def _indexed_documents(source, start: int):
  """The training documents from index `start` on, reached in O(1); None
  for a source that can only be read in order (TFDS: a shuffle buffer)."""
  if isinstance(source, sources.SyntheticSource):
    return synthetic.documents(source.seed, synthetic.TRAIN, start)
  if isinstance(source, sources.TextFilesSource):
    return _text_files_documents(source, start)
  return None


def _text_files_documents(source, start: int):
  """TextFilesSource.train_documents() from `start` (the same epochs and
  permutations; tests/test_store.py pins the equality)."""
  n = len(source.train)
  first_epoch, skip = divmod(start, n)
  for epoch in itertools.count(first_epoch):
    order = np.random.default_rng([source.seed, epoch]).permutation(n)
    for k in order[skip if epoch == first_epoch else 0:]:
      yield source.train[k]


def _train_documents(source, start: int):
  """The training documents from `start` on (in order: O(start) to reach)."""
  docs = _indexed_documents(source, start)
  if docs is None:
    docs = itertools.islice(source.train_documents(), start, None)
  return docs


def _write_atomic(path, chunks) -> str:
  """Writes byte chunks so that readers see all or nothing; returns sha256.

  Locally via a temporary file and a rename; on an object store the object
  appears whole when the upload closes (and stores have no cheap rename).
  """
  h = hashlib.sha256()
  local = files.is_local(path)
  tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp" if local else path
  with tmp.open("wb") as f:
    for chunk in chunks:
      h.update(chunk)
      f.write(chunk)
  if local:
    tmp.replace(path)
  return h.hexdigest()


def _encoded_batches(docs, sp, count: int, dtype, lengths: list):
  """Byte chunks of `count` documents' ids, EOS after each; fills lengths."""
  eos = sp.eos_id()
  while len(lengths) < count:
    batch = list(itertools.islice(docs, min(_ENCODE_DOCS, count - len(lengths))))
    if not batch:
      raise UserError("token store: the clean source ran out of documents; "
                      "add data")
    encoded = sp.EncodeAsIds(batch, num_threads=1)  # One core per worker.
    for ids in encoded:
      ids.append(eos)
      lengths.append(len(ids))
    yield np.fromiter(itertools.chain.from_iterable(encoded), dtype).tobytes()


def _build_shard(task: tuple[int, list | None]) -> dict:
  """Tokenizes documents [i*D, (i+1)*D) into shard i; returns its index entry.

  task = (i, its documents), or (i, None): the worker reads them itself.
  """
  w = _WORKER
  i, given = task
  D, name, lengths = w["docs_per_shard"], shard_name(i), []
  docs = iter(given) if given is not None else _indexed_documents(w["source"], i * D)
  tok_sha = _write_atomic(w["path"] / f"{name}.tokens",
                          _encoded_batches(docs, w["sp"], D, w["dtype"], lengths))
  ends = np.cumsum(lengths, dtype=np.int64)
  if ends[-1] >= 1 << 32:
    raise UserError(f"token store shard {i}: {ends[-1]} tokens do not fit its "
                    "uint32 offsets; build with a smaller --docs_per_shard")
  ends_sha = _write_atomic(w["path"] / f"{name}.ends", [ends.astype("<u4").tobytes()])
  block = w["block_docs"]
  block_ends = ends[block - 1::block].tolist()
  if D % block:  # The last block is partial: its end closes the shard.
    block_ends.append(int(ends[-1]))
  entry = {"name": name, "first_doc": i * D, "num_docs": D,
           "num_tokens": int(ends[-1]), "block_ends": block_ends,
           "sha256": {"tokens": tok_sha, "ends": ends_sha}}
  files.write_json(w["path"] / f"{name}.json", entry)  # Last: the shard is done.
  return entry


def _check_spec(path, index: dict, spec: dict) -> None:
  if json.loads(json.dumps(index["spec"], default=str)) != \
      json.loads(json.dumps(spec, default=str)):
    raise UserError(
        f"config.data.store={str(path)!r}: holds the store of another clean "
        f"source or vocabulary ({index['spec']} != {spec}); use another "
        "directory or config.data.store=auto")


def _num_tokens(index: dict) -> int:
  return sum(s["num_tokens"] for s in index["shards"])


def _save_index(path, index: dict) -> None:
  """Writes the index unless the one on disk already holds more shards."""
  old = read_index(path)
  if old is not None and len(old["shards"]) > len(index["shards"]):
    return
  files.write_json(path / INDEX, index)


def _tokens_per_doc(index: dict | None, sp, source) -> float:
  """Mean tokens per document: of the shards built, else of a sample."""
  docs = sum(s["num_docs"] for s in index["shards"]) if index else 0
  if docs:
    return sum(s["num_tokens"] for s in index["shards"]) / docs
  sample = list(itertools.islice(_train_documents(source, 0), 256))
  return max(1.0, sum(len(x) + 1 for x in sp.EncodeAsIds(sample)) / len(sample))


def _auto_docs_per_shard(num_docs: float) -> int:
  """A power of two giving ~16 shards, in [64, DOCS_PER_SHARD]: small stores
  still build in parallel, big ones get ~100 MB shards."""
  return int(min(DOCS_PER_SHARD, max(64, 2 ** math.floor(math.log2(
      max(num_docs / 16, 1))))))


def _new_index(spec: dict, vocab, docs_per_shard: int) -> dict:
  return {"spec": spec, "dtype": np.dtype(token_dtype(vocab.vocab_size)).name,
          "docs_per_shard": int(docs_per_shard), "block_docs": BLOCK_DOCS,
          "shards": []}


def _tasks(source, ids: list[int], docs_per_shard: int):
  """(shard, documents) tasks; the documents travel only for in-order sources,
  which this process then reads once, start to end (skipping the documents
  of shards not in `ids`: another part's)."""
  if _indexed_documents(source, 0) is not None:
    return ((i, None) for i in ids)
  return _in_order_tasks(source, ids, docs_per_shard)


def _in_order_tasks(source, ids: list[int], D: int):
  docs, at = _train_documents(source, ids[0] * D), ids[0] * D
  for i in ids:
    next(itertools.islice(docs, i * D - at, i * D - at), None)  # Skip.
    yield i, list(itertools.islice(docs, D))
    at = (i + 1) * D


def _run_shards(config, sp, path, index: dict, ids: list[int], workers: int):
  """Builds the shards `ids` (in a pool if workers > 1), yielding in order."""
  D = index["docs_per_shard"]
  args = (config, sp.serialized_model_proto(), str(path), D,
          index["block_docs"], index["dtype"])
  tasks = _tasks(sources.get_source(config), ids, D)
  if workers <= 1:
    _init_worker(*args)
    yield from map(_build_shard, tasks)
    return
  ctx = multiprocessing.get_context("spawn")
  with ctx.Pool(workers, initializer=_init_worker, initargs=args) as pool:
    pending = collections.deque()  # A window: tasks may carry documents.
    for task in tasks:
      pending.append(pool.apply_async(_build_shard, (task,)))
      if len(pending) > workers:
        yield pending.popleft().get()
    while pending:
      yield pending.popleft().get()
    pool.close()  # Workers exit on their own (leaving the block kills them).
    pool.join()


def _start(config, vocab, min_tokens: int, path, docs_per_shard: int):
  """(path, index, tokens per document): the store's state before a build.

  A new index's docs_per_shard: the given one, else chosen from min_tokens
  (never from workers or parts, so the bytes do not depend on them).
  """
  path = files.as_path(path) if path is not None else store_path(config, vocab)
  spec, index = store_spec(config, vocab), read_index(path)
  per_doc = _tokens_per_doc(index, vocab.tokenizer, sources.get_source(config))
  if index is None:
    index = _new_index(spec, vocab, docs_per_shard
                       or _auto_docs_per_shard(min_tokens / per_doc))
  _check_spec(path, index, spec)
  return path, index, per_doc


def _plan(index: dict, min_tokens: int, per_doc: float) -> list[int]:
  """The next shards to build (2% spare: the tokens per document are a guess)."""
  first = len(index["shards"])
  more = (min_tokens - _num_tokens(index)) / per_doc / index["docs_per_shard"]
  return list(range(first, first + max(1, math.ceil(more * 1.02))))


def build(config, vocab, min_tokens: int, *, path=None, workers: int = 1,
          docs_per_shard: int = 0) -> TokenStore:
  """Extends (or creates) the store until it holds >= min_tokens clean tokens.

  docs_per_shard: fixed when the store is created (0: chosen from min_tokens).
  """
  path, index, per_doc = _start(config, vocab, min_tokens, path, docs_per_shard)
  source = sources.get_source(config)
  path.mkdir(parents=True, exist_ok=True)
  start = last_save = time.time()
  built = 0
  while _num_tokens(index) < min_tokens:
    ids = _plan(index, min_tokens, per_doc)
    for entry in _run_shards(config, vocab.tokenizer, path, index, ids, workers):
      index["shards"].append(entry)
      built += entry["num_tokens"]
      if time.time() - last_save > _INDEX_EVERY_S:
        last_save = time.time()
        _save_index(path, index)
        print(f"store: {len(index['shards'])} shards, {_num_tokens(index) / 1e6:.1f}M "
              f"tokens ({built / (time.time() - start) / 1e6:.2f}M tokens/s)",
              flush=True)
    per_doc = _tokens_per_doc(index, vocab.tokenizer, source)
  _save_index(path, index)
  if built:
    print(f"store: {path}: built {built:,} tokens in {time.time() - start:.1f}s "
          f"with {workers} worker(s)", flush=True)
  return TokenStore(path)


# ---- a build split across machines -------------------------------------


def _built_entries(path, ids: list[int]) -> dict:
  """{shard: its entry (shard-NNNNNN.json)} for the shards of `ids` built;
  read in parallel threads (on gs:// each is a round trip)."""
  def entry(i):
    p = path / f"{shard_name(i)}.json"
    return files.read_json(p) if p.exists() else None
  with futures.ThreadPoolExecutor(LOOKUP_THREADS) as pool:
    found = dict(zip(ids, pool.map(entry, ids)))
  return {i: e for i, e in found.items() if e is not None}


def build_part(config, vocab, min_tokens: int, part: int, parts: int, *,
               path=None, workers: int = 1,
               docs_per_shard: int = 0) -> TokenStore | None:
  """Builds this part's planned shards (i % parts == part), skipping those
  already built (a rerun resumes), then finalizes if every shard exists.

  Returns the store if this part finalized it (or it was complete), else None.
  """
  path, index, per_doc = _start(config, vocab, min_tokens, path, docs_per_shard)
  if _num_tokens(index) >= min_tokens:
    return TokenStore(path)
  path.mkdir(parents=True, exist_ok=True)
  plan = _plan(index, min_tokens, per_doc)
  mine = [i for i in plan if i % parts == part]
  done = _built_entries(path, mine)
  todo = [i for i in mine if i not in done]
  start, built = time.time(), 0
  if todo:
    for entry in _run_shards(config, vocab.tokenizer, path, index, todo, workers):
      built += entry["num_tokens"]
    print(f"store: part {part}/{parts}: built {len(todo)} of shards "
          f"{plan[0]}..{plan[-1]} ({built:,} tokens) in "
          f"{time.time() - start:.1f}s with {workers} worker(s)", flush=True)
  built_now = _built_entries(path, plan)
  missing = [i for i in plan if i not in built_now]
  if missing:
    print(f"store: part {part}/{parts}: done; {len(missing)} shards of other "
          "parts not built yet (the last part to finish writes index.json)",
          flush=True)
    return None
  return finalize(config, vocab, min_tokens, path=path, parts=parts,
                  docs_per_shard=docs_per_shard)


def finalize(config, vocab, min_tokens: int, *, path=None, parts: int = 0,
             docs_per_shard: int = 0) -> TokenStore:
  """Writes index.json from the planned shards' entries once all exist.

  Every finalizer writes the same bytes (the entries are pure functions of
  the shards), so two racing do no harm. parts: the split's part count,
  to name the parts whose shards are missing.
  """
  path, index, per_doc = _start(config, vocab, min_tokens, path, docs_per_shard)
  if _num_tokens(index) >= min_tokens:
    return TokenStore(path)
  plan = _plan(index, min_tokens, per_doc)
  entries = _built_entries(path, plan)
  missing = [i for i in plan if i not in entries]
  if missing:
    raise UserError(_missing_error(path, plan, missing, parts))
  D = index["docs_per_shard"]
  for i in plan:
    if (entries[i]["first_doc"], entries[i]["num_docs"]) != (i * D, D):
      raise UserError(
          f"token store {path}: {shard_name(i)} holds {entries[i]['num_docs']} "
          f"documents per shard, the plan {D}; build every part and finalize "
          "with the same --docs_per_shard and --tokens")
  index["shards"] += [entries[i] for i in plan]
  _save_index(path, index)
  if _num_tokens(index) < min_tokens:
    raise UserError(
        f"token store {path}: its {len(index['shards'])} shards hold "
        f"{_num_tokens(index):,} tokens, fewer than --tokens={int(min_tokens)} "
        "(documents were shorter than estimated); run every part again with "
        "the same flags: they build the next shards")
  print(f"store: {path}: index.json written: {len(index['shards'])} shards, "
        f"{_num_tokens(index):,} tokens", flush=True)
  return TokenStore(path)


def _missing_error(path, plan: list[int], missing: list[int], parts: int) -> str:
  shown = ", ".join(str(i) for i in missing[:8]) + (" ..." if len(missing) > 8 else "")
  if parts:
    which = sorted({i % parts for i in missing})
    owners = (f"; they belong to part(s) {', '.join(f'{h}/{parts}' for h in which)}"
              f": run `--part=H/{parts}` for those, then finalize again")
  else:
    owners = "; run the parts that build them, then finalize again"
  return (f"token store {path}: {len(missing)} of the {len(plan)} planned shards "
          f"(shards {plan[0]}..{plan[-1]}) are not built: {shown}{owners}")


def open_store(config, vocab, min_tokens: int, may_build: bool) -> TokenStore:
  """The configured store, built or extended to min_tokens if allowed."""
  path = store_path(config, vocab)
  index = read_index(path)
  if index is not None:
    _check_spec(path, index, store_spec(config, vocab))
    if _num_tokens(index) >= min_tokens:
      return TokenStore(path)
  if not may_build:
    have = 0 if index is None else _num_tokens(index)
    raise UserError(
        f"config.data.store={config.data.store!r}: the store at {path} holds "
        f"{have:,} clean tokens, the run needs {int(min_tokens):,}; build it "
        "first: `poisonjax data build-store --config=... "
        f"--tokens={int(min_tokens)}`")
  return build(config, vocab, min_tokens, path=path)
