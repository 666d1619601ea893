"""Keep workloads running on TPU slices until their summary.json appears.

One `Sitter` per slice; `sit()` steps them all concurrently (a thread per
slice being stepped, at most --max_parallel slices alive at once, the rest
queued in grid order) until every one is finished or has given up.

Each `step()` of a sitter looks once: the run finished (summary.json of
every workdir: delete the slice unless kept, stop); the slice's state
(`describe`), mapped by tpu.VM_STATES / QUEUED_STATES:
  absent   create it (--async), at most max_creates times in a row without
           reaching READY, waiting backoff_s, 2x, 4x, ... between tries
  gone     delete it (--async); it is created again once absent
  unknown  logged with the slice's name; replaced after stuck_s
  wait     logged when it changes
  ready    the run's liveness (launch.watch): running -> nothing; exited or
           quiet -> copy + bootstrap (idempotent) and start (idempotent:
           a live run is left alone). A run that ends unfinished on a live
           slice is restarted at most max_failures times in a row.
Nothing here holds a connection to a worker: the run is detached there, so
the launcher can be stopped and started again with the same command.
Commands run through an injectable `call` so tests can script gcloud.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import subprocess
import time
from typing import Callable

from poisonjax.errors import UserError
from poisonjax.launch import quoting
from poisonjax.launch import watch as watch_lib
from poisonjax.launch import workload as workload_lib
from poisonjax.launch.tpu import Slice


def run_captured(argv: list[str]) -> subprocess.CompletedProcess:
  try:
    return subprocess.run(argv, capture_output=True, text=True, check=False)
  except FileNotFoundError:
    raise UserError(f"{argv[0]}: not found on PATH; install the Google Cloud "
                    "CLI (gcloud) and run `gcloud auth login`") from None


@dataclasses.dataclass
class Limits:
  """How hard to try; each is a `launch tpu` flag."""
  recreate: bool = True  # --babysit: replace preempted slices, rerun.
  max_failures: int = 3  # Unfinished ends of the run on one live slice.
  max_creates: int = 5  # Creations in a row that never reach READY.
  backoff_s: float = 60.0  # Before the 2nd creation; doubles, up to 1 h.
  stuck_s: float = 1800.0  # An unknown state this long: replace the slice.
  keep: bool = False  # Keep a slice once its runs have finished.


class Sitter:
  """One slice and its workload; `step()` until `done`."""

  def __init__(self, tpu: Slice, setup: list[tuple[str, list[str]]],
               run: tuple[str, list[str]], workload: workload_lib.Workload,
               watch: watch_lib.Watch, limits: Limits = Limits(), *,
               is_finished: Callable[[tuple], bool] = workload_lib.finished,
               call: Callable[[list[str]], subprocess.CompletedProcess] = run_captured,
               log: Callable[[str], None] = print,
               clock: Callable[[], float] = time.monotonic):
    self.tpu, self.setup, self.run, self.workload = tpu, setup, run, workload
    self.watch, self.limits = watch, limits
    self.is_finished, self.call, self.log, self.clock = is_finished, call, log, clock
    self.done, self.rc, self.result = False, 0, "pending"
    self.state = "-"  # The last state describe gave.
    self.creations = self.starts = self.failures = 0
    self.create_tries, self.next_create_at = 0, 0.0
    self.fresh_vm = False  # Created here; nothing set up or started on it.
    self.unknown_since = None
    self.described, self.describe_errors = False, 0

  def _say(self, text: str) -> None:
    self.log(f"{time.strftime('%H:%M:%S')} [{self.tpu.name}] {text}")

  def _call(self, what: str, argv: list[str]) -> subprocess.CompletedProcess:
    self._say(f"{what}: {quoting.line(argv)}")
    result = self.call(argv)
    if result.returncode != 0:
      said = ((result.stderr or "").strip() or (result.stdout or "").strip())
      last = said.splitlines()[-1] if said else ""
      self._say(f"failed (status {result.returncode}): {last[:300]}")
    return result

  def _finish(self, rc: int, result: str) -> None:
    self.done, self.rc, self.result = True, rc, result
    self._say(result)

  def _give_up(self, why: str) -> None:
    self._finish(1, f"gave up: {why} (last state {self.state})")

  def describe(self) -> str:
    """ready | wait | gone | unknown | absent, and self.state."""
    result = self.call(self.tpu.describe())
    err = (result.stderr or "").strip()
    if result.returncode != 0:
      if "NOT_FOUND" in err or "not found" in err:
        self.state = "absent"
        return "absent"
      self.describe_errors += 1
      lines = err.splitlines() or [f"status {result.returncode}"]
      last = next((l for l in lines if "ERROR" in l), lines[0])
      # Before any answer it is the set-up (project, login); later, a blip.
      if not self.described or self.describe_errors > 10:
        raise UserError(f"slice {self.tpu.name}: `gcloud ... describe` failed: "
                        f"{last[:300]}; check `gcloud config list`, the "
                        "project and the zone")
      self._say(f"describe failed, will retry: {last[:300]}")
      return "wait"
    self.described, self.describe_errors = True, 0
    state = result.stdout.strip() or "STATE_UNSPECIFIED"
    if state != self.state:
      self._say(f"state {state}")
    self.state = state
    return self.tpu.states().get(state, "unknown")

  def _create(self) -> None:
    if self.create_tries >= self.limits.max_creates:
      return self._give_up(f"{self.create_tries} creations in a row never "
                           "became ready")
    if self.clock() < self.next_create_at:
      return
    self.create_tries += 1
    self.next_create_at = self.clock() + min(
        3600.0, self.limits.backoff_s * 2 ** (self.create_tries - 1))
    if self._call("create", self.tpu.create()).returncode == 0:
      self.creations += 1
      self.fresh_vm, self.failures = True, 0

  def _replace(self, action: str) -> None:
    if self.starts and not self.limits.recreate:
      return self._give_up(f"{self.state} while its run was on it; rerun with "
                           "--babysit to recreate it and resume")
    if action == "absent":
      return self._create()
    self._call("delete", self.tpu.delete())

  def _unknown(self) -> None:
    now = self.clock()
    if self.unknown_since is None:
      self.unknown_since = now
      self._say(f"unknown state {self.state!r}: waiting; the slice is "
                f"replaced if it stays so for {self.limits.stuck_s:g} s")
    elif now - self.unknown_since > self.limits.stuck_s:
      self._say(f"state {self.state!r} for {now - self.unknown_since:.0f} s: "
                "replacing the slice")
      self.unknown_since = None
      self._replace("gone")

  def _start(self) -> str:
    """Copy, bootstrap (both idempotent on a worker), then start detached:
    started | running (it already was) | failed."""
    for what, argv in self.setup:
      if self._call(what, argv).returncode != 0:
        self._failed("the set-up failed")
        return "failed"
    what, argv = self.run
    result = self._call(what, argv)
    if result.returncode != 0:
      self._failed("the start failed")
      return "failed"
    self.fresh_vm = False
    self.watch.started()
    if "already running" in result.stdout and "started (" not in result.stdout:
      self._say("the run was already running on every worker")
      return "running"
    self.starts += 1
    return "started"

  def _failed(self, what: str) -> None:
    """Counts a failure on a live slice; gives up after max_failures in a row."""
    self.failures += 1
    if self.failures > self.limits.max_failures:
      self._give_up(f"{what} {self.failures} times on a live slice; see "
                    f"{self.workload.log_dir}/host-*.log")

  def _on_ready(self) -> None:
    self.create_tries, self.unknown_since = 0, None
    liveness, status = self.watch.look()
    if self.fresh_vm:
      self._start()
      return
    self.result = "running"
    if liveness == "running":
      return
    if liveness == "exited":
      # A preemption stops the run before the slice's state says so: look
      # again before counting it as the run's failure on a live slice.
      if self.describe() != "ready":
        return
      self._say(f"the run ended (status {status}) without finishing")
      if not self.limits.recreate:
        return self._finish(status or 1, f"run ended with status {status or 1}")
      self._failed("the run ended without finishing")
      if not self.done:
        self._start()
      return
    self._say("no word from the run for a while: starting it (a run still "
              "alive on the workers is left alone)")
    if self._start() == "started" and self.starts > 1:
      self._failed("the run stopped reporting")

  def step(self) -> None:
    if self.done:
      return
    if self.is_finished(self.workload.workdirs):
      if self.limits.recreate and not self.limits.keep:
        self._call("delete (finished)", self.tpu.delete())
      return self._finish(0, "finished (summary.json written)")
    action = self.describe()
    self.result = self.state
    if action in ("absent", "gone"):
      if action == "absent" and self.creations == 0:
        self._say("no such slice yet")
      self._replace(action)
    elif action == "unknown":
      self._unknown()
    elif action == "ready":
      self._on_ready()


def summary(sitters: list[Sitter]) -> list[str]:
  """One row per slice: what happened to it."""
  rows = [("slice", "state", "created", "started", "failures", "result")]
  rows += [(s.tpu.name, s.state, str(s.creations), str(s.starts),
            str(s.failures), s.result) for s in sitters]
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def sit(sitters: list[Sitter], poll_s: float = 60.0, max_parallel: int = 0,
        sleep: Callable[[float], None] = time.sleep,
        max_polls: int | None = None, log: Callable[[str], None] = print) -> int:
  """Steps up to max_parallel unfinished sitters concurrently, every poll_s,
  until all are done; prints the summary; the worst status."""
  width = max_parallel or len(sitters)
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, width))
  busy: dict[Sitter, concurrent.futures.Future] = {}
  polls = 0
  try:
    while not all(s.done for s in sitters):
      for s in [s for s in sitters if not s.done][:width]:
        if s not in busy:
          busy[s] = pool.submit(s.step)
      started = time.monotonic()
      concurrent.futures.wait(busy.values(), timeout=poll_s)
      for s, future in list(busy.items()):
        if future.done():
          del busy[s]
          future.result()  # A UserError (gcloud not set up) stops them all.
      polls += 1
      if all(s.done for s in sitters):
        break
      if max_polls is not None and polls >= max_polls:
        raise UserError(f"babysitter: not finished after {polls} polls")
      sleep(max(0.0, poll_s - (time.monotonic() - started)))
  except KeyboardInterrupt:
    log("launcher stopped; the runs go on, detached on their slices: run the "
        "same command again to carry on")
    raise
  finally:
    pool.shutdown(wait=False, cancel_futures=True)
    log("\n".join(summary(sitters)))
  return max(s.rc for s in sitters)
