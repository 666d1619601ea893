"""A stand-in for Cloud TPU on this machine: a fake `gcloud` for the rehearsal.

Installed as `gcloud` on PATH (`install(bin_dir, state_dir)`), it answers the
commands `poisonjax launch tpu` sends, with each slice's state in files
under FAKE_TPU_DIR/NAME/:

  tpu-vm create / queued-resources create   state CREATING (or ACCEPTED),
      fresh empty worker homes; READY (ACTIVE) at the next describe
  describe   the state (NOT_FOUND when absent); a DELETING slice is gone at
      the next describe
  delete     kills every worker's processes, state DELETING
  scp        copies the files into every worker's home
  ssh --worker=all --command=CMD   runs CMD with `bash -c` in every worker's
      home at once, as a local process with that worker's environment: HOME,
      JAX_COORDINATOR_ADDRESS (a port per creation), JAX_NUM_PROCESSES,
      JAX_PROCESS_ID, 4 CPU devices; every answer goes to transcript.jsonl

`preempt(state_dir, name)` kills a slice's workers (SIGKILL, like a VM that
vanishes) and sets PREEMPTED. The bootstrap script is the one thing not run
as is: the workers share this machine's Python environment, so scp puts in
its place a stand-in that checks that environment (Python >= 3.11, jax and
poisonjax import) and makes the venv's python run it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

from poisonjax.launch import tpu

BOOTSTRAP_STAND_IN = """#!/usr/bin/env bash
# Rehearsal stand-in for poisonjax_bootstrap.sh: checks, does not install.
set -euo pipefail
venv=$1
{python} -c "import sys, jax, poisonjax; assert sys.version_info >= (3, 11)"
mkdir -p "$venv/bin"
printf '#!/bin/sh\\nexec {python} "$@"\\n' > "$venv/bin/python"
chmod +x "$venv/bin/python"
echo "bootstrap (rehearsal): $venv runs {python}"
"""


def install(bin_dir, state_dir) -> dict:
  """Writes the fake `gcloud` into bin_dir; the environment to run it with."""
  os.makedirs(bin_dir, exist_ok=True)
  path = os.path.join(bin_dir, "gcloud")
  with open(path, "w") as f:
    f.write(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, "
            f"{os.path.dirname(os.path.abspath(__file__))!r})\n"
            "import fake_cloud_tpu\nsys.exit(fake_cloud_tpu.main(sys.argv[1:]))\n")
  os.chmod(path, 0o755)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_TPU_DIR": str(state_dir)}


def _slice_dir(state_dir, name: str) -> str:
  return os.path.join(str(state_dir), name)


def _read(state_dir, name: str) -> dict | None:
  try:
    with open(os.path.join(_slice_dir(state_dir, name), "state.json")) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def _write(state_dir, name: str, record: dict) -> None:
  path = os.path.join(_slice_dir(state_dir, name), "state.json")
  with open(path + ".tmp", "w") as f:
    json.dump(record, f)
  os.replace(path + ".tmp", path)


def _homes(state_dir, name: str, record: dict) -> list[str]:
  return [os.path.join(_slice_dir(state_dir, name), f"worker-{k}")
          for k in range(record["hosts"])]


def _kill_workers(state_dir, name: str, record: dict) -> None:
  """SIGKILL every detached run's session (supervisor and trainer)."""
  for home in _homes(state_dir, name, record):
    try:
      pid = int(open(os.path.join(home, ".poisonjax", "run",
                                  "supervisor.pid")).read())
      os.killpg(pid, signal.SIGKILL)
    except (OSError, ValueError):
      pass


def preempt(state_dir, name: str) -> None:
  record = _read(state_dir, name)
  _kill_workers(state_dir, name, record)
  _write(state_dir, name, dict(record, state="PREEMPTED"))


def shutdown(state_dir) -> None:
  """Kills every worker of every slice (the end of a rehearsal)."""
  for name in os.listdir(str(state_dir)):
    if not os.path.isdir(_slice_dir(state_dir, name)):
      continue
    record = _read(state_dir, name)
    if record is not None:
      _kill_workers(state_dir, name, record)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _flag(args, name: str) -> str:
  return next((a.split("=", 1)[1] for a in args if a.startswith(name + "=")), "")


