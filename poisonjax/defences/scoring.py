"""Runs filters over a corpus: one score per document per filter.

Document filters run in one pass over the corpus' chunks (each chunk read
and decoded once for all of them); corpus filters run on their own. The
result keeps each document's place in the stream and its poison id, so a
later step (filter-then-train) can drop exactly the flagged documents.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time

import numpy as np

from poisonjax import files
from poisonjax.defences import filters as filters_lib


@dataclasses.dataclass
class ScoreTable:
  """Per document (corpus order): stream place, truth and every score."""

  index: np.ndarray  # Document rank in the stream.
  start: np.ndarray
  end: np.ndarray
  poison_id: np.ndarray  # -1: clean.
  scores: dict[str, np.ndarray]
  descriptions: dict[str, str]

  @property
  def labels(self) -> np.ndarray:
    return self.poison_id >= 0


def score_corpus(corpus, filters: list, log=print) -> ScoreTable:
  """Every filter's scores over the corpus."""
  per_doc = [f for f in filters if isinstance(f, filters_lib.DocumentFilter)]
  parts = {f.name: [] for f in per_doc}
  t0, done = time.time(), 0
  if per_doc:
    for chunk in corpus.chunks():
      for f in per_doc:
        parts[f.name].append(f.score_chunk(chunk))
      done += len(chunk)
      log(f"defend: scored {done}/{len(corpus)} documents "
          f"({time.time() - t0:.0f} s)")
  scores = {name: np.concatenate(p) if p else np.zeros(0) for name, p in parts.items()}
  for f in filters:
    if f.name not in scores:
      scores[f.name] = np.asarray(f.score_corpus(corpus), np.float64)
      log(f"defend: {f.name} done ({time.time() - t0:.0f} s)")
  ordered = {f.name: scores[f.name] for f in filters}
  return ScoreTable(corpus.index, corpus.starts, corpus.ends, corpus.poison_ids,
                    ordered, {f.name: f.description for f in filters})


def write_scores_csv(table: ScoreTable, path: str) -> None:
  """One row per document: index, start, end, poison_id, then each score."""
  names = list(table.scores)
  lines = [["index", "start", "end", "poison_id", *names]]
  cols = [table.scores[n] for n in names]
  for k in range(len(table.index)):
    lines.append([int(table.index[k]), int(table.start[k]), int(table.end[k]),
                  int(table.poison_id[k]), *(f"{c[k]:.6g}" for c in cols)])
  _write_csv(path, lines)


def _write_csv(path: str, rows: list[list]) -> None:
  buf = io.StringIO()
  csv.writer(buf, lineterminator="\n").writerows(rows)
  files.write_text_atomic(path, buf.getvalue())
