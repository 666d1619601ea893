"""A workload that outlives the ssh call that starts it (run on each worker).

    python -m poisonjax.launch.detached start --log_dir=gs://B/run/logs \
        --heartbeat_s=60 -- -m poisonjax.cli train --config=... --workdir=...

`start` returns at once. If this host's supervisor is alive it says so and
starts nothing (so a launcher that lost its connection, or was restarted,
can send the same command again). Else it spawns `supervise` in a session
of its own (setsid: no hang-up when ssh goes), which runs `python ARGS...`
with its output in ~/.poisonjax/run/host.log and, every heartbeat_s and
at the end, copies that log to LOG_DIR/host-K.log and writes
LOG_DIR/host-K.json: {"state": "running"|"exited", "beat": n, "status":
exit status}. K is the worker's number on the slice. The launcher reads
those files (launch.watch); nothing else connects the two.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from poisonjax import files

STATE_DIR = os.path.join("~", ".poisonjax", "run")
_METADATA = "/computeMetadata/v1/instance/attributes/agent-worker-number"


def host_index() -> str:
  """This worker's number on its slice: from JAX's variables, else the VM's
  metadata (as JAX's own Cloud TPU detection reads it), else the hostname."""
  for var in ("JAX_PROCESS_ID", "TPU_WORKER_ID"):
    if os.environ.get(var, "").isdigit():
      return os.environ[var]
  host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
  request = urllib.request.Request(f"http://{host}{_METADATA}",
                                   headers={"Metadata-Flavor": "Google"})
  try:
    with urllib.request.urlopen(request, timeout=2) as answer:
      return answer.read().decode().strip()
  except OSError:
    return socket.gethostname()


def _state_dir() -> str:
  path = os.path.expanduser(STATE_DIR)
  os.makedirs(path, exist_ok=True)
  return path


def _alive(pid_file: str) -> int | None:
  """The supervisor's pid if it still runs, else None."""
  try:
    pid = int(open(pid_file).read().split()[0])
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      alive = b"poisonjax.launch.detached" in f.read()
    return pid if alive else None
  except (OSError, ValueError, IndexError):
    return None


def start(args) -> int:
  state = _state_dir()
  pid_file = os.path.join(state, "supervisor.pid")
  host = host_index()
  pid = _alive(pid_file)
  if pid is not None:
    print(f"[host {host}] already running (supervisor pid {pid}); started nothing")
    return 0
  argv = [sys.executable, "-m", "poisonjax.launch.detached", "supervise",
          f"--log_dir={args.log_dir}", f"--heartbeat_s={args.heartbeat_s:g}",
          f"--host={host}", "--", *args.command]
  with open(os.path.join(state, "supervisor.log"), "ab") as log:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
  with open(pid_file + ".tmp", "w") as f:
    f.write(f"{proc.pid}\n")
  os.replace(pid_file + ".tmp", pid_file)
  print(f"[host {host}] started (supervisor pid {proc.pid}); log: "
        f"{args.log_dir}/host-{host}.log")
  return 0


class _Reporter:
  """Copies the local log and a status record to LOG_DIR, best effort."""

  def __init__(self, log_dir: str, host: str, local_log: str):
    self.local_log = local_log
    self.dir = files.as_path(log_dir)
    self.host, self.beat = host, 0

  def report(self, state: str, **extra) -> None:
    self.beat += 1
    record = {"host": self.host, "state": state, "beat": self.beat,
              "time": time.time(), "pid": os.getpid(), **extra}
    try:
      self.dir.mkdir(parents=True, exist_ok=True)
      with open(self.local_log, "rb") as f:
        (self.dir / f"host-{self.host}.log").write_bytes(f.read())
      (self.dir / f"host-{self.host}.json").write_text(json.dumps(record))
    except Exception as e:  # pylint: disable=broad-except
      # A blip of the store must not stop the run; the next beat retries.
      print(f"detached: could not write {self.dir}: {e}", file=sys.stderr)


def supervise(args) -> int:
  """Runs the workload, reporting every heartbeat_s; forwards SIGTERM/INT."""
  local_log = os.path.join(_state_dir(), "host.log")
  with open(local_log, "ab") as log:
    child = subprocess.Popen([sys.executable, *args.command],
                             stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT)
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, _: child.send_signal(signum))
  reporter = _Reporter(args.log_dir, args.host, local_log)
  reporter.report("running", command=args.command)
  while True:
    try:
      status = child.wait(timeout=args.heartbeat_s)
      break
    except subprocess.TimeoutExpired:
      reporter.report("running")
  reporter.report("exited", status=status)
  return status


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  ours, command = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) \
      if "--" in argv else (argv, [])
  parser = argparse.ArgumentParser(
      prog="python -m poisonjax.launch.detached",
      usage="%(prog)s start|supervise --log_dir=DIR [--heartbeat_s=S] -- ARGS...")
  parser.add_argument("action", choices=("start", "supervise"))
  parser.add_argument("--log_dir", required=True)
  parser.add_argument("--heartbeat_s", type=float, default=60.0)
  parser.add_argument("--host", default="")
  args = parser.parse_args(ours)
  if not command:
    parser.error("no command after --")
  args.command = command
  return start(args) if args.action == "start" else supervise(args)


if __name__ == "__main__":
  sys.exit(main())
