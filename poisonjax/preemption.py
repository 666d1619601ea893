"""Stopping on a signal: every process stops after the same step.

SIGTERM/SIGINT set a flag (and the time it came); the loop finishes the step
it is in, saves, waits for the save to be durable, and exits 0. On several
processes they must stop at one step: they agree (one all-gather) at sync
points, or at orbax's preemption sync point.
"""

from __future__ import annotations

import signal
import threading
import time

import jax


class StopFlag:
  """Set by SIGTERM/SIGINT (main thread only); read by the loop."""

  def __init__(self):
    self.signal: str | None = None
    self.time: float | None = None  # time.monotonic() of the first signal.
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal is None:
      self.signal, self.time = signal.Signals(signum).name, time.monotonic()

  def since(self) -> float:
    """Seconds since the signal (0 if none)."""
    return 0.0 if self.time is None else time.monotonic() - self.time

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def should_stop(flag: StopFlag, ckpt, step: int, sync_point: bool) -> bool:
  """Single process: the flag, every step. Several: agreed at sync points
  (log/checkpoint/eval steps) or at orbax's preemption sync point."""
  if jax.process_count() == 1:
    return flag.signal is not None
  if ckpt.reached_preemption(step):
    return True
  if not sync_point:
    return False
  from poisonjax import distributed
  return distributed.any_process(flag.signal is not None)


def shutdown_eval_fits(grace_s: float, since_signal_s: float,
                       eval_estimate_s: float | None) -> bool:
  """Whether an evaluation may run after the shutdown save is durable.

  Only within `grace_s` seconds of the signal: with an estimate (the last
  evaluation's duration) it must fit in what is left; without one, any
  positive grace allows it.
  """
  if grace_s <= 0:
    return False
  return since_signal_s + (eval_estimate_s or 0.0) <= grace_s
