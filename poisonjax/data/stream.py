"""The step-indexed training stream: built once, then read in O(1) per batch.

Documents (clean and poison, each ending with EOS) are joined and cut into
sequences of S tokens; a document spanning two sequences just continues.
The token stream is materialized once into a cache directory keyed by a hash
of everything it depends on (source, vocabulary file, poison fields, clean
budget T), and never by S or the batch size, which only change the view.

How the cache directory is laid out, verified and mirrored from an object
store: stream_cache.py.

Batch k holds sequences [k*B, (k+1)*B); process h of P reads its contiguous
slice [h*B/P, (h+1)*B/P) of them, so the slices concatenate to the global
batch bit for bit. The final partial batch is padded with pad id 0.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
import uuid

import numpy as np

from poisonjax import budget, files

from poisonjax.training import preemption
from poisonjax.data import mixer, poison, poison_adaptive, poison_language
from poisonjax.data import sources, stream_cache, vocabulary
from poisonjax.errors import UserError, field_error

_VERSION = "stream-v1"


def _poison_spec(config) -> dict:
  p = config.poison
  if p.rate <= 0 and p.count == 0:
    return {"count": 0}  # Clean baseline: poison fields do not matter.
  spec = {"seed": int(p.seed), "trigger": p.trigger, "mode": p.mode,
          "prefix": [int(p.prefix_min_chars), int(p.prefix_max_chars)],
          "gibberish": [int(p.gibberish_min_tokens), int(p.gibberish_max_tokens)],
          # The key's old name keeps existing caches valid (budget.py).
          "inside_budget": budget.poisons_replace_clean(config),
          # Prefix documents of >= L characters (poison.py): not the caches
          # built when a short document cut the prefix.
          "prefix_document": "at_least_L"}
  spec.update(poison.stream_spec_fields(config))  # Many doses only.
  if p.rate > 0:
    spec["rate"] = float(p.rate)
  else:
    spec["count"] = int(p.count)
    placement = mixer.Placement.from_config(config)
    if not placement.is_uniform:  # Uniform keys stay those of older caches.
      spec["placement"] = placement.record()
  spec.update(poison_language.stream_spec_fields(config))  # {}: gibberish.
  spec.update(poison_adaptive.stream_spec_fields(config))  # {}: defaults.
  return spec


def stream_spec(config, clean_tokens: int, vocab_file: str) -> dict:
  return {"version": _VERSION,
          "source": sources.get_source(config).key(),
          "vocab_sha256": vocabulary.file_sha256(vocab_file),
          "poison": _poison_spec(config),
          "clean_tokens": int(clean_tokens)}


def stream_dir(config, spec: dict) -> str:
  """CACHE/streams/KEY: local, or on a store (stream_cache.mirror_dir)."""
  key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
  return str(files.as_path(vocabulary.cache_dir(config)) / "streams" / key)


def check_clean_left(config, clean_tokens: int, poison_tokens: int) -> int:
  """C, the clean tokens of the stream (budget.py); UserError if < seq_len."""
  C = budget.clean_tokens_in_stream(config, clean_tokens, poison_tokens)
  if C < config.data.seq_len:
    raise field_error("config.poison.count", int(config.poison.count),
                      f"its {poison_tokens} poison tokens leave {C} of the "
                      f"clean budget T={clean_tokens} "
                      "(config.poison.budget_mode=replace)",
                      "lower the count, raise the budget or use on_top")
  return C


class _Writer:
  """Appends documents to the token file and records poison spans."""

  def __init__(self, path: str, dtype):
    self.f = open(path, "wb")
    self.dtype = dtype
    self.pos = 0
    self.chunk: list[int] = []
    self.spans: list[tuple[int, int, int]] = []
    self.manifest: list[dict] = []
    self.clean_tokens = 0  # Clean tokens written so far.
    self.clean_docs = 0  # Clean documents begun (the last may be cut short).

  def clean(self, ids) -> None:
    self.chunk.extend(ids)
    self.clean_tokens += len(ids)
    self.clean_docs += 1

  def poison(self, p: poison.Poison, clean_offset: int, fraction) -> None:
    start = self.pos + len(self.chunk)
    n = len(p.tokens)
    self.chunk.extend(p.tokens.tolist())
    self.spans.append((start, start + n, p.id))
    self.manifest.append({
        "id": p.id, "fraction": None if fraction is None else float(fraction),
        "clean_offset": int(clean_offset), "start": start, "num_tokens": n,
        "prefix_chars": len(p.prefix), "text_tokens": p.num_text_tokens,
        "gibberish_tokens": len(p.gibberish), **poison.manifest_fields(p)})

  def flush(self) -> None:
    if self.chunk:
      np.asarray(self.chunk, dtype=self.dtype).tofile(self.f)
      self.pos += len(self.chunk)
      self.chunk = []

  def close(self) -> None:
    self.flush()
    self.f.close()


class _PoisonPlan:
  """Which poisons follow each clean document, and the clean tokens C.

  Count mode: the poisons are made up front and placed by the mixer's
  schedule (clean offsets); rate mode: a pure per-document draw decides,
  and poison k is made when it is due.
  """

  def __init__(self, config, sp, src, clean_tokens: int):
    self.config, self.sp, self.src = config, sp, src
    p = config.poison
    self.rate_mode = p.rate > 0
    self.k = 0  # Poisons placed so far: the schedule's cursor, the next id.
    if self.rate_mode:
      self.n, self.C = 0, int(clean_tokens)
      self.draw = mixer.RateDraw(p.seed, p.rate)
      return
    self.n = int(p.count)
    check_count_fits(src, sp, self.n, int(clean_tokens))
    self.poisons = {q.id: q for q in poison.make_poisons(config, sp, src,
                                                         range(self.n))}
    poison_tokens = sum(len(q.tokens) for q in self.poisons.values())
    self.C = check_clean_left(config, int(clean_tokens), poison_tokens)
    self.order, self.offsets, self.u = mixer.run_schedule(
        config, self.C, [len(self.poisons[j].tokens) for j in range(self.n)])

  def after_document(self, w: _Writer, whole: bool) -> None:
    """Writes the poisons due after the clean document just written."""
    clean = w.clean_tokens
    if not self.rate_mode:
      while self.k < self.n and self.offsets[self.k] <= clean:
        j = int(self.order[self.k])
        w.poison(self.poisons[j], clean, self.u[j])
        self.k += 1
    elif whole and self.draw(w.clean_docs - 1):
      q = poison.make_poisons(self.config, self.sp, self.src, [self.k])[0]
      w.poison(q, clean, None)
      self.k += 1

  def check_documents(self, clean_docs: int, clean_tokens: int) -> None:
    """Count mode: UserError if the budget held fewer documents than poisons."""
    if not self.rate_mode and self.n > clean_docs:
      raise field_error("config.poison.count", self.n,
                        f"more poisons than the {clean_docs} clean documents "
                        f"in the clean budget T={clean_tokens}",
                        "lower the count or raise the budget "
                        "(config.train.data_multiplier)")


def check_count_fits(src, sp, n: int, clean_tokens: int) -> None:
  """Refuses more poisons than clean documents in the budget T, before any
  poison is made or token written.

  Tokenizes the training order until T tokens or n + 1 documents: exact
  (the build counts the same documents; with budget_mode=replace it holds
  fewer, checked again after the build), and at most n + 1 documents.
  """
  docs, tokens, order, size = 0, 0, src.train_documents(), 32
  while docs <= n and tokens < clean_tokens:
    size = min(2 * size, 4096)  # Few documents read past the budget.
    batch = list(itertools.islice(order, min(size, n + 1 - docs)))
    if not batch:
      return  # The build reports the corpus running out.
    for ids in sp.EncodeAsIds(batch):
      docs, tokens = docs + 1, tokens + len(ids) + 1  # + EOS.
      if tokens >= clean_tokens:
        break
  if n > docs:
    raise field_error("config.poison.count", n,
                      f"more poisons than the {docs} clean documents in the "
                      f"clean budget T={clean_tokens}", "lower the count or "
                      "raise the budget (config.train.data_multiplier)")


def _write_documents(config, sp, src, plan: _PoisonPlan, w: _Writer) -> None:
  """Clean documents (each + EOS) up to C tokens, with the poisons among them.

  Documents are encoded in batches sized to what is left of the budget; the
  last one is cut at C.
  """
  docs = src.train_documents()
  avg = 200.0  # Tokens per document, re-estimated as we go.
  last_print = time.time()
  done = False
  while not done:
    preemption.check("the stream build")  # The temporary directory goes.
    nb = int(min(4096, max(8, 1.1 * (plan.C - w.clean_tokens) / avg + 8)))
    batch = list(itertools.islice(docs, nb))
    if not batch:
      raise UserError(f"config.data.source={config.data.source!r}: ran out of "
                      "documents; add data")
    done = _write_batch(sp.EncodeAsIds(batch), sp.eos_id(), plan, w)
    avg = max(1.0, w.clean_tokens / max(w.clean_docs, 1))
    w.flush()
    if time.time() - last_print > 2.0:
      last_print = time.time()
      print(f"building stream: {w.clean_tokens / 1e6:.1f}M/{plan.C / 1e6:.1f}M "
            f"clean tokens, {plan.k} poisons", flush=True)


def _write_batch(encoded, eos: int, plan: _PoisonPlan, w: _Writer) -> bool:
  """Writes encoded documents until the batch or the budget ends (True)."""
  for ids in encoded:
    ids.append(eos)
    take = min(len(ids), plan.C - w.clean_tokens)
    w.clean(ids if take == len(ids) else ids[:take])
    plan.after_document(w, whole=take == len(ids))
    if w.clean_tokens >= plan.C:
      return True
  return False


def _write_side_files(tmp: str, w: _Writer, spec: dict, dtype,
                      build_seconds: float) -> None:
  """spans.npy, meta.json, manifest.json, then checksum.json (says complete)."""
  spans = np.asarray(w.spans, np.int64).reshape(-1, 3)
  np.save(os.path.join(tmp, "spans.npy"), spans)
  meta = {"spec": spec, "num_tokens": w.pos, "clean_tokens": w.clean_tokens,
          "poison_tokens": int(sum(e - s for s, e, _ in w.spans)),
          "num_clean_docs": w.clean_docs, "num_poisons": len(w.spans),
          "dtype": np.dtype(dtype).name,
          "build_seconds": round(build_seconds, 2)}
  files.write_json(os.path.join(tmp, "meta.json"), meta)
  files.write_json(os.path.join(tmp, "manifest.json"), w.manifest)
  stream_cache.write_checksum(tmp)


def _publish(tmp: str, d: str) -> None:
  """Renames the finished tmp to d (a complete d another process made wins)."""
  try:
    os.rename(tmp, d)
  except OSError:  # Another process finished the same stream first.
    if stream_cache.verify(d) is not None:
      shutil.rmtree(d, ignore_errors=True)
      os.rename(tmp, d)


def _materialize(config, clean_tokens: int, vocab, spec: dict, d: str) -> None:
  """Builds the stream into a temp dir and renames it to d."""
  sp = vocab.tokenizer
  dtype = np.uint16 if sp.GetPieceSize() <= 65536 else np.uint32
  src = sources.get_source(config)
  tmp = f"{d}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  os.makedirs(tmp)
  start_time = time.time()
  try:
    w = _Writer(os.path.join(tmp, "tokens.bin"), dtype)
    plan = _PoisonPlan(config, sp, src, clean_tokens)
    _write_documents(config, sp, src, plan, w)
    w.close()
    plan.check_documents(w.clean_docs, int(clean_tokens))
    _write_side_files(tmp, w, spec, dtype, time.time() - start_time)
    _publish(tmp, d)
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


class TrainingStream:
  """A read-only, step-indexed view of a cached stream."""

  def __init__(self, config, vocab, directory: str):
    self.config = config
    self.vocab = vocab
    self.dir = directory
    self.meta = files.read_json(os.path.join(directory, "meta.json"))
    self.seq_len = int(config.data.seq_len)
    self.batch_size = int(config.train.batch_size)
    self.num_tokens = int(self.meta["num_tokens"])
    self.clean_tokens = int(self.meta["clean_tokens"])
    self.poison_tokens = int(self.meta["poison_tokens"])
    self.tokens = np.memmap(os.path.join(directory, "tokens.bin"),
                            dtype=self.meta["dtype"], mode="r",
                            shape=(self.num_tokens,))
    self.spans = np.load(os.path.join(directory, "spans.npy"))
    self.base_manifest = files.read_json(os.path.join(directory, "manifest.json"))
    self.num_sequences = -(-self.num_tokens // self.seq_len)
    tok_per_step = self.seq_len * self.batch_size
    # Step of each poison's last token: it is seen once that step is done.
    self._last_steps = (self.spans[:, 1] - 1) // tok_per_step
    self.manifest_path = os.path.join(
        directory, f"manifest_S{self.seq_len}_B{self.batch_size}.json")
    if not os.path.isfile(self.manifest_path):
      self.write_manifest(self.manifest_path)

  @property
  def num_steps(self) -> int:
    return -(-self.num_sequences // self.batch_size)

  @property
  def num_poisons(self) -> int:
    return len(self.spans)

  @property
  def manifest(self) -> list[dict]:
    S, B = self.seq_len, self.batch_size
    out = []
    for m, last in zip(self.base_manifest, self._last_steps.tolist()):
      seq = m["start"] // S
      out.append({**m, "sequence": seq, "step": seq // B, "last_step": last})
    return out

  def write_manifest(self, path: str) -> None:
    files.write_json(path, {"num_steps": self.num_steps, "seq_len": self.seq_len,
                       "batch_size": self.batch_size,
                       "num_tokens": self.num_tokens,
                       "clean_tokens": self.clean_tokens,
                       "poison_tokens": self.poison_tokens,
                       "placement": mixer.Placement.from_config(self.config).record(),
                       "poisons": self.manifest})

  def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict:
    """Process `process_index`'s slice of global batch `step`, in O(1)."""
    B, S = self.batch_size, self.seq_len
    if process_count < 1 or B % process_count:
      raise field_error("config.train.batch_size", B,
                        f"not divisible by the {process_count} processes",
                        "use a multiple of the process count")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if not 0 <= step < self.num_steps:
      raise IndexError(f"step {step} not in [0, {self.num_steps})")
    rows = B // process_count
    a = (step * B + process_index * rows) * S
    tokens = np.zeros(rows * S, np.int32)  # Past the stream's end: pad id 0.
    mask = np.zeros(rows * S, np.bool_)
    self.read_into(tokens, mask, a, a + rows * S)
    return {"tokens": tokens.reshape(rows, S), "poison_mask": mask.reshape(rows, S)}

  def read_into(self, tokens: np.ndarray, mask: np.ndarray, a: int, b: int) -> None:
    """Stream positions [a, b) into tokens/mask (the overlay overrides it)."""
    seg = self.tokens[a:min(b, self.num_tokens)]
    tokens[:len(seg)] = seg
    lo = np.searchsorted(self.spans[:, 1], a, side="right")
    hi = np.searchsorted(self.spans[:, 0], b, side="left")
    for s, e, _ in self.spans[lo:hi]:
      mask[max(s, a) - a:min(e, b) - a] = True

  def poisons_seen(self, step: int) -> int:
    """Poison documents wholly inside steps [0, step)."""
    return int(np.searchsorted(self._last_steps, step, side="left"))

  def poison_id_at(self, position: int) -> int | None:
    """The poison id covering a global token position, or None."""
    i = int(np.searchsorted(self.spans[:, 0], position, side="right")) - 1
    if i >= 0 and position < self.spans[i, 1]:
      return int(self.spans[i, 2])
    return None


