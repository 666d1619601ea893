"""One writer per run directory: a lock file with a heartbeat.

    with runlock.hold(workdir, "train", timeout_s=600):
      ...  # Nobody else trains in `workdir` meanwhile.

The lock is DIR/lock.json: who holds it (what, host, pid), since when, and a
heartbeat time a daemon thread refreshes. It appears atomically (written to a
temporary file, then hard-linked to its name: the link fails if a lock is
already there), so two starters never both win.

A second holder on a live lock is refused with one line naming the holder and
the fix. A lock whose holder is dead is taken over with a one-line notice on
stderr: dead means the pid is gone (same host), or no heartbeat for
`timeout_s` (any host: a holder elsewhere cannot be asked). A heartbeat
that is not a number, or lies in the future (a skewed or broken clock),
proves nothing: the lock file's modification time stands in for it, so
such a lock too goes stale `timeout_s` after its last write.

On an object store (`gs://`: no link, no exclusive create through epath)
the lock is created if absent, then, after OBJECT_SETTLE_S, read back: the
starter whose token is there holds it, the others are refused. Two starters
both win only if one takes longer than OBJECT_SETTLE_S between seeing no
lock and writing its own (a stalled client); the loser then finds out at
its first heartbeat ("lost the lock") and the run's own files still tell
the story. Taking over a dead lock on a store deletes it (if it still holds
the dead token) and creates a new one the same way.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Iterator

from etils.epath import Path

from poisonjax import files, rundir
from poisonjax.errors import UserError

OBJECT_SETTLE_S = 1.0  # Object stores: wait this long before reading back.


class Lock:
  """A held lock: its file, its token, and the heartbeat thread."""

  def __init__(self, path: Path, record: dict, beat_s: float):
    self.path = path
    self.record = record
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._beat, args=(beat_s,),
                                    name="runlock-heartbeat", daemon=True)

  @property
  def token(self) -> str:
    return self.record["token"]

  def still_ours(self) -> bool:
    holder = _read(self.path)
    return holder is not None and holder.get("token") == self.token

  def _beat(self, beat_s: float) -> None:
    while not self._stop.wait(beat_s):
      try:
        if not self.still_ours():  # Taken over (we looked dead): stop.
          print(f"poisonjax: warning: lost the lock {self.path} to another "
                "process", file=sys.stderr, flush=True)
          return
        # (A taker acting between the check and the write loses its lock;
        # it takes it again after timeout_s: a narrow, recoverable race.)
        self.record["heartbeat"] = time.time()
        _write_replace(self.path, self.record)
      except OSError:  # A filesystem hiccup: try again at the next beat.
        continue

  def release(self) -> None:
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join()
    if self.still_ours():
      self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(directory, what: str, timeout_s: float, *,
         primary: bool = True) -> Iterator[Lock | None]:
  """Holds DIR/lock.json for the block; raises UserError if it is taken.

  `what` names the holder in messages ("train", "study run"). On several
  processes pass `primary=(process index == 0)`: only that one holds the
  lock (the others get None), so the run as a whole holds it once.
  """
  if not primary:
    yield None
    return
  lock = acquire(directory, what, timeout_s)
  try:
    yield lock
  finally:
    lock.release()


def acquire(directory, what: str, timeout_s: float) -> Lock:
  """Takes the lock (or a dead holder's); UserError naming a live holder."""
  directory = files.as_path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / rundir.LOCK
  now = time.time()
  record = {"what": what, "host": socket.gethostname(), "pid": os.getpid(),
            "since": now, "heartbeat": now, "token": uuid.uuid4().hex}
  for _ in range(3):  # A lost race against another taker: look again.
    if _create(path, record):
      lock = Lock(path, record, beat_s=max(0.05, min(30.0, timeout_s / 4)))
      lock._thread.start()
      return lock
    holder = _read(path)
    if holder is None:  # Released meanwhile: try again.
      continue
    mtime = _mtime(path)
    reason = dead_reason(holder, timeout_s, mtime=mtime)
    if reason is None:
      raise UserError(refusal(directory, what, holder, mtime=mtime))
    if _take_over(path, holder):
      print(f"poisonjax: taking over {path}: its holder ({describe(holder)}) "
            f"{reason}", file=sys.stderr, flush=True)
  raise UserError(f"{directory}: could not take the lock {path} (other "
                  "processes keep taking it); make sure one process uses "
                  "this directory, then retry")


def live_holder(directory, timeout_s: float) -> dict | None:
  """The live holder of DIR/lock.json (a record), or None if free or dead."""
  path = files.as_path(directory) / rundir.LOCK
  holder = _read(path)
  if holder is None or dead_reason(holder, timeout_s,
                                   mtime=_mtime(path)) is not None:
    return None
  return holder


def dead_reason(holder: dict, timeout_s: float, now: float | None = None,
                mtime: float | None = None):
  """Why `holder` is dead ("pid gone", "no heartbeat for Ns"), or None.

  `mtime`, the lock file's modification time, stands in for a heartbeat
  that is not a number or lies in the future.
  """
  now = time.time() if now is None else now
  if not holder:  # What _read makes of a file that is no lock record.
    return "left an unreadable lock file"
  if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
    return "is gone (no such pid on this host)"
  beat, trusted = last_beat(holder, now, mtime)
  age = now - beat
  if age > timeout_s:
    if trusted:
      return f"sent no heartbeat for {age:.0f}s (timeout {timeout_s:g}s)"
    return (f"has no usable heartbeat ({holder.get('heartbeat')!r}) and its "
            f"file was last written {age:.0f}s ago (timeout {timeout_s:g}s)")
  return None


def last_beat(holder: dict, now: float, mtime: float | None) -> tuple[float, bool]:
  """(time of the last sign of life, whether it is the heartbeat itself)."""
  beat = _number(holder.get("heartbeat"))
  if beat is not None and beat <= now + 1.0:  # 1 s of clock skew is fine.
    return beat, True
  return (mtime if mtime is not None else 0.0), False


def describe(holder: dict) -> str:
  since = datetime.datetime.fromtimestamp(
      min(max(_number(holder.get("since")) or 0.0, 0.0), 2 ** 33))
  return (f"{holder.get('what', '?')} on host {holder.get('host', '?')}, "
          f"pid {holder.get('pid', '?')}, since {since:%Y-%m-%d %H:%M:%S}")


def refusal(directory: Path, what: str, holder: dict,
            mtime: float | None = None) -> str:
  now = time.time()
  beat, trusted = last_beat(holder, now, mtime)
  sign = (f"heartbeat {now - beat:.0f}s ago" if trusted else
          f"heartbeat unusable, lock file written {now - beat:.0f}s ago")
  return (f"{directory} is in use by {describe(holder)} ({sign}); {what} "
          "refused: wait for it to finish or stop it, or use another "
          f"directory (a dead holder's {rundir.LOCK} is taken over "
          "automatically)")


def _number(value) -> float | None:
  """`value` as a finite float, or None (a string, NaN, missing...)."""
  try:
    x = float(value)
  except (TypeError, ValueError):
    return None
  return x if x == x and abs(x) != float("inf") else None


def _mtime(path: Path) -> float | None:
  try:
    return float(path.stat().mtime)
  except (OSError, ValueError):
    return None


def _pid_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError):
    return True  # Exists but not ours, or unknown: assume alive.
  return True


