"""gcloud command lines for one Cloud TPU slice, as argv lists.

A slice is a TPU VM (`tpu-vm create`) or, for spot capacity, a queued
resource (`queued-resources create ... --spot`) whose node has the same
name. `setup` copies the config (and a local wheel) to every worker and
installs jax[tpu] plus this package there; `run` starts the workload on all
workers at once (`ssh --worker=all`), where jax.distributed finds its peers.
"""

from __future__ import annotations

import dataclasses
import os
import re

from poisonjax.errors import UserError
from poisonjax.launch import quoting
from poisonjax.launch.workload import PYTHON, Workload

# TPU software version per generation (the accelerator type's prefix).
RUNTIMES = {"v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite",
            "v6e": "v2-alpha-tpuv6e", "v4": "tpu-ubuntu2204-base"}
# The number in v4-N / v5p-N counts TensorCores (2 per chip); in v5e/v6e chips.
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5litepod": 1, "v6e": 1}
_CHIPS_PER_HOST = {"v4": 4, "v5p": 4, "v5litepod": 4, "v6e": 4}
_SINGLE_HOST_CHIPS = {"v4": 4, "v5p": 4, "v5litepod": 8, "v6e": 8}

# describe states -> what the babysitter does: ready, wait, gone (recreate).
VM_STATES = {"READY": "ready", "CREATING": "wait", "STARTING": "wait",
             "RESTARTING": "wait", "REPAIRING": "wait", "DELETING": "wait",
             "PREEMPTED": "gone", "TERMINATED": "gone", "STOPPED": "gone",
             "STOPPING": "gone"}
QUEUED_STATES = {"ACTIVE": "ready", "ACCEPTED": "wait", "PROVISIONING": "wait",
                 "WAITING_FOR_RESOURCES": "wait", "CREATING": "wait",
                 "DELETING": "wait", "SUSPENDING": "gone", "SUSPENDED": "gone",
                 "FAILED": "gone"}


def parse_accelerator(accelerator: str) -> tuple[str, int]:
  """`v5p-64` -> ("v5p", 64); UserError for an unknown generation."""
  m = re.match(r"^(v[0-9a-z]+)-(\d+)$", accelerator or "")
  if not m or m[1] not in RUNTIMES:
    raise UserError(f"--accelerator={accelerator!r}: not a TPU type; use e.g. "
                    f"v5p-64, v5litepod-16, v6e-16 (generations: "
                    f"{', '.join(RUNTIMES)})")
  return m[1], int(m[2])


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

  def create(self) -> list[str]:
    if self.spot:
      return ["gcloud", "compute", "tpus", "queued-resources", "create",
              self.name, f"--node-id={self.name}", *self._where(),
              f"--accelerator-type={self.accelerator}",
              f"--runtime-version={self.runtime}", "--spot"]
    return ["gcloud", "compute", "tpus", "tpu-vm", "create", self.name,
            *self._where(), f"--accelerator-type={self.accelerator}",
            f"--version={self.runtime}"]

  def describe(self) -> list[str]:
    if self.spot:
      return ["gcloud", "compute", "tpus", "queued-resources", "describe",
              self.name, *self._where(), "--format=value(state.state)"]
    return ["gcloud", "compute", "tpus", "tpu-vm", "describe", self.name,
            *self._where(), "--format=value(state)"]

  def states(self) -> dict[str, str]:
    return QUEUED_STATES if self.spot else VM_STATES

  def delete(self) -> list[str]:
    if self.spot:
      return ["gcloud", "compute", "tpus", "queued-resources", "delete",
              self.name, *self._where(), "--force", "--quiet"]
    return ["gcloud", "compute", "tpus", "tpu-vm", "delete", self.name,
            *self._where(), "--quiet"]

  def ssh(self, *commands: list[str]) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.name,
            *self._where(), "--worker=all",
            f"--command={quoting.remote(*commands)}"]

  def scp(self, paths: list[str]) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", *paths,
            f"{self.name}:~/", *self._where(), "--worker=all"]


