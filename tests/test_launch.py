"""Launchers: dry-run command lines, shell-injection safety, the babysitter."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from poisonjax import cli
from poisonjax.launch import babysit, tpu, workload

RUN = "size=600m_n=250_seed=0_data=1.0"
GIT = "https://github.com/example/poisonjax@abc123"
JAX = tpu.local_jax()
BOOT = tpu.BOOTSTRAP_PATH
DETACHED = ".poisonjax/venv/bin/python -m poisonjax.launch.detached start"


def _dry(capsys, *args) -> list[str]:
  assert cli.main(["poisonjax", *args, "--dry-run"]) == 0
  return capsys.readouterr().out.splitlines()


def test_dry_run_single_slice(capsys):
  out = _dry(capsys, "launch", "tpu", "--name=pj", "--zone=us-east5-a",
             "--accelerator=v5p-64", f"--git={GIT}",
             f"--config=configs/paper/paper.py:run={RUN}",
             f"--workdir=gs://bkt/study/{RUN}")
  where = "--zone=us-east5-a"
  logs = f"gs://bkt/study/{RUN}/logs"
  assert out == [
      "# slice pj: TPU VM v5p-64 (8 hosts), runtime v2-alpha-tpuv5 "
      "(Ubuntu 22.04, Python 3.10)",
      "# create it (skipped when describe finds it READY: it is reused)",
      f"gcloud compute tpus tpu-vm create pj {where} "
      "--accelerator-type=v5p-64 --version=v2-alpha-tpuv5 --async",
      "# copy paper.py, poisonjax_bootstrap.sh to every worker",
      f"gcloud compute tpus tpu-vm scp configs/paper/paper.py {BOOT} 'pj:~/' "
      f"{where} --worker=all",
      "# bootstrap every worker: ~/.poisonjax/venv with Python 3.11 (uv), "
      "jax[tpu] and poisonjax; seconds when already there",
      f"gcloud compute tpus tpu-vm ssh pj {where} --worker=all "
      f"'--command=bash poisonjax_bootstrap.sh .poisonjax/venv 3.11 "
      f"'\"'\"'{JAX}'\"'\"' git+{GIT}'",
      f"# start the run detached on every worker (log: {logs}/host-K.log; "
      "resumes from the newest checkpoint; nothing if running)",
      f"gcloud compute tpus tpu-vm ssh pj {where} --worker=all "
      f"'--command={DETACHED} --log_dir={logs} --heartbeat_s=60 -- -m "
      f"poisonjax.cli train --config=paper.py:run={RUN} "
      f"--workdir=gs://bkt/study/{RUN}'",
      f"# watch: every 60 s, until gs://bkt/study/{RUN}/summary.json exists; "
      "the run's heartbeat is read from its log folder and lock.json",
      f"gcloud compute tpus tpu-vm describe pj {where} '--format=value(state)'"]


def test_dry_run_queued_spot_slice_with_a_queued_grid(capsys):
  out = _dry(capsys, "launch", "tpu", "--name=pj", "--zone=us-central1-a",
             "--accelerator=v5litepod-16", "--spot", "--project=my-proj",
             "--wheel=gs://bkt/poisonjax-0.1-py3-none-any.whl", "--one_slice",
             "--python=3.12", "--jax=jax[tpu]==0.10.2",
             "--config=configs/paper/paper.py", "--root=gs://bkt/study",
             "--only=size=600m_n=250_seed=0")
  where = "--zone=us-central1-a --project=my-proj"
  whl = "poisonjax-0.1-py3-none-any.whl"
  assert out[:8] == [
      "# slice pj: queued spot resource v5litepod-16 (4 hosts), runtime "
      "v2-alpha-tpuv5-lite (Ubuntu 22.04, Python 3.10)",
      "# create it (skipped when describe finds it READY: it is reused)",
      f"gcloud compute tpus queued-resources create pj --node-id=pj {where} "
      "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite "
      "--spot --async",
      "# copy paper.py, poisonjax_bootstrap.sh to every worker",
      f"gcloud compute tpus tpu-vm scp configs/paper/paper.py {BOOT} 'pj:~/' "
      f"{where} --worker=all",
      "# bootstrap every worker: ~/.poisonjax/venv with Python 3.12 (uv), "
      "jax[tpu] and poisonjax; seconds when already there",
      f"gcloud compute tpus tpu-vm ssh pj {where} --worker=all "
      f"'--command=gcloud storage cp gs://bkt/{whl} ./{whl} && bash "
      "poisonjax_bootstrap.sh .poisonjax/venv 3.12 "
      f"'\"'\"'jax[tpu]==0.10.2'\"'\"' ./{whl}'",
      "# start the run detached on every worker (log: gs://bkt/study/logs/"
      "host-K.log; resumes from the newest checkpoint; nothing if running)"]
  assert out[8] == (
      f"gcloud compute tpus tpu-vm ssh pj {where} --worker=all '--command="
      f"{DETACHED} --log_dir=gs://bkt/study/logs --heartbeat_s=60 -- -m "
      "poisonjax.cli study run --config=paper.py --root=gs://bkt/study "
      "--only=size=600m_n=250_seed=0'")
  assert out[-1] == (f"gcloud compute tpus queued-resources describe pj {where} "
                     "'--format=value(state.state)'")


def test_dry_run_babysat_run(capsys):
  out = _dry(capsys, "launch", "tpu", "--name=pj", "--zone=us-east5-b",
             "--accelerator=v6e-8", f"--git={GIT}", "--babysit", "--poll_s=30",
             f"--config=configs/paper/paper.py:run={RUN}",
             f"--workdir=gs://bkt/study/{RUN}")
  assert out[0] == ("# slice pj: TPU VM v6e-8 (1 host), runtime v2-alpha-tpuv6e "
                    "(Ubuntu 22.04, Python 3.10)")
  create = ("gcloud compute tpus tpu-vm create pj --zone=us-east5-b "
            "--accelerator-type=v6e-8 --version=v2-alpha-tpuv6e --async")
  assert out[2] == create
  assert out[-5:] == [
      f"# watch: every 30 s, until gs://bkt/study/{RUN}/summary.json exists; "
      "the run's heartbeat is read from its log folder and lock.json",
      "gcloud compute tpus tpu-vm describe pj --zone=us-east5-b "
      "'--format=value(state)'",
      "# when preempted, failed or gone: delete, create, then copy, bootstrap "
      "and start again as above",
      "gcloud compute tpus tpu-vm delete pj --zone=us-east5-b --quiet --async",
      create]


def test_dry_run_grid_one_slice_per_run(capsys):
  out = _dry(capsys, "launch", "tpu", "--name=pj", "--zone=us-east5-a",
             f"--git={GIT}", "--config=configs/paper/paper.py",
             "--root=gs://bkt/study", "--only=size=600m_n=250_seed=0")
  creates = [l for l in out if l.startswith("gcloud") and " create " in l]
  assert [shlex.split(l)[5] for l in creates] == [
      "pj-600m-n250-s0-d1p0", "pj-600m-n250-s0-d0p5", "pj-600m-n250-s0-d2p0"]
  assert any(f"--config=paper.py:run={RUN} --workdir=gs://bkt/study/{RUN}"
             in l for l in out)


def test_dry_run_gpu_pair(capsys):
  out = _dry(capsys, "launch", "gpu", "--hosts=gpu0,ubuntu@gpu1",
             "--remote_dir=~/poisonjax", "--config=configs/cpu_micro.py",
             "--workdir=/shared/runs/x")
  cmd = ("cd ~/poisonjax && python3 -m poisonjax.cli train "
         "--config=configs/cpu_micro.py --workdir=/shared/runs/x "
         "--coordinator_address=gpu0:8476 --num_processes=2")
  assert out == [f"ssh gpu0 '{cmd} --process_id=0'",
                 f"ssh ubuntu@gpu1 '{cmd} --process_id=1'"]
  one = _dry(capsys, "launch", "gpu", "--config=configs/cpu_micro.py",
             "--workdir=runs/x")
  assert one == ["python3 -m poisonjax.cli train --config=configs/cpu_micro.py "
                 "--workdir=runs/x"]


NASTY = ["gs://bkt/x; touch PWNED", "gs://bkt/$(touch PWNED)",
         "gs://bkt/`touch PWNED`", "gs://bkt/it's \"q\" && touch PWNED",
         "gs://bkt/a|touch PWNED&"]


def _remote_of(line: str) -> str:
  words = shlex.split(line)
  if words[0] == "ssh":
    return words[2]
  return next(w for w in words if w.startswith("--command="))[len("--command="):]


@pytest.mark.parametrize("workdir", NASTY)
def test_injection_is_quoted(workdir, capsys, tmp_path):
  """The remote strings, run by a real shell, pass each value as one word."""
  tpu_lines = _dry(capsys, "launch", "tpu", "--name=pj", "--zone=us-east5-a",
                   f"--git={GIT}", f"--config=configs/paper/paper.py:run={RUN}",
                   f"--workdir={workdir}", f"--set=data.tfds.data_dir={workdir}")
  gpu_lines = _dry(capsys, "launch", "gpu", "--hosts=a,b",
                   f"--remote_dir={tmp_path}", "--config=configs/cpu_micro.py",
                   f"--workdir={workdir}")
  record = (f"#!{sys.executable}\nimport json, sys\n"
            "open('argv.json', 'w').write(json.dumps(sys.argv[1:]))\n")
  venv_python = tmp_path / ".poisonjax" / "venv" / "bin" / "python"
  venv_python.parent.mkdir(parents=True)
  for fake in (tmp_path / "python3", venv_python):  # GPU hosts; TPU workers.
    fake.write_text(record)
    fake.chmod(0o755)
  env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
  (tpu_run,) = [l for l in tpu_lines if "poisonjax.launch.detached" in l]
  for line in [tpu_run, gpu_lines[0]]:
    remote = _remote_of(line)
    if remote.startswith("cd "):
      remote = remote.split(" && ", 1)[1]
    subprocess.run(["sh", "-c", remote], cwd=tmp_path, env=env, check=True)
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert f"--workdir={workdir}" in argv
    if line is tpu_run:
      assert argv[-1] == f"--config.data.tfds.data_dir={workdir}"
      assert argv[:5] == ["-m", "poisonjax.launch.detached", "start",
                          f"--log_dir={workdir}/logs", "--heartbeat_s=60"]
      argv = argv[argv.index("--") + 1:]
    assert argv[:3] == ["-m", "poisonjax.cli", "train"]
    assert not (tmp_path / "PWNED").exists()


def test_slurm_template_passes_each_value_as_one_argument(tmp_path):
  """launch/slurm.sbatch under a fake srun/scontrol: the train argv, exactly."""
  fakes = {
      "scontrol": "#!/bin/sh\nprintf 'node-a\\nnode-b\\n'\n",
      "srun": "#!/bin/sh\necho \"$@\" > srun_args.txt\n"
              "while [ \"${1#--}\" != \"$1\" ]; do shift; done\n"
              "SLURM_NTASKS=2 SLURM_PROCID=1 exec \"$@\"\n",
      "python3": f"#!{sys.executable}\nimport json, sys\n"
                 "open('argv.json', 'w').write(json.dumps(sys.argv[1:]))\n"}
  for name, text in fakes.items():
    (tmp_path / name).write_text(text)
    (tmp_path / name).chmod(0o755)
  workdir = "/shared/runs/a b; touch PWNED"
  env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "CONFIG": "configs/x.py:run=r",
         "WORKDIR": workdir, "SLURM_JOB_NODELIST": "node-[a-b]",
         "SLURM_CPUS_PER_TASK": "32"}
  template = os.path.join(os.path.dirname(__file__), "..", "launch", "slurm.sbatch")
  subprocess.run(["bash", template], cwd=tmp_path, env=env, check=True)
  argv = json.loads((tmp_path / "argv.json").read_text())
  assert argv == ["-m", "poisonjax.cli", "train", "--config=configs/x.py:run=r",
                  f"--workdir={workdir}", "--coordinator_address=node-a:8476",
                  "--num_processes=2", "--process_id=1"]
  assert not (tmp_path / "PWNED").exists()
  # Slurm >= 22.05: srun does not inherit --cpus-per-task from sbatch.
  assert "--cpus-per-task=32" in (tmp_path / "srun_args.txt").read_text().split()


TPU = ["launch", "tpu", "--name=pj", "--zone=us-east5-a", f"--git={GIT}",
       "--config=configs/cpu_micro.py"]


@pytest.mark.parametrize("args,needle", [
    (["launch", "tpu", "--name=pj;id", "--zone=us-east5-a", f"--git={GIT}",
      "--config=configs/cpu_micro.py", "--workdir=gs://b/x"], "--name="),
    (TPU + ["--workdir=gs://b/x\nid"], "newline"),
    (TPU + ["--accelerator=v5p-64", "--workdir=runs/x"],
     "not on gs:// (v5p-64 has 8 hosts)"),
    (TPU + ["--accelerator=v5litepod-16", "--workdir=gs://b/x"],
     "--zone=us-east5-a: does not offer v5litepod TPUs"),
    (TPU + ["--max_parallel=0", "--workdir=gs://b/x"], "--max_parallel=0"),
    (TPU + ["--max_creates=0", "--workdir=gs://b/x"], "--max_creates=0"),
    (TPU + ["--python=3.10", "--workdir=gs://b/x"], "--python='3.10'"),
    (TPU + ["--heartbeat_s=0", "--workdir=gs://b/x"], "--heartbeat_s=0"),
    (["launch", "gpu", "--hosts=-oProxyCommand=id,b",
      "--config=configs/cpu_micro.py", "--workdir=x"], "not a host name"),
    (["launch", "gpu", "--config=configs/cpu_micro.py",
      "--workdir=x", "--remote_dir=a\nb"], "newline"),
])
def test_bad_values_are_refused_in_one_line(args, needle, capsys):
  assert cli.main(["poisonjax", *args, "--dry-run"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("poisonjax: error: ") and needle in err
  assert len(err.splitlines()) == 1




def test_tpu_help_lists_the_bootstrap_and_babysitter_flags(capsys):
  assert cli.main(["poisonjax", "launch", "tpu", "--help"]) == 0
  out = capsys.readouterr().out
  for flag in ("--python=", "--jax=", "--wheel=", "--git=", "--max_parallel=",
               "--heartbeat_s=", "--max_creates=", "--backoff_s=", "--stuck_s=",
               "--[no]any_zone", "--[no]keep_slices"):
    assert flag in out, flag
  assert "uv" in out and "detached" in out


def test_any_zone_skips_the_zone_table(capsys):
  out = _dry(capsys, "launch", "tpu", "--name=pj", "--zone=us-east5-a",
             "--accelerator=v5litepod-8", "--any_zone", f"--git={GIT}",
             f"--config=configs/paper/paper.py:run={RUN}",
             f"--workdir=gs://bkt/study/{RUN}")
  assert "--accelerator-type=v5litepod-8" in out[2]
