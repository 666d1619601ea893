"""Filter, then train: the run's stream without the documents a filter flags.

With config.data.drop_scores set, the run's stream is its unfiltered stream
(same config, drop_scores='') with every document flagged by the filter
removed: flagged = score >= data.drop_threshold in column data.drop_filter
of drop_scores, a scores.csv written by `poisonjax defend score` over that
unfiltered stream. The rest is kept whole and in order, so the filtered
stream is exactly the unflagged documents: nothing flagged survives,
nothing unflagged is lost. To make sure of that, scores.csv must score
every document of the stream (scored without sampling, --max_clean_docs=0)
and its (start, end, poison id) rows must equal this stream's document
split (data/documents.py); anything else is refused in one line.
The threshold applies to scores.csv's numbers as written (6 significant
digits): take it from them (poisonjax/defences/train_experiment.py does, with
defences.metrics.threshold_at_fpr), not from filters.csv's rounded
column, or a poison scored at the threshold may round below it and stay.

The result is an ordinary cached stream (tokens.bin, spans.npy, manifest,
meta, checksum; stream.py's format) under CACHE/streams/filtered-KEY, KEY a
hash of the unfiltered stream's key and the digest of the dropped
documents' positions: the same drop set gives the same directory. Its
spans are the surviving poisons only, so poisons_seen counts survivors;
meta.json and the run's manifest.json record the filter (file, column,
threshold), the surviving and dropped poison ids, and the dropped clean
documents and tokens.

The budget: dropped tokens are NOT replaced, so a filtered run trains on
T minus what was dropped (its step count and learning-rate schedule follow
from its own, shorter stream). Topping up would add documents the filter
never scored, and the stream would no longer be exactly the scored
stream's unflagged documents; the shortfall is recorded instead (at a
threshold of <=1% false positives it is <=1% of the clean tokens, plus the
poisons caught).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import uuid

import numpy as np

from poisonjax import files
from poisonjax.data import documents
from poisonjax.data import stream as stream_lib
from poisonjax.data import stream_cache
from poisonjax.errors import UserError, field_error

_VERSION = "filtered-v1"
_COPY_TOKENS = 1 << 22  # Tokens copied per read.


def is_filtered(config) -> bool:
  return bool(config.data.get("drop_scores", ""))


def check_config(c) -> None:
  """config.data.drop_* (one line per bad field)."""
  d = c.data
  if d.get("drop_filter", "") and not d.get("drop_scores", ""):
    raise field_error("config.data.drop_filter", d.drop_filter,
                      "set without config.data.drop_scores",
                      "give the scores.csv of `poisonjax defend score`")
  if not is_filtered(c):
    return
  if not d.get("drop_filter", ""):
    raise field_error("config.data.drop_filter", "", "no score column named",
                      "use a filter of the scores.csv, e.g. entropy")
  if c.poison.rate > 0:
    raise field_error("config.data.drop_scores", d.drop_scores,
                      "not supported in rate mode", "use config.poison.count")


def unfiltered_config(config):
  """The same run without the filter (the stream that was scored)."""
  base = config.copy_and_resolve_references()
  base.data.drop_scores, base.data.drop_filter = "", ""
  base.data.drop_threshold = 0.0
  return base


def read_scores(path: str, column: str) -> dict[str, np.ndarray]:
  """scores.csv's index/start/end/poison_id and `column` as arrays."""
  if not files.as_path(path).is_file():
    raise field_error("config.data.drop_scores", path, "no such file",
                      "give the scores.csv of `poisonjax defend score`")
  rows = list(csv.DictReader(files.as_path(path).read_text().splitlines()))
  names = list(rows[0]) if rows else []
  if column not in names[4:]:
    raise field_error("config.data.drop_filter", column,
                      f"not a column of {path}",
                      f"use one of {', '.join(names[4:]) or '(none: empty file)'}")
  out = {k: np.array([int(r[k]) for r in rows], np.int64)
         for k in ("index", "start", "end", "poison_id")}
  out["score"] = np.array([float(r[column]) for r in rows], np.float64)
  return out


def drop_mask(config, base, starts, ends, pids) -> np.ndarray:
  """Which of the base stream's documents are flagged (checked against it)."""
  path = str(config.data.drop_scores)
  s = read_scores(path, str(config.data.drop_filter))
  order = np.argsort(s["index"], kind="stable")
  s = {k: v[order] for k, v in s.items()}
  if (len(s["index"]) != len(starts) or not np.array_equal(s["index"], np.arange(len(starts)))
      or not np.array_equal(s["start"], starts) or not np.array_equal(s["end"], ends)
      or not np.array_equal(s["poison_id"], pids)):
    raise field_error("config.data.drop_scores", path,
                      f"its {len(s['index'])} rows are not the {len(starts)} "
                      f"documents of this run's stream ({base.dir})",
                      "score this config's stream with every document "
                      "(`poisonjax defend score --max_clean_docs=0`)")
  return s["score"] >= float(config.data.drop_threshold)