@dataclasses.dataclass(frozen=True)
class Install:
  """What each worker installs: jax[tpu] plus a wheel or a git revision."""
  wheel: str = ""  # A local .whl (copied over) or gs://.../x.whl.
  git: str = ""  # URL@REV, for pip's git+URL@REV.
  jax: str = "jax[tpu]"

  def __post_init__(self):
    for flag, value in (("--wheel", self.wheel), ("--git", self.git),
                        ("--jax", self.jax)):
      quoting.check_value(flag, value)
    if bool(self.wheel) == bool(self.git):
      raise UserError("--wheel/--git: name exactly one (a .whl built with "
                      "`pip wheel --no-deps .`, or --git=URL@REV)")
    if self.wheel and not self.wheel.endswith(".whl"):
      raise UserError(f"--wheel={self.wheel!r}: not a .whl file; build one with "
                      "`pip wheel --no-deps -w dist .`")

  def local_files(self) -> list[str]:
    return [self.wheel] if self.wheel and "://" not in self.wheel else []

  def commands(self) -> list[list[str]]:
    pip = ["python3", "-m", "pip", "install", "-U"]
    steps = [pip + [self.jax]]
    if self.git:
      return steps + [pip + [f"git+{self.git}"]]
    local = "./" + os.path.basename(self.wheel)
    if "://" in self.wheel:
      steps.append(["gcloud", "storage", "cp", self.wheel, local])
    return steps + [pip + [local]]


def check_workdirs(tpu: Slice, workload: Workload, babysit: bool) -> None:
  """A multi-host or babysat run keeps its workdir in a bucket (gs://)."""
  for w in workload.workdirs:
    if not w.startswith("gs://") and (tpu.hosts > 1 or babysit):
      why = f"{tpu.accelerator} has {tpu.hosts} hosts" if tpu.hosts > 1 else \
          "--babysit reads it and a recreated VM starts empty"
      raise UserError(f"--workdir/--root={w!r}: not on gs:// ({why}); use "
                      "gs://BUCKET/...")


def setup_steps(tpu: Slice, install: Install, config_file: str) -> list[tuple[str, list[str]]]:
  """(what, argv) to copy files to every worker and install there."""
  files = [config_file] + install.local_files()
  return [(f"copy {', '.join(os.path.basename(f) for f in files)} to every worker",
           tpu.scp(files)),
          ("install jax[tpu] and poisonjax on every worker",
           tpu.ssh(*install.commands()))]


def run_step(tpu: Slice, workload: Workload) -> tuple[str, list[str]]:
  return ("run on every worker (resumes from the newest checkpoint)",
          tpu.ssh(workload.command(PYTHON)))


def remote_config(config: str) -> str:
  """The config as workers see it: copied to ~ (the ssh command's cwd)."""
  path, sep, arg = config.partition(":")
  return os.path.basename(path) + sep + arg


def dry_run(tpu: Slice, setup, run, workdirs, babysit: bool,
            poll_s: float) -> list[str]:
  """Every gcloud command a launch of this slice would run, with comments."""
  kind = "queued spot resource" if tpu.spot else "TPU VM"
  hosts = f"{tpu.hosts} host" + ("s" if tpu.hosts > 1 else "")
  out = [f"# slice {tpu.name}: {kind} {tpu.accelerator} ({hosts}), "
         f"runtime {tpu.runtime}",
         "# create it (skipped when describe finds it READY: it is reused)",
         quoting.line(tpu.create())]
  for what, argv in list(setup) + [run]:
    out += [f"# {what}", quoting.line(argv)]
  if babysit:
    out += [f"# babysit: every {poll_s:g} s, until every "
            f"{workdirs[0]}/summary.json{' (and the others)' if len(workdirs) > 1 else ''}"
            " exists",
            quoting.line(tpu.describe()),
            "# when preempted or gone: delete, create, then copy, install and "
            "run again as above",
            quoting.line(tpu.delete()),
            quoting.line(tpu.create())]
  return out
