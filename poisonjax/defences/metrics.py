"""Recall, false-positive rate, ROC and PR curves of a filter's scores.

Scores are higher = more suspicious; a document is flagged at threshold t
iff score >= t. labels are True for poisons. Everything is counted exactly
from the two arrays (numpy only): recall = flagged poisons / poisons, FPR =
flagged clean / clean. The curves step through every distinct score as a
threshold, so tied scores move together (the ROC's diagonal segments) and
the trapezoid AUC equals P(poison score > clean score) + P(equal) / 2.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
  s = np.asarray(scores, np.float64).ravel()
  y = np.asarray(labels, bool).ravel()
  if s.shape != y.shape:
    raise ValueError(f"{s.size} scores for {y.size} labels")
  if np.isnan(s).any():
    raise ValueError(f"{int(np.isnan(s).sum())} scores are NaN")
  return s, y


def flagged(scores, threshold: float) -> np.ndarray:
  """The flagged set: True where score >= threshold."""
  return np.asarray(scores, np.float64) >= threshold


def rates(scores, labels, threshold: float) -> tuple[float, float]:
  """(recall on poisons, false-positive rate on clean) at `threshold`."""
  s, y = _arrays(scores, labels)
  f = s >= threshold
  recall = f[y].sum() / y.sum() if y.any() else float("nan")
  fpr = f[~y].sum() / (~y).sum() if (~y).any() else float("nan")
  return float(recall), float(fpr)


def _cumulative(scores, labels):
  """(thresholds descending, poisons flagged, clean flagged) at each distinct
  score, starting with +inf (nothing flagged)."""
  s, y = _arrays(scores, labels)
  order = np.argsort(-s, kind="stable")
  s, y = s[order], y[order]
  last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # Last of each value.
  tp = np.cumsum(y)[last]
  fp = np.cumsum(~y)[last]
  return (np.r_[np.inf, s[last]], np.r_[0, tp], np.r_[0, fp])


def roc_curve(scores, labels):
  """(fpr, tpr, thresholds): the rates at every distinct threshold."""
  thresholds, tp, fp = _cumulative(scores, labels)
  pos, neg = tp[-1], fp[-1]
  if pos == 0 or neg == 0:
    raise ValueError("a ROC curve needs both poisons and clean documents")
  return fp / neg, tp / pos, thresholds


def roc_auc(scores, labels) -> float:
  """Area under the ROC curve (trapezoids)."""
  fpr, tpr, _ = roc_curve(scores, labels)
  return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def pr_curve(scores, labels):
  """(precision, recall, thresholds) at every distinct score."""
  thresholds, tp, fp = _cumulative(scores, labels)
  if tp[-1] == 0:
    raise ValueError("a PR curve needs poisons")
  tp, fp, thresholds = tp[1:], fp[1:], thresholds[1:]
  return tp / (tp + fp), tp / tp[-1], thresholds


def average_precision(scores, labels) -> float:
  """Sum over thresholds of (recall gained) x precision there."""
  precision, recall, _ = pr_curve(scores, labels)
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
  """A threshold and what it flags."""

  threshold: float  # +inf: no threshold keeps FPR low enough; nothing flagged.
  recall: float
  fpr: float
  poisons_flagged: int
  clean_flagged: int


def threshold_at_fpr(scores, labels, max_fpr: float) -> OperatingPoint:
  """The best recall with FPR <= max_fpr, at the highest threshold giving it
  (so the fewest clean documents flagged for that recall)."""
  thresholds, tp, fp = _cumulative(scores, labels)
  pos, neg = tp[-1], fp[-1]
  if pos == 0 or neg == 0:
    raise ValueError("an operating point needs both poisons and clean documents")
  within = np.flatnonzero(fp / neg <= max_fpr)  # Index 0 (+inf) always is.
  k = int(within[np.argmax(tp[within])])  # The first (highest) of the best.
  return OperatingPoint(float(thresholds[k]), float(tp[k] / pos),
                        float(fp[k] / neg), int(tp[k]), int(fp[k]))
