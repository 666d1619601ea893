"""GPU launches: one host (one process, all its GPUs) or one process per host.

Several hosts get the same command over ssh plus --coordinator_address
(first host, a free port), --num_processes and --process_id, the flags
`poisonjax train` and `study run` take (poisonjax/distributed.py). On a
SLURM cluster use launch/slurm.sbatch instead (srun, one task per node).
"""

from __future__ import annotations

import shlex
import subprocess

from poisonjax.errors import UserError
from poisonjax.launch import quoting
from poisonjax.launch.workload import PYTHON, Workload


def commands(workload: Workload, hosts: list[str], port: int = 8476,
             remote_dir: str = "", python=PYTHON) -> list[list[str]]:
  """The argv of every process: here (no hosts) or `ssh HOST CMD` per host."""
  for host in hosts:
    quoting.check_host("--hosts", host)
  quoting.check_value("--remote_dir", remote_dir)
  if not 0 < port < 65536:
    raise UserError(f"--port={port}: not a TCP port; use 1024-65535")
  argv = workload.command(python)
  if not hosts:
    return [argv]
  if len(hosts) > 1:
    coordinator = f"{hosts[0].split('@')[-1]}:{port}"
    argvs = [argv + [f"--coordinator_address={coordinator}",
                     f"--num_processes={len(hosts)}", f"--process_id={i}"]
             for i in range(len(hosts))]
  else:
    argvs = [argv]
  return [["ssh", host, _cd(remote_dir) + quoting.remote(a)]
          for host, a in zip(hosts, argvs)]


def _cd(remote_dir: str) -> str:
  """`cd DIR && ` with DIR quoted; a leading ~/ stays the remote home."""
  if not remote_dir:
    return ""
  if remote_dir.startswith("~/"):
    rest = remote_dir[2:]
    return "cd ~/" + (shlex.quote(rest) if rest else "") + " && "
  return f"cd {shlex.quote(remote_dir)} && "


def run(argvs: list[list[str]], log=print) -> int:
  """Starts every process (no local shell) and waits; the worst status."""
  procs = []
  for argv in argvs:
    log(quoting.line(argv))
    procs.append(subprocess.Popen(argv))
  return max(p.wait() for p in procs)
