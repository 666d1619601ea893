"""What a launcher knows of a run on a slice, read from the store alone.

The run is detached on the workers (launch.detached); each host's
supervisor rewrites LOG_DIR/host-K.json every heartbeat, and the trainer
refreshes WORKDIR/lock.json. The launcher never compares its clock with
the workers': a run is live while what it writes keeps changing, as seen
on the launcher's own clock. `look()` says:

  running  something changed within stale_s (or this watch is young, or a
           start was sent within 2 x stale_s)
  exited   every host's supervisor wrote "exited" after the last start
  quiet    nothing changed for stale_s: no run (never started, or the VM
           that ran it is gone)
"""

from __future__ import annotations

import json
import time
from typing import Callable

from poisonjax import files, rundir
from poisonjax.launch.workload import Workload, join


def read_store(workload: Workload, hosts: int) -> tuple[dict, ...]:
  """Each host's status record, and the first unfinished run's lock (by
  name: a listing can be cached by the file system client)."""
  def load(path) -> dict:
    try:
      return json.loads(path.read_text())
    except (OSError, ValueError):
      return {}

  log_dir = files.as_path(workload.log_dir)
  records = [load(log_dir / f"host-{k}.json") for k in range(hosts)]
  records = [r for r in records if r]
  for workdir in workload.workdirs:
    if not files.as_path(join(workdir, rundir.SUMMARY)).exists():
      lock = load(files.as_path(join(workdir, rundir.LOCK)))
      if lock:
        records.append({"lock": lock.get("heartbeat")})
      break
  return tuple(records)


class Watch:
  """Liveness of one workload's run, by change over the launcher's clock."""

  def __init__(self, workload: Workload, hosts: int, stale_s: float,
               read: Callable[[Workload, int], tuple] = read_store,
               clock: Callable[[], float] = time.monotonic):
    self.workload, self.hosts, self.stale_s = workload, hosts, stale_s
    self.read, self.clock = read, clock
    self.seen, self.changed_at = None, clock()
    self.at_start = None

  def _look_at_store(self) -> tuple:
    seen = self.read(self.workload, self.hosts)
    if seen != self.seen:
      self.seen, self.changed_at = seen, self.clock()
    return seen

  def look(self) -> tuple[str, int]:
    """(running | exited | quiet, the worst exit status when exited)."""
    seen = self._look_at_store()
    hosts = [r for r in seen if "state" in r]
    if (hosts and all(r["state"] == "exited" for r in hosts)
        and seen != self.at_start):
      return "exited", max(int(r.get("status", 1)) for r in hosts)
    if self.clock() - self.changed_at <= self.stale_s:
      return "running", 0
    return "quiet", 0

  def started(self) -> None:
    """A start was sent: earlier records no longer count as its end, and the
    run has stale_s more (2 x stale_s in all) to write its first one."""
    self.at_start = self._look_at_store()
    self.changed_at = self.clock() + self.stale_s
