"""gcloud command lines for one Cloud TPU slice, as argv lists.

A slice is a TPU VM (`tpu-vm create`) or, for spot capacity, a queued
resource (`queued-resources create ... --spot`) whose node has the same
name; both are created and deleted with --async, so many slices progress
at once. `setup_steps` copies the config, the bootstrap script (and a local
wheel) to every worker and runs the bootstrap there: a virtual environment
with a supported Python (uv), jax[tpu] and poisonjax, skipped in seconds
when already done. `run_step` starts the workload detached on every worker
(`ssh --worker=all`, poisonjax.launch.detached): it outlives the ssh call,
and starting it again while it runs does nothing.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re

from poisonjax import rundir
from poisonjax.errors import UserError
from poisonjax.launch import quoting
from poisonjax.launch.workload import Workload

# On every worker, relative to its home (the ssh command's cwd).
VENV = ".poisonjax/venv"
BOOTSTRAP = "poisonjax_bootstrap.sh"
BOOTSTRAP_PATH = os.path.join(os.path.dirname(__file__), BOOTSTRAP)
MIN_PYTHON = (3, 11)  # pyproject.toml's requires-python.

# TPU software version per generation (the accelerator type's prefix).
RUNTIMES = {"v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite",
            "v6e": "v2-alpha-tpuv6e", "v4": "tpu-ubuntu2204-base"}
# The number in v4-N / v5p-N counts TensorCores (2 per chip); in v5e/v6e chips.
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5litepod": 1, "v6e": 1}
_CHIPS_PER_HOST = {"v4": 4, "v5p": 4, "v5litepod": 4, "v6e": 4}
_SINGLE_HOST_CHIPS = {"v4": 4, "v5p": 4, "v5litepod": 8, "v6e": 8}

# What the babysitter does in each state of the TPU API's enums (v2:
# Node.State, QueuedResourceState.State): ready (set up and run), wait,
# gone (delete, then create again), unknown (logged with the slice's name;
# replaced after --stuck_s). A state missing here (a newer API) is unknown.
VM_STATES = {
    "READY": "ready",
    "CREATING": "wait", "STARTING": "wait", "RESTARTING": "wait",
    "REPAIRING": "wait", "REIMAGING": "wait", "DELETING": "wait",
    "STOPPING": "wait", "HIDING": "wait", "HIDDEN": "wait", "UNHIDING": "wait",
    "PREEMPTED": "gone", "TERMINATED": "gone", "STOPPED": "gone",
    "STATE_UNSPECIFIED": "unknown", "UNKNOWN": "unknown"}
QUEUED_STATES = {
    "ACTIVE": "ready",
    "CREATING": "wait", "ACCEPTED": "wait", "PROVISIONING": "wait",
    "WAITING_FOR_RESOURCES": "wait", "DELETING": "wait", "SUSPENDING": "wait",
    "SUSPENDED": "gone", "FAILED": "gone",
    "STATE_UNSPECIFIED": "unknown"}

# Zones that offer each generation, from Google's "TPU regions and zones"
# page (read 2026-12; it changes: --any_zone skips this check).
ZONES = {
    "v4": ("us-central2-b",),
    "v5litepod": ("us-central1-a", "us-south1-a", "us-west1-c", "us-west4-a",
                  "europe-west4-b", "asia-southeast1-b"),
    "v5p": ("us-central1-a", "us-east5-a", "europe-west4-b"),
    "v6e": ("us-central1-b", "us-east1-d", "us-east5-a", "us-east5-b",
            "europe-west4-a", "asia-northeast1-b",
            "southamerica-east1-c"),
}
# The runtimes' OS and its python3 (docs/tpu.md): why workers get a venv.
RUNTIME_OS = {"v2-alpha-tpuv5": "Ubuntu 22.04, Python 3.10",
              "v2-alpha-tpuv5-lite": "Ubuntu 22.04, Python 3.10",
              "v2-alpha-tpuv6e": "Ubuntu 22.04, Python 3.10",
              "tpu-ubuntu2204-base": "Ubuntu 22.04, Python 3.10"}


def parse_accelerator(accelerator: str) -> tuple[str, int]:
  """`v5p-64` -> ("v5p", 64); UserError for an unknown generation."""
  m = re.match(r"^(v[0-9a-z]+)-(\d+)$", accelerator or "")
  if not m or m[1] not in RUNTIMES:
    raise UserError(f"--accelerator={accelerator!r}: not a TPU type; use e.g. "
                    f"v5p-64, v5litepod-16, v6e-16 (generations: "
                    f"{', '.join(RUNTIMES)})")
  return m[1], int(m[2])


def check_zone(zone: str, accelerator: str) -> None:
  """UserError when ZONES says `zone` does not offer this generation."""
  generation, _ = parse_accelerator(accelerator)
  if zone not in ZONES[generation]:
    raise UserError(f"--zone={zone}: does not offer {generation} TPUs (by the "
                    f"table in poisonjax/launch/tpu.py); use one of "
                    f"{', '.join(ZONES[generation])}, or --any_zone if the "
                    "table is out of date")


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str
  zone: str
  accelerator: str  # v5p-64, v5litepod-16, v6e-256, ...
  runtime: str = ""  # Default: RUNTIMES of the generation.
  project: str = ""
  spot: bool = False  # A queued resource with --spot.

  def __post_init__(self):
    quoting.check_resource("--name", self.name)
    quoting.check_resource("--zone", self.zone)
    if self.project:
      quoting.check_resource("--project", self.project)
    generation, _ = parse_accelerator(self.accelerator)
    if not self.runtime:
      object.__setattr__(self, "runtime", RUNTIMES[generation])
    quoting.check_value("--runtime", self.runtime)

  @property
  def hosts(self) -> int:
    generation, n = parse_accelerator(self.accelerator)
    chips = max(1, n // _CORES_PER_CHIP[generation])
    if chips <= _SINGLE_HOST_CHIPS[generation]:
      return 1
    return chips // _CHIPS_PER_HOST[generation]

  def named(self, suffix: str) -> "Slice":
    """This slice for one run of a grid (`NAME-600m-n250-s0-d1p0`)."""
    if not suffix:
      return self
    return dataclasses.replace(self, name=f"{self.name}-{suffix}"[:63].rstrip("-"))

  def _where(self) -> list[str]:
    return [f"--zone={self.zone}"] + ([f"--project={self.project}"]
                                      if self.project else [])

  def _api(self) -> list[str]:
    kind = "queued-resources" if self.spot else "tpu-vm"
    return ["gcloud", "compute", "tpus", kind]

  def create(self) -> list[str]:
    """Returns at once (--async); describe follows the creation."""
    if self.spot:
      return [*self._api(), "create", self.name, f"--node-id={self.name}",
              *self._where(), f"--accelerator-type={self.accelerator}",
              f"--runtime-version={self.runtime}", "--spot", "--async"]
    return [*self._api(), "create", self.name, *self._where(),
            f"--accelerator-type={self.accelerator}",
            f"--version={self.runtime}", "--async"]

  def describe(self) -> list[str]:
    field = "state.state" if self.spot else "state"
    return [*self._api(), "describe", self.name, *self._where(),
            f"--format=value({field})"]

  def states(self) -> dict[str, str]:
    return QUEUED_STATES if self.spot else VM_STATES

  def delete(self) -> list[str]:
    """Returns at once (--async): describe says DELETING, then not found."""
    force = ["--force"] if self.spot else []
    return [*self._api(), "delete", self.name, *self._where(), *force,
            "--quiet", "--async"]

  def ssh(self, *commands: list[str]) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.name,
            *self._where(), "--worker=all",
            f"--command={quoting.remote(*commands)}"]

  def scp(self, paths: list[str]) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", *paths,
            f"{self.name}:~/", *self._where(), "--worker=all"]


def local_jax() -> str:
  """`jax[tpu]==V` for the JAX this launcher runs: workers run what you tested."""
  try:
    return f"jax[tpu]=={importlib.metadata.version('jax')}"
  except importlib.metadata.PackageNotFoundError:
    return "jax[tpu]"


def _python_version(value: str) -> str:
  m = re.match(r"^(\d+)\.(\d+)$", value or "")
  if not m or (int(m[1]), int(m[2])) < MIN_PYTHON:
    raise UserError(f"--python={value!r}: not a supported Python; use "
                    f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer, e.g. 3.11")
  return value


@dataclasses.dataclass(frozen=True)
class Install:
  """What each worker gets: a venv (Python `python`), jax and poisonjax.

  The image's own python3 (3.10 on Ubuntu 22.04 runtimes) is too old for
  poisonjax and current JAX, so the bootstrap installs uv with it and lets
  uv make the venv with its own Python build.
  """
  wheel: str = ""  # A local .whl (copied over) or gs://.../x.whl.
  git: str = ""  # URL@REV, for pip's git+URL@REV.
  jax: str = ""  # Default: local_jax().
  python: str = "3.11"

  def __post_init__(self):
    if not self.jax:
      object.__setattr__(self, "jax", local_jax())
    for flag, value in (("--wheel", self.wheel), ("--git", self.git),
                        ("--jax", self.jax)):
      quoting.check_value(flag, value)
    _python_version(self.python)
    if bool(self.wheel) == bool(self.git):
      raise UserError("--wheel/--git: name exactly one (a .whl built with "
                      "`pip wheel --no-deps .`, or --git=URL@REV)")
    if self.wheel and not self.wheel.endswith(".whl"):
      raise UserError(f"--wheel={self.wheel!r}: not a .whl file; build one with "
                      "`pip wheel --no-deps -w dist .`")

  def local_files(self) -> list[str]:
    wheel = [self.wheel] if self.wheel and "://" not in self.wheel else []
    return [BOOTSTRAP_PATH] + wheel

  def commands(self) -> list[list[str]]:
    if self.git:
      package, steps = f"git+{self.git}", []
    else:
      package = "./" + os.path.basename(self.wheel)
      steps = ([["gcloud", "storage", "cp", self.wheel, package]]
               if "://" in self.wheel else [])
    return steps + [["bash", BOOTSTRAP, VENV, self.python, self.jax, package]]


def check_workdirs(tpu: Slice, workload: Workload, babysit: bool) -> None:
  """A multi-host or babysat run keeps its workdir in a bucket (gs://)."""
  for w in workload.workdirs:
    if not w.startswith("gs://") and (tpu.hosts > 1 or babysit):
      why = f"{tpu.accelerator} has {tpu.hosts} hosts" if tpu.hosts > 1 else \
          "--babysit reads it and a recreated VM starts empty"
      raise UserError(f"--workdir/--root={w!r}: not on gs:// ({why}); use "
                      "gs://BUCKET/...")


def setup_steps(tpu: Slice, install: Install, config_file: str) -> list[tuple[str, list[str]]]:
  """(what, argv) to copy files to every worker and bootstrap there."""
  files = [config_file] + install.local_files()
  return [(f"copy {', '.join(os.path.basename(f) for f in files)} to every worker",
           tpu.scp(files)),
          (f"bootstrap every worker: ~/{VENV} with Python {install.python} "
           "(uv), jax[tpu] and poisonjax; seconds when already there",
           tpu.ssh(*install.commands()))]


def detached_python(log_dir: str, heartbeat_s: float) -> tuple[str, ...]:
  """The venv's Python starting a workload detached (see launch.detached)."""
  quoting.check_value("log dir", log_dir)
  return (f"{VENV}/bin/python", "-m", "poisonjax.launch.detached", "start",
          f"--log_dir={log_dir}", f"--heartbeat_s={heartbeat_s:g}", "--",
          "-m", "poisonjax.cli")


def run_step(tpu: Slice, workload: Workload,
             heartbeat_s: float = 60.0) -> tuple[str, list[str]]:
  return (f"start the run detached on every worker (log: {workload.log_dir}/"
          "host-K.log; resumes from the newest checkpoint; nothing if running)",
          tpu.ssh(workload.command(detached_python(workload.log_dir, heartbeat_s))))


def remote_config(config: str) -> str:
  """The config as workers see it: copied to ~ (the ssh command's cwd)."""
  path, sep, arg = config.partition(":")
  return os.path.basename(path) + sep + arg


def dry_run(tpu: Slice, setup, run, workdirs, babysit: bool,
            poll_s: float) -> list[str]:
  """Every gcloud command a launch of this slice would run, with comments."""
  kind = "queued spot resource" if tpu.spot else "TPU VM"
  hosts = f"{tpu.hosts} host" + ("s" if tpu.hosts > 1 else "")
  image = RUNTIME_OS.get(tpu.runtime, "image's python3 unknown")
  out = [f"# slice {tpu.name}: {kind} {tpu.accelerator} ({hosts}), "
         f"runtime {tpu.runtime} ({image})",
         "# create it (skipped when describe finds it READY: it is reused)",
         quoting.line(tpu.create())]
  for what, argv in list(setup) + [run]:
    out += [f"# {what}", quoting.line(argv)]
  every = f"every {poll_s:g} s, until"
  finished = (f"{workdirs[0]}/{rundir.SUMMARY}"
              f"{' (and the others)' if len(workdirs) > 1 else ''} exists")
  out += [f"# watch: {every} {finished}; the run's heartbeat is read from its "
          f"log folder and {rundir.LOCK}",
          quoting.line(tpu.describe())]
  if babysit:
    out += ["# when preempted, failed or gone: delete, create, then copy, "
            "bootstrap and start again as above",
            quoting.line(tpu.delete()),
            quoting.line(tpu.create())]
  return out
