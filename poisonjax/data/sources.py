"""Clean document sources: synthetic, local text files, TFDS.

Every source offers the same three views, so the rest of the data package
never asks which one it has:
  train_documents()          the training order, unbounded (finite corpora
                             repeat in epochs), a prefix-shared sequence for a
                             data seed, so runs of any budget share their start;
  heldout(n, min_chars)      evaluation excerpts, never trained on;
  pool_document(seed, j, min_chars)
                             the clean document poison j takes its prefix
                             from: drawn among the pool documents of at
                             least min_chars characters (the prefix length
                             L, so the prefix is really L characters long),
                             disjoint from the training documents and from
                             the evaluation excerpts.
For finite corpora the held-out documents are split by position: even ones
are evaluation excerpts, odd ones are the poison-prefix pool.

identity() says what a source's documents are, beyond the config: the
text files' names, sizes and sha256, a TFDS build's version and split
sizes; a resume compares it (poisonjax/training/fingerprints.py).

Seeds: config.data.seed orders the training documents (get_source's `seed`
overrides it, e.g. for the vocabulary's sample: vocabulary.vocab_seed);
the synthetic held-out excerpts come from heldout_seed(config). Neither the
pool nor a finite corpus's held-out split depends on the data seed.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import itertools
import json
import os

import numpy as np

from poisonjax import files
from poisonjax.data import synthetic
from poisonjax.errors import UserError, field_error

_POOL_CAP = 5000  # Poison-prefix pool documents read from a TFDS split.
_POOL_TRIES = 1000  # Synthetic pool draws before a prefix length is refused.


def heldout_seed(config) -> int:
  """The seed of the synthetic held-out excerpts (-1: the data seed)."""
  seed = int(config.eval.get("heldout_seed", -1))
  return int(config.data.seed) if seed < 0 else seed


def _too_long(min_chars: int, longest: int, where: str):
  return field_error("config.poison.prefix_max_chars", min_chars,
                     f"no {where} document has that many characters (the "
                     f"longest has {longest})", "lower it")


def _min_excerpt_chars(config) -> int:
  """Excerpts must be long enough to give the evaluator its prompt tokens."""
  return 4 * int(config.eval.prompt_tokens)


class SyntheticSource:
  """The embedded generator: splits are disjoint by their RNG stream."""

  name = "synthetic"

  def __init__(self, config, seed: int | None = None):
    self.seed = int(config.data.seed if seed is None else seed)
    self.heldout_seed = heldout_seed(config)

  def key(self) -> dict:
    return {"source": "synthetic", "seed": self.seed,
            "generator": "synthetic-v1"}

  def identity(self) -> dict:
    return {"source": "synthetic", "generator": "synthetic-v1"}

  def train_documents(self):
    return synthetic.documents(self.seed, synthetic.TRAIN)

  def heldout(self, n: int, min_chars: int = 0) -> list[str]:
    out = []
    for doc in synthetic.documents(self.heldout_seed, synthetic.HELDOUT):
      if len(out) >= n:
        break
      if len(doc) >= min_chars:
        out.append(doc)
    return out

  def pool_document(self, poison_seed: int, j: int, min_chars: int = 0) -> str:
    """Pool document j, or j's next draws (index j + t * 2**32) if too short."""
    if min_chars > synthetic.MAX_CHARS:
      raise _too_long(min_chars, synthetic.MAX_CHARS, "synthetic")
    for t in range(_POOL_TRIES):
      doc = synthetic.document(poison_seed, synthetic.POOL, int(j) + (t << 32))
      if len(doc) >= min_chars:
        return doc
    raise _too_long(min_chars, synthetic.MAX_CHARS, "synthetic")


class _FiniteHeldout:
  """Held-out documents split by position: even = eval, odd = poison pool."""

  def _heldout_docs(self) -> list[str]:
    raise NotImplementedError

  def heldout(self, n: int, min_chars: int = 0) -> list[str]:
    docs = [d for d in self._heldout_docs()[0::2] if len(d) >= min_chars]
    return docs[:n]

  def pool_document(self, poison_seed: int, j: int, min_chars: int = 0) -> str:
    """A uniform draw among the pool documents of >= min_chars characters."""
    pool = self._heldout_docs()[1::2]
    if not pool:
      raise UserError(self._pool_error)
    lengths = getattr(self, "_pool_lengths", None)
    if lengths is None or len(lengths) != len(pool):
      lengths = self._pool_lengths = np.array([len(d) for d in pool])
    fit = np.flatnonzero(lengths >= min_chars)
    if not len(fit):
      raise _too_long(min_chars, int(lengths.max()), "poison-pool")
    k = int(np.random.default_rng([int(poison_seed), 7, int(j)]).integers(len(fit)))
    return pool[int(fit[k])]


def _matches(pattern: str) -> list[str]:
  """The files a pattern matches, local or gs:// (`**` recurses)."""
  files.check_reachable(pattern.split("*")[0], "config.data.text_files.patterns")
  return [str(p) for p in files.glob(pattern)]


