"""Keep a workload running on a TPU slice until its summary.json appears.

Each `step()` looks once: the run finished (summary.json of every workdir:
stop); the slice's state (`describe --format=value(...)`): absent -> create;
PREEMPTED/TERMINATED (or a suspended queued resource) -> delete and create;
READY -> install if this VM has not been set up, and start the run if none
is running (train resumes from its newest checkpoint). A run that ends on a
live slice without finishing is rerun at most `max_failures` times in a row.
`sit()` steps every slice's sitter until all are done. Commands run through
injectable functions so tests can script gcloud and the summary reader.
"""

from __future__ import annotations

import subprocess
import time
from typing import Callable

from poisonjax.errors import UserError
from poisonjax.launch import quoting
from poisonjax.launch import workload as workload_lib
from poisonjax.launch.tpu import Slice


def run_captured(argv: list[str]) -> subprocess.CompletedProcess:
  try:
    return subprocess.run(argv, capture_output=True, text=True, check=False)
  except FileNotFoundError:
    raise UserError(f"{argv[0]}: not found on PATH; install the Google Cloud "
                    "CLI (gcloud) and run `gcloud auth login`") from None


class Sitter:
  """One slice and its workload; `step()` until `done`."""

  def __init__(self, tpu: Slice, setup: list[tuple[str, list[str]]],
               run: tuple[str, list[str]], workdirs, *,
               is_finished: Callable[[tuple], bool] = workload_lib.finished,
               call: Callable[[list[str]], subprocess.CompletedProcess] = run_captured,
               start: Callable[[list[str]], subprocess.Popen] = subprocess.Popen,
               log: Callable[[str], None] = print, recreate: bool = True,
               max_failures: int = 3):
    self.tpu, self.setup, self.run, self.workdirs = tpu, setup, run, tuple(workdirs)
    self.is_finished, self.call, self.start, self.log = is_finished, call, start, log
    self.recreate, self.max_failures = recreate, max_failures
    self.proc = None
    self.installed = False
    self.done, self.rc = False, 0
    self.creations = self.runs = self.failures = 0
    self._ended_unfinished = False
    self.described, self.describe_errors = False, 0

  def _say(self, text: str) -> None:
    self.log(f"[{self.tpu.name}] {text}")

  def _call(self, what: str, argv: list[str]) -> bool:
    self._say(f"{what}: {quoting.line(argv)}")
    result = self.call(argv)
    if result.returncode != 0:
      err = (result.stderr or "").strip().splitlines()
      self._say(f"failed (status {result.returncode}): {err[-1] if err else ''}")
    return result.returncode == 0

  def state(self) -> str:
    """ready | wait | gone | absent (and logs an unknown state as wait)."""
    result = self.call(self.tpu.describe())
    err = (result.stderr or "").strip()
    if result.returncode != 0:
      if "NOT_FOUND" in err or "not found" in err:
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
    raw = result.stdout.strip()
    return self.tpu.states().get(raw, "wait")

  def _finish(self, rc: int) -> None:
    self.done, self.rc = True, rc
    if self.proc is not None and self.proc.poll() is None:
      self.proc.terminate()

  def _check_process(self) -> None:
    if self.proc is None or self.proc.poll() is None:
      return
    rc, self.proc = self.proc.returncode, None
    self._say(f"run ended (status {rc})")
    if not self.recreate:  # One shot: the run's status is the launch's.
      self._finish(rc)
    else:
      self._ended_unfinished = True

  def _replace(self, state: str) -> None:
    if self.proc is not None:
      self.proc.terminate()
      self.proc = None
    if self.runs and not self.recreate:
      raise UserError(f"slice {self.tpu.name}: {state} while running; rerun with "
                      "--babysit to recreate it and resume")
    if state == "gone":
      self._call("delete", self.tpu.delete())
    if self._call("create", self.tpu.create()):
      self.creations += 1
      self.installed, self.failures, self._ended_unfinished = False, 0, False

  def _failed(self, what: str) -> None:
    """Counts a failure on a live slice; gives up after max_failures in a row."""
    self.failures += 1
    if self.failures > self.max_failures:
      raise UserError(f"slice {self.tpu.name}: {what} {self.failures} times "
                      "on a live slice; see the log above")

  def _on_ready(self) -> None:
    if not self.installed:
      self.installed = all(self._call(what, argv) for what, argv in self.setup)
      if not self.installed:
        return self._failed("the set-up failed")
    if self.proc is not None:
      return
    if self._ended_unfinished:
      self._failed("the run ended without finishing")
    self._say(f"{self.run[0]}: {quoting.line(self.run[1])}")
    self.proc, self._ended_unfinished = self.start(self.run[1]), False
    self.runs += 1

  def step(self) -> None:
    if self.done:
      return
    self._check_process()
    if self.done:
      return
    if self.recreate and self.is_finished(self.workdirs):
      self._say("finished (summary.json written)")
      return self._finish(0)
    state = self.state()
    if state in ("absent", "gone"):
      if state == "absent" and self.creations == 0:
        self._say("no such slice yet")
      self._replace(state)
    elif state == "ready":
      self._on_ready()


def sit(sitters: list[Sitter], poll_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        max_polls: int | None = None) -> int:
  """Steps every sitter each poll until all are done; the worst status."""
  polls = 0
  while not all(s.done for s in sitters):
    for s in sitters:
      s.step()
    polls += 1
    if all(s.done for s in sitters):
      break
    if max_polls is not None and polls >= max_polls:
      raise UserError(f"babysitter: not finished after {polls} polls")
    sleep(poll_s)
  return max(s.rc for s in sitters)