def _create(path: Path, record: dict) -> bool:
  """Writes the lock atomically; False if one exists (link won't replace)."""
  if not files.is_local(path):
    return _create_object(path, record)
  tmp = path.with_name(f".{path.name}.{record['token']}.tmp")
  tmp.write_text(json.dumps(record) + "\n")
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  finally:
    tmp.unlink(missing_ok=True)


def _create_object(path: Path, record: dict) -> bool:
  """Object stores: write if absent, wait, read back whose token is there."""
  if path.exists():
    return False
  path.write_text(json.dumps(record) + "\n")
  time.sleep(OBJECT_SETTLE_S)  # A racing starter's write lands meanwhile.
  holder = _read(path)
  return holder is not None and holder.get("token") == record["token"]


def _write_replace(path: Path, record: dict) -> None:
  if not files.is_local(path):
    path.write_text(json.dumps(record) + "\n")  # One object write.
    return
  tmp = path.with_name(f".{path.name}.{record['token']}.tmp")
  tmp.write_text(json.dumps(record) + "\n")
  os.replace(tmp, path)


def _read(path: Path) -> dict | None:
  try:
    record = json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except (json.JSONDecodeError, UnicodeDecodeError):
    return {}  # Unreadable (no heartbeat): dead, taken over.
  return record if isinstance(record, dict) else {}


def _take_over(path: Path, holder: dict) -> bool:
  """Moves the dead holder's lock aside; True if it was still that lock.

  Renaming is atomic, so of two takers only one moves the dead lock. If what
  was moved is not the lock judged dead (a live holder took it meanwhile),
  it is put back. On an object store: deleted if it still holds the dead
  token (see the module docstring for the race).
  """
  if not files.is_local(path):
    if (_read(path) or {}).get("token") != holder.get("token"):
      return False
    path.unlink(missing_ok=True)
    return True
  aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.dead")
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    return False
  moved = _read(aside) or {}
  if moved.get("token") != holder.get("token"):
    with contextlib.suppress(FileExistsError):
      os.link(aside, path)
    aside.unlink(missing_ok=True)
    return False
  aside.unlink(missing_ok=True)
  return True