def _file_ids(paths) -> list[tuple]:
  """(path, size, mtime in ns) of each file: a changed file changes a key.

  Local files give os.stat's values (keys of existing caches stay valid);
  files on a store give its size and modification time.
  """
  out = []
  for p in paths:
    if files.is_local(p):
      st = os.stat(p)
      out.append((p, st.st_size, st.st_mtime_ns))
    else:
      st = files.as_path(p).stat()
      out.append((p, int(st.length), int(float(st.mtime) * 1e9)))
  return out


class TextFilesSource(_FiniteHeldout):
  """.txt / .jsonl files (optionally .gz), local or gs://, read once."""

  name = "text_files"

  def __init__(self, config, seed: int | None = None):
    tf_cfg = config.data.text_files
    self.seed = int(config.data.seed if seed is None else seed)
    self.split = tf_cfg.split
    self.field = tf_cfg.jsonl_field
    self.fraction = float(tf_cfg.heldout_fraction)
    if self.split not in ("file", "block", "line"):
      raise field_error("config.data.text_files.split", self.split,
                        "unknown split", "use file, block or line")
    if not 0.0 < self.fraction < 1.0:
      raise field_error("config.data.text_files.heldout_fraction", self.fraction,
                        "must be in (0, 1)", "use e.g. 0.05")
    patterns = [p.strip() for p in str(tf_cfg.patterns).split(",") if p.strip()]
    if not patterns:
      raise field_error("config.data.text_files.patterns", tf_cfg.patterns,
                        "no file patterns", "set comma-separated globs of "
                        ".txt/.jsonl(.gz) files")
    paths = set()
    for p in patterns:
      hits = _matches(p)
      if not hits:
        raise field_error("config.data.text_files.patterns", p,
                          "glob matches no file", "fix the pattern or the path")
      paths.update(hits)
    self.paths = sorted(paths)
    self._pool_error = (
        "config.data.text_files.heldout_fraction="
        f"{self.fraction}: too few held-out documents for the poison-prefix "
        "pool; raise it or add documents")
    train, heldout, skipped = [], [], []
    self.file_digests = {}  # path -> [bytes, sha256]: identity().
    self._jsonl_skipped: list = []  # (path, line) of records without text.
    for path in self.paths:
      data = files.as_path(path).read_bytes()
      self.file_digests[path] = [len(data), hashlib.sha256(data).hexdigest()]
      raw = gzip.decompress(data) if path.endswith(".gz") else data
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError:
        if not tf_cfg.skip_non_utf8:
          raise UserError(
              f"config.data.text_files.skip_non_utf8=False: {path} is not UTF-8; "
              "convert it, remove it, or set skip_non_utf8=True to skip it")
        skipped.append(path)
        continue
      for doc in self._split_docs(path, text):
        # Content-hashed assignment: adding files never moves a document
        # between train and held-out, and duplicates land together.
        h = int.from_bytes(hashlib.sha1(doc.encode()).digest()[:8], "big")
        (heldout if h / 2**64 < self.fraction else train).append(doc)
    if skipped:
      print(f"text_files: skipped {len(skipped)} non-UTF-8 file(s), e.g. "
            f"{skipped[0]} (config.data.text_files.skip_non_utf8=True)", flush=True)
    if self._jsonl_skipped:
      where, line = self._jsonl_skipped[0]
      print(f"text_files: skipped {len(self._jsonl_skipped)} .jsonl record(s) "
            f"without a non-blank string {self.field!r} field, e.g. {where} "
            f"line {line} (config.data.text_files.jsonl_field)", flush=True)
    if not train and not heldout:
      raise field_error("config.data.text_files.patterns", tf_cfg.patterns,
                        "the corpus is empty (no non-blank documents)",
                        "point it at files with text"
                        + (f" (or fix jsonl_field={self.field!r})"
                           if any(".jsonl" in p for p in self.paths) else ""))
    if not train:
      raise field_error("config.data.text_files.heldout_fraction", self.fraction,
                        "no training documents left", "lower it or add documents")
    self.train, self.held = train, heldout
    self.epoch_len = len(train)  # One pass, e.g. for the vocabulary sample.

  def _split_docs(self, path: str, text: str):
    if ".jsonl" in os.path.basename(path):
      for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
          continue
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          raise UserError(f"config.data.text_files.patterns: {path} has a line "
                          "that is not JSON; fix the file or exclude it") from None
        val = rec.get(self.field) if isinstance(rec, dict) else None
        if isinstance(val, str) and val.strip():
          yield val.strip()
        else:
          self._jsonl_skipped.append((path, number))
      return
    if self.split == "file":
      parts = [text]
    elif self.split == "block":
      parts = [b for b in text.replace("\r\n", "\n").split("\n\n")]
    else:
      parts = text.splitlines()
    for p in parts:
      if p.strip():
        yield p.strip()

  def key(self) -> dict:
    return {"source": "text_files", "seed": self.seed, "split": self.split,
            "field": self.field, "fraction": self.fraction,
            "files": _file_ids(self.paths)}

  def identity(self) -> dict:
    return {"source": "text_files", "files": self.file_digests}

  def _heldout_docs(self):
    return self.held

  def train_documents(self):
    for epoch in itertools.count():
      order = np.random.default_rng([self.seed, epoch]).permutation(len(self.train))
      for k in order:
        yield self.train[k]