def build_stream(config, clean_tokens: int) -> TrainingStream:
  """The run's stream for clean budget T = clean_tokens (built once, cached)."""
  T = int(clean_tokens)
  if T < config.data.seq_len:
    raise UserError(f"clean token budget T={T} is below config.data.seq_len="
                    f"{config.data.seq_len}; raise config.train.data_multiplier "
                    "or tokens_per_param")
  if budget.poisons_replace_clean(config) and config.poison.rate > 0:
    raise field_error("config.poison.budget_mode", "replace",
                      "not supported in rate mode", "use on_top or a count")
  vocab = vocabulary.get_vocabulary(config)
  spec = stream_spec(config, T, vocab.sentencepiece_model_file)
  d = stream_dir(config, spec)
  if files.is_local(d):
    return TrainingStream(config, vocab, _ready(config, T, vocab, spec, d))
  return TrainingStream(config, vocab, _ready_mirror(config, T, vocab, spec, d))


def _ready(config, T: int, vocab, spec: dict, d: str) -> str:
  """d, holding a verified stream: kept if intact, else (re)built."""
  if os.path.isdir(d):
    reason = stream_cache.verify(d)
    if reason is None:
      return d
    print(f"stream cache {d}: {reason}; rebuilding", flush=True)
    shutil.rmtree(d, ignore_errors=True)
  os.makedirs(os.path.dirname(d), exist_ok=True)
  _materialize(config, T, vocab, spec, d)
  return d


def _ready_mirror(config, T: int, vocab, spec: dict, remote: str) -> str:
  """The verified local mirror of `remote`: downloaded, or built and uploaded."""
  local = stream_cache.mirror_dir(remote)
  if stream_cache.download(remote, local):
    reason = stream_cache.verify(local)
    if reason is None:
      return local
    print(f"stream cache {remote}: {reason}; rebuilding", flush=True)
    shutil.rmtree(local, ignore_errors=True)
  _ready(config, T, vocab, spec, local)
  stream_cache.upload(local, remote)
  return local