def _create(state_dir, name: str, args, queued: bool) -> int:
  if _read(state_dir, name) is not None:
    print(f"ERROR: (gcloud) ALREADY_EXISTS: {name}", file=sys.stderr)
    return 1
  accelerator = _flag(args, "--accelerator-type")
  record = {"state": "ACCEPTED" if queued else "CREATING", "queued": queued,
            "hosts": tpu.Slice(name, "us-east5-a", accelerator).hosts,
            "port": _free_port()}
  shutil.rmtree(_slice_dir(state_dir, name), ignore_errors=True)
  for home in _homes(state_dir, name, record):
    os.makedirs(home)
  _write(state_dir, name, record)
  return 0


def _describe(state_dir, name: str, queued: bool) -> int:
  record = _read(state_dir, name)
  if record is None or record["state"] == "DELETING":
    shutil.rmtree(_slice_dir(state_dir, name), ignore_errors=True)
    print(f"ERROR: (gcloud) NOT_FOUND: {name}", file=sys.stderr)
    return 1
  print(record["state"])
  if record["state"] in ("CREATING", "ACCEPTED"):
    _write(state_dir, name, dict(record, state="ACTIVE" if queued else "READY"))
  return 0


def _scp(state_dir, name: str, record: dict, sources) -> int:
  for home in _homes(state_dir, name, record):
    for source in sources:
      target = os.path.join(home, os.path.basename(source))
      if os.path.basename(source) == tpu.BOOTSTRAP:
        with open(target, "w") as f:
          f.write(BOOTSTRAP_STAND_IN.format(python=sys.executable))
      else:
        shutil.copy(source, target)
  return 0


def _ssh(state_dir, name: str, record: dict, command: str) -> int:
  procs = []
  for k, home in enumerate(_homes(state_dir, name, record)):
    env = dict(os.environ, HOME=home, JAX_PROCESS_ID=str(k),
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{record['port']}",
               JAX_NUM_PROCESSES=str(record["hosts"]), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=4")
    procs.append(subprocess.Popen(["bash", "-c", command], cwd=home, env=env,
                                  stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  worst = 0
  with open(os.path.join(str(state_dir), "transcript.jsonl"), "a") as log:
    for k, proc in enumerate(procs):
      out, _ = proc.communicate()
      print(out, end="")
      worst = max(worst, proc.returncode)
      log.write(json.dumps({"slice": name, "worker": k, "command": command,
                            "status": proc.returncode, "output": out}) + "\n")
  return worst


def main(args) -> int:
  state_dir = os.environ["FAKE_TPU_DIR"]
  if args[:2] != ["compute", "tpus"] or len(args) < 5:
    print(f"ERROR: fake gcloud: unsupported {args}", file=sys.stderr)
    return 2
  kind, verb = args[2], args[3]
  queued = kind == "queued-resources"
  positional = [a for a in args[4:] if not a.startswith("--")]
  if verb == "scp":
    name = positional[-1].split(":")[0]
  else:
    name = positional[0]
  if verb == "create":
    return _create(state_dir, name, args, queued)
  if verb == "describe":
    return _describe(state_dir, name, queued)
  record = _read(state_dir, name)
  if record is None:
    print(f"ERROR: (gcloud) NOT_FOUND: {name}", file=sys.stderr)
    return 1
  if verb == "delete":
    _kill_workers(state_dir, name, record)
    _write(state_dir, name, dict(record, state="DELETING"))
    return 0
  if record["state"] not in ("READY", "ACTIVE"):
    print(f"ERROR: (gcloud) {name} is {record['state']}", file=sys.stderr)
    return 1
  if verb == "scp":
    return _scp(state_dir, name, record, positional[:-1])
  if verb == "ssh":
    return _ssh(state_dir, name, record, _flag(args, "--command"))
  print(f"ERROR: fake gcloud: unsupported verb {verb}", file=sys.stderr)
  return 2