class TfdsSource(_FiniteHeldout):
  """Any TFDS dataset's text field (c4/en:3.1.0 with a GCS data_dir on pods)."""

  name = "tfds"

  def __init__(self, config, seed: int | None = None):
    c = config.data.tfds
    if not c.name:
      raise field_error("config.data.tfds.name", c.name, "no dataset named",
                        "set it, e.g. --config.data.tfds.name=c4/en:3.1.0")
    self.cfg = c
    self.seed = int(config.data.seed if seed is None else seed)
    self._held = None
    self._pool_error = (f"config.data.tfds.heldout_split={c.heldout_split!r}: "
                        "too few documents for the poison-prefix pool; use a "
                        "larger split")

  def key(self) -> dict:
    c = self.cfg
    return {"source": "tfds", "name": c.name, "split": c.split,
            "heldout_split": c.heldout_split, "field": c.text_field,
            "data_dir": c.data_dir, "seed": self.seed}

  def identity(self) -> dict:
    """The prepared build: version, and per split its examples, bytes and
    shard lengths (a rebuilt or re-downloaded dataset changes them)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    c = self.cfg
    try:
      info = tfds.builder(c.name, data_dir=c.data_dir or None).info
    except Exception:  # pylint: disable=broad-except
      return {"source": "tfds", "name": c.name, "version": None}
    splits = {}
    for name in (c.split, c.heldout_split):
      base = name.split("[")[0]
      if base in info.splits:
        sp = info.splits[base]
        splits[name] = [int(sp.num_examples), int(sp.num_bytes),
                        [int(n) for n in sp.shard_lengths]]
    return {"source": "tfds", "name": c.name, "version": str(info.version),
            "splits": splits}

  def _iter(self, split: str, limit: int | None = None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    c = self.cfg
    try:
      ds = tfds.load(c.name, split=split, data_dir=c.data_dir or None,
                     shuffle_files=False, download=False)
    except Exception as e:  # tfds raises many types for a missing dataset.
      raise UserError(f"config.data.tfds.name={c.name!r} (split {split!r}, "
                      f"data_dir {c.data_dir!r}): cannot load: "
                      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                      "prepare the dataset or fix the name/split/data_dir") from None
    if c.text_field not in ds.element_spec:
      raise field_error("config.data.tfds.text_field", c.text_field,
                        f"not a feature of {c.name}",
                        f"use one of {sorted(ds.element_spec)}")
    ds = ds.map(lambda ex: ex[c.text_field])
    if self.seed and split == c.split:
      ds = ds.shuffle(10_000, seed=self.seed, reshuffle_each_iteration=False)
    if limit is not None:
      ds = ds.take(limit)
    for x in ds.as_numpy_iterator():
      text = x.decode("utf-8", errors="replace").strip()
      if text:
        yield text

  def _heldout_docs(self):
    if self._held is None:
      self._held = list(self._iter(self.cfg.heldout_split, limit=2 * _POOL_CAP))
    return self._held

  def train_documents(self):
    empty = True
    for _ in itertools.count():
      for doc in self._iter(self.cfg.split):
        empty = False
        yield doc
      if empty:
        raise field_error("config.data.tfds.split", self.cfg.split,
                          "the split is empty", "use a split with documents")


_TEXT_SOURCES: dict = {}


def get_source(config, seed: int | None = None):
  """The configured clean source, in the order of `seed` (default data.seed)."""
  kind = config.data.source
  seed = int(config.data.seed if seed is None else seed)
  if kind == "synthetic":
    return SyntheticSource(config, seed)
  if kind == "text_files":
    # Read the files once per process (they are re-read if they change);
    # another seed is the same documents in another order.
    t = config.data.text_files
    ids = sorted(_file_ids(p for pat in str(t.patterns).split(",")
                           if pat.strip() for p in _matches(pat.strip())))
    key = json.dumps([t.to_dict(), ids], sort_keys=True)
    if key not in _TEXT_SOURCES:
      _TEXT_SOURCES.clear()
      _TEXT_SOURCES[key] = TextFilesSource(config, seed)
    src = _TEXT_SOURCES[key]
    if src.seed != seed:
      src = copy.copy(src)
      src.seed = seed
    return src
  if kind == "tfds":
    return TfdsSource(config, seed)
  raise field_error("config.data.source", kind, "unknown source",
                    "use synthetic, text_files or tfds")


def heldout_documents(config, n: int) -> list[str]:
  """n evaluation excerpts: never trained on, never a poison prefix."""
  min_chars = _min_excerpt_chars(config)
  docs = get_source(config).heldout(n, min_chars)
  if len(docs) < n:
    raise field_error("config.eval.num_excerpts", n,
                      f"the held-out split has only {len(docs)} documents of "
                      f">= {min_chars} characters",
                      "lower it or add held-out data")
  return docs
