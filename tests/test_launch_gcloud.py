"""Every gcloud command `launch tpu --dry-run` prints, parsed by the real CLI.

Where `gcloud` is on PATH, each distinct command of five dry runs (a
single-host slice, a multi-host slice, a queued spot slice, a babysat run, a
grid) is run by the real Google Cloud CLI with a fresh config and home, no
CLOUDSDK_*/GOOGLE_* variables of the caller, no GCE metadata look-up, and
the TPU API pointed at a closed port on 127.0.0.1. With no account, gcloud
stops right after parsing with "You do not currently have an active account
selected": a command passes only where stderr says so (the exit status is
1 for both that and some parse errors). A deliberately wrong flag must fail
with "unrecognized arguments", so the check can fail.
"""

import concurrent.futures
import os
import shlex
import shutil
import socket

import pytest

from poisonjax import cli

GIT = "https://github.com/example/poisonjax@abc123"
RUN = "size=600m_n=250_seed=0_data=1.0"
COMMON = ["--project=poisonjax-parse-check", f"--git={GIT}"]
DRY_RUNS = {
    "single-host slice": ["--name=pj", "--zone=us-east5-a", "--accelerator=v5p-8",
                          f"--config=configs/paper/paper.py:run={RUN}",
                          f"--workdir=gs://bkt/study/{RUN}"],
    "multi-host slice": ["--name=pj", "--zone=us-east5-a", "--accelerator=v5p-64",
                         f"--config=configs/paper/paper.py:run={RUN}",
                         f"--workdir=gs://bkt/study/{RUN}"],
    "queued spot slice": ["--name=pj", "--zone=us-central1-a", "--spot",
                          "--accelerator=v5litepod-16", "--one_slice",
                          "--config=configs/paper/paper.py",
                          "--root=gs://bkt/study", "--only=size=600m_n=250"],
    "babysat run": ["--name=pj", "--zone=us-east5-b", "--accelerator=v6e-8",
                    "--babysit", f"--config=configs/paper/paper.py:run={RUN}",
                    f"--workdir=gs://bkt/study/{RUN}"],
    "grid": ["--name=pj", "--zone=us-east5-a", "--accelerator=v5p-16", "--babysit",
             "--spot", "--config=configs/paper/paper.py", "--root=gs://bkt/study",
             "--only=size=600m_n=250_seed=0", "--max_parallel=2"],
}
NO_ACCOUNT = "You do not currently have an active account selected"

pytestmark = pytest.mark.skipif(shutil.which("gcloud") is None,
                                reason="gcloud (google-cloud-cli) is not on PATH")


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]  # Closed once the socket is.


def _gcloud_env(tmp_path) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("CLOUDSDK_", "GOOGLE_", "GCE_"))}
  endpoint = f"http://127.0.0.1:{_closed_port()}/"
  env.update(HOME=str(tmp_path / "home"), CLOUDSDK_CONFIG=str(tmp_path / "config"),
             CLOUDSDK_CORE_CHECK_GCE_METADATA="false",
             CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="true",
             CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="true",
             CLOUDSDK_API_ENDPOINT_OVERRIDES_TPU=endpoint,
             CLOUDSDK_API_ENDPOINT_OVERRIDES_STORAGE=endpoint)
  os.makedirs(env["HOME"], exist_ok=True)
  return env


def _gcloud_commands(capsys) -> list[list[str]]:
  commands = []
  for args in DRY_RUNS.values():
    assert cli.main(["poisonjax", "launch", "tpu", *COMMON, *args, "--dry-run"]) == 0
    for line in capsys.readouterr().out.splitlines():
      if line.startswith("gcloud "):
        argv = shlex.split(line)
        if argv not in commands:
          commands.append(argv)
  return commands


def _parse(argv, env):
  import subprocess
  result = subprocess.run(argv, env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
  return argv, result.returncode, result.stderr


def test_every_dry_run_command_parses_in_the_real_gcloud(capsys, tmp_path):
  commands = _gcloud_commands(capsys)
  verbs = {" ".join(c[3:5]) for c in commands}
  assert {"tpu-vm create", "tpu-vm describe", "tpu-vm delete", "tpu-vm ssh",
          "tpu-vm scp", "queued-resources create", "queued-resources describe",
          "queued-resources delete"} <= verbs
  wrong = ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pj",
           "--zone=us-east5-a", "--project=poisonjax-parse-check", "--force"]
  env = _gcloud_env(tmp_path)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(lambda c: _parse(c, env), commands + [wrong]))
  *checked, (_, wrong_status, wrong_err) = results
  failed = [(shlex.join(a), err.strip().splitlines()[:2])
            for a, _, err in checked if NO_ACCOUNT not in err]
  assert not failed, failed
  assert wrong_status != 0 and "unrecognized arguments" in wrong_err
  print(f"{len(commands)} distinct gcloud commands parsed by the real CLI")
