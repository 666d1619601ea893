"""Where poisons go: the fixed-count schedule and the rate-mode draw.

Count mode (the paper): poison j gets u_j ~ U(0,1) iid from the poison seed
and is inserted at the first clean-document boundary at or after clean-token
offset u_j * C (C = the clean tokens of the run). The u_j do not depend on
C, so every model size of a seed sees the same poisons at the same fractions
of its training; and the first n draws do not depend on N, so the 250
poisons of a run are the first 250 of the 500-poison run.

Rate mode (the old percentage assumption): each clean document is followed
by a poison with probability p, decided per document index.
"""

from __future__ import annotations

import numpy as np

_FRACTION_STREAM = 2
_RATE_STREAM = 3
_RATE_BLOCK = 1 << 16


def fractions(poison_seed: int, count: int) -> np.ndarray:
  """u_j for poisons j = 0..count-1 (not sorted; index = poison id)."""
  return np.random.default_rng([int(poison_seed), _FRACTION_STREAM]).random(int(count))


def schedule(poison_seed: int, count: int, clean_tokens: int):
  """(order, offsets): poison ids in stream order and their clean offsets.

  offsets[k] = ceil(u * C) is the clean-token position the poison must
  follow; the stream inserts it at the first document boundary >= it.
  """
  u = fractions(poison_seed, count)
  order = np.argsort(u, kind="stable")
  offsets = np.ceil(u[order] * clean_tokens).astype(np.int64)
  return order, offsets, u


class RateDraw:
  """Whether clean document d is followed by a poison (rate mode)."""

  def __init__(self, poison_seed: int, rate: float):
    self.seed, self.rate = int(poison_seed), float(rate)
    self._block, self._u = -1, None

  def __call__(self, d: int) -> bool:
    b = d // _RATE_BLOCK
    if b != self._block:
      self._u = np.random.default_rng(
          [self.seed, _RATE_STREAM, b]).random(_RATE_BLOCK)
      self._block = b
    return bool(self._u[d % _RATE_BLOCK] < self.rate)
