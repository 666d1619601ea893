"""Stopping on a signal: from the first second, every process after the same step.

SIGTERM/SIGINT set a flag (and the time it came). `poisonjax train` installs
the flag before its heavy imports (`install_early`), and train.run holds it
for the whole run, so no signal ever meets Python's default handlers
(KeyboardInterrupt inside a compile or a restore, or death by SIGTERM).

Setup (vocabulary, stream, compile, restore) asks `check` at its
boundaries and inside the long builds: on a single process a signal stops
it there (`Stopped`: nothing half-written is kept, the lock is released,
exit 0). The loop finishes the step it is in, saves, waits for the save to
be durable, and exits 0. On several processes they must stop at one step:
`check` leaves setup alone and they agree (one all-gather) at the loop's
sync points, or at orbax's preemption sync point. A second SIGINT aborts
at once (KeyboardInterrupt), for a setup that hangs.
"""

from __future__ import annotations

import signal
import threading
import time

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_EARLY: dict = {}  # Recorded by install_early's handler: signal, time.
_ACTIVE: list = []  # The StopFlags held, innermost last.


class Stopped(Exception):
  """A signal during setup (single process): nothing to save yet."""

  def __init__(self, signal_name: str, where: str):
    super().__init__(f"{signal_name} during {where}")
    self.signal, self.where = signal_name, where


def install_early() -> None:
  """Records SIGTERM/SIGINT until a StopFlag takes over (main thread only).

  Called first thing by commands that train, before their imports: a
  signal during them stops the run at its first check.
  """
  if threading.current_thread() is not threading.main_thread():
    return
  def record(signum, frame):
    del frame
    if "signal" in _EARLY and signum == signal.SIGINT:  # Asked twice.
      raise KeyboardInterrupt
    _EARLY.setdefault("signal", signal.Signals(signum).name)
    _EARLY.setdefault("time", time.monotonic())
  for sig in _SIGNALS:
    signal.signal(sig, record)


class StopFlag:
  """Set by SIGTERM/SIGINT (main thread only); read by the loop."""

  def __init__(self):
    # A signal recorded since install_early is this flag's (once).
    self.signal: str | None = _EARLY.pop("signal", None)
    self.time: float | None = _EARLY.pop("time", None)  # monotonic() of it.
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in _SIGNALS:
        self._old[sig] = signal.signal(sig, self._handle)
    _ACTIVE.append(self)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal is None:
      self.signal, self.time = signal.Signals(signum).name, time.monotonic()
    elif signum == signal.SIGINT:  # Asked twice: abort now.
      raise KeyboardInterrupt

  def since(self) -> float:
    """Seconds since the signal (0 if none)."""
    return 0.0 if self.time is None else time.monotonic() - self.time

  def __exit__(self, *exc):
    _ACTIVE.remove(self)
    for sig, old in self._old.items():
      signal.signal(sig, old)


def stop_requested() -> bool:
  """Whether setup must stop now: a signal came for the StopFlag held, and
  this is the only process (False when no flag is held)."""
  if not _ACTIVE or _ACTIVE[-1].signal is None:
    return False
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count() == 1


def check(where: str) -> None:
  """Raises Stopped if stop_requested(); `where` names the phase for the
  user ("the stream build")."""
  if stop_requested():
    raise Stopped(_ACTIVE[-1].signal, where)


def should_stop(flag: StopFlag, ckpt, step: int, sync_point: bool) -> bool:
  """Single process: the flag, every step. Several: agreed at sync points
  (log/checkpoint/eval steps) or at orbax's preemption sync point."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return flag.signal is not None
  if ckpt.reached_preemption(step):
    return True
  if not sync_point:
    return False
  from poisonjax import distributed  # pylint: disable=g-import-not-at-top
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
