"""Loop timing: steady-state speed, and when it is time to log/save.

`Chrono` (after big_vision's `utils.Chrono`) measures training speed the way
it is meant: from the end of the first (compiling) step, with the time spent
evaluating and checkpointing paused out, so steps/s, tokens/s and MFU are
the training loop's own. `itstime` is the one "every N steps, and at the
end" predicate the loop asks for logging and saving.
"""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Callable, Iterator


def itstime(step: int, every: int, last_step: int, *, last: bool = True) -> bool:
  """True every `every` steps (never if every <= 0) and at `last_step`."""
  return (every > 0 and step % every == 0) or (last and step == last_step)


class Chrono:
  """Wall time of one session split into training and paused (eval, save)."""

  def __init__(self, clock: Callable[[], float] = time.perf_counter):
    self._clock = clock
    self._session_start = clock()
    self.paused_s: dict[str, float] = collections.defaultdict(float)
    self.first_step: int | None = None  # Timing starts after this step.
    self._t_first = 0.0
    self._paused_at_first = 0.0
    self._mark = (0, 0.0, 0.0)  # (step, time, paused) at the last mark.

  @property
  def started(self) -> bool:
    return self.first_step is not None

  def start(self, step: int) -> None:
    """Call once the first (compiling) step has finished."""
    self.first_step, self._t_first = step, self._clock()
    self._paused_at_first = self.total_paused()
    self._mark = (step, self._t_first, self._paused_at_first)

  @contextlib.contextmanager
  def paused(self, kind: str) -> Iterator[None]:
    """Time inside the block counts as `kind` (e.g. 'eval'), not training."""
    t0 = self._clock()
    try:
      yield
    finally:
      self.paused_s[kind] += self._clock() - t0

  def total_paused(self) -> float:
    return sum(self.paused_s.values())

  def wall(self) -> float:
    """Seconds since this session began (compile, eval, saves included)."""
    return self._clock() - self._session_start

  def rate_since_mark(self, step: int) -> float:
    """Training steps/s since the last call (or start); NaN if unknown."""
    if not self.started:
      return float("nan")
    now, paused = self._clock(), self.total_paused()
    s0, t0, p0 = self._mark
    self._mark = (step, now, paused)
    return _rate(step - s0, now - t0 - (paused - p0))

  def steady_rate(self, step: int) -> float:
    """Training steps/s from the end of the first step to now; NaN if unknown."""
    if not self.started:
      return float("nan")
    seconds = self._clock() - self._t_first - (self.total_paused() - self._paused_at_first)
    return _rate(step - self.first_step, seconds)


def _rate(steps: int, seconds: float) -> float:
  return steps / seconds if steps > 0 and seconds > 0 else float("nan")