def filtered_stream(config, base, clean_tokens: int):
  """The filtered stream (built once per drop set, then cached).

  base: the unfiltered stream, the run's stream under unfiltered_config
  (overlay.training_stream builds it, then calls this).
  """
  base_cfg = unfiltered_config(config)
  cuts = documents.boundaries(base, int(base.vocab.eos_id))
  starts, ends = cuts[:-1], cuts[1:]
  pids = documents.poison_ids_of(base, starts, ends)
  drop = drop_mask(config, base, starts, ends, pids)
  digest = hashlib.sha256(np.stack([starts[drop], ends[drop]]).tobytes()).hexdigest()
  spec = {"version": _VERSION, "drop": digest,
          "base": stream_lib.stream_spec(base_cfg, int(clean_tokens),
                                         base.vocab.sentencepiece_model_file)}
  key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
  d = str(files.as_path(stream_lib.stream_dir(base_cfg, spec)).parent / f"filtered-{key}")
  if not files.is_local(d):  # Built per host from the (shared) base stream.
    d = stream_cache.mirror_dir(d)
  reason = stream_cache.verify(d) if os.path.isdir(d) else "absent"
  if reason is not None:
    shutil.rmtree(d, ignore_errors=True)
    record = _record(config, base, starts, ends, pids, drop)
    _materialize(base, spec, record, starts, ends, pids, drop, d)
  return FilteredStream(config, base.vocab, d)


def _record(config, base, starts, ends, pids, drop) -> dict:
  """What the manifest says about the filter."""
  lengths = ends - starts
  clean = pids < 0
  path = str(config.data.drop_scores)
  return {
      "scores": path,
      "scores_sha256": hashlib.sha256(files.as_path(path).read_bytes()).hexdigest(),
      "filter": str(config.data.drop_filter),
      "threshold": float(config.data.drop_threshold),
      "tokens_replaced": False,
      "base_documents": int(len(starts)),
      "base_clean_documents": int(clean.sum()),
      "base_poisons": int((~clean).sum()),
      "base_tokens": int(base.num_tokens),
      "dropped_clean_documents": int((drop & clean).sum()),
      "dropped_clean_tokens": int(lengths[drop & clean].sum()),
      "dropped_poison_tokens": int(lengths[drop & ~clean].sum()),
      "dropped_poison_ids": sorted(int(i) for i in pids[drop & ~clean]),
      "surviving_poison_ids": sorted(int(i) for i in pids[~drop & ~clean]),
  }


def _materialize(base, spec, record, starts, ends, pids, drop, d) -> None:
  """Writes the kept documents in order, the survivors' spans and manifest."""
  keep = ~drop
  lengths = ends - starts
  new_starts = np.cumsum(lengths * keep) - lengths * keep
  if int((lengths * keep).sum()) < int(base.config.data.seq_len):
    raise field_error("config.data.drop_threshold", record["threshold"],
                      f"drops {int(drop.sum())} of {len(starts)} documents, "
                      "leaving less than one sequence", "raise the threshold")
  tmp = f"{d}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  os.makedirs(tmp)
  try:
    dtype = np.dtype(base.meta["dtype"])
    with open(os.path.join(tmp, "tokens.bin"), "wb") as f:
      for a, b in _runs(starts[keep], ends[keep]):
        for x in range(a, b, _COPY_TOKENS):
          documents.read_tokens(base, x, min(b, x + _COPY_TOKENS)).astype(dtype).tofile(f)
    by_id = {int(m["id"]): m for m in base.base_manifest}
    survivors = np.flatnonzero(keep & (pids >= 0))  # Stream order.
    spans = np.stack([new_starts[survivors], new_starts[survivors] + lengths[survivors],
                      pids[survivors]], axis=1).reshape(-1, 3).astype(np.int64)
    manifest = [{**by_id[int(pids[i])], "start": int(new_starts[i]),
                 "base_start": int(starts[i])} for i in survivors]
    clean_keep = keep & (pids < 0)
    meta = {"spec": spec, "num_tokens": int((lengths * keep).sum()),
            "clean_tokens": int(lengths[clean_keep].sum()),
            "poison_tokens": int(lengths[survivors].sum()),
            "num_clean_docs": int(clean_keep.sum()), "num_poisons": len(survivors),
            "dtype": dtype.name, "filter": record}
    np.save(os.path.join(tmp, "spans.npy"), spans)
    files.write_json(os.path.join(tmp, "meta.json"), meta)
    files.write_json(os.path.join(tmp, "manifest.json"), manifest)
    stream_cache.write_checksum(tmp)
    os.makedirs(os.path.dirname(d), exist_ok=True)
    try:
      os.rename(tmp, d)
    except OSError:  # Another process built the same drop set first.
      pass
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _runs(starts: np.ndarray, ends: np.ndarray):
  """Kept documents merged into maximal contiguous [a, b) ranges."""
  if not len(starts):
    return []
  breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
  firsts = np.concatenate([[0], breaks])
  lasts = np.concatenate([breaks - 1, [len(starts) - 1]])
  return [(int(starts[i]), int(ends[k])) for i, k in zip(firsts, lasts)]


class FilteredStream(stream_lib.TrainingStream):
  """A cached stream whose run manifest also records the filter."""

  @property
  def filter_record(self) -> dict:
    return self.meta["filter"]

  def write_manifest(self, path: str) -> None:
    super().write_manifest(path)
    files.write_json(path, {**files.read_json(path), "filter": self.filter_record})
