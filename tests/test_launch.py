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
PIP_TPU = "python3 -m pip install -U '\"'\"'jax[tpu]'\"'\"'"


def _dry(capsys, *args) -> list[str]:
  assert cli.main(["poisonjax", *args, "--dry-run"]) == 0
  return capsys.readouterr().out.splitlines()


def test_dry_run_single_slice(capsys):
  out = _dry(capsys, "launch", "tpu", "--name=pj", "--zone=us-east5-a",
             "--accelerator=v5p-64", f"--git={GIT}",
             f"--config=configs/study_paper.py:run={RUN}",
             f"--workdir=gs://bkt/study/{RUN}")
  assert out == [
      "# slice pj: TPU VM v5p-64 (8 hosts), runtime v2-alpha-tpuv5",
      "# create it (skipped when describe finds it READY: it is reused)",
      "gcloud compute tpus tpu-vm create pj --zone=us-east5-a "
      "--accelerator-type=v5p-64 --version=v2-alpha-tpuv5",
      "# copy study_paper.py to every worker",
      "gcloud compute tpus tpu-vm scp configs/study_paper.py 'pj:~/' "
      "--zone=us-east5-a --worker=all",
      "# install jax[tpu] and poisonjax on every worker",
      "gcloud compute tpus tpu-vm ssh pj --zone=us-east5-a --worker=all "
      f"'--command={PIP_TPU} && python3 -m pip install -U git+{GIT}'",
      "# run on every worker (resumes from the newest checkpoint)",
      "gcloud compute tpus tpu-vm ssh pj --zone=us-east5-a --worker=all "
      f"'--command=python3 -m poisonjax.cli train --config=study_paper.py:run={RUN} "
      f"--workdir=gs://bkt/study/{RUN}'"]


def test_dry_run_queued_spot_slice_with_a_queued_grid(capsys):
  out = _dry(capsys, "launch", "tpu", "--name=pj", "--zone=us-central2-b",
             "--accelerator=v5litepod-16", "--spot", "--project=my-proj",
             "--wheel=gs://bkt/poisonjax-0.1-py3-none-any.whl", "--one_slice",
             "--config=configs/study_paper.py", "--root=gs://bkt/study",
             "--only=size=600m_n=250_seed=0")
  where = "--zone=us-central2-b --project=my-proj"
  whl = "poisonjax-0.1-py3-none-any.whl"
  assert out == [
      "# slice pj: queued spot resource v5litepod-16 (4 hosts), runtime "
      "v2-alpha-tpuv5-lite",
      "# create it (skipped when describe finds it READY: it is reused)",
      f"gcloud compute tpus queued-resources create pj --node-id=pj {where} "
      "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot",
      "# copy study_paper.py to every worker",
      f"gcloud compute tpus tpu-vm scp configs/study_paper.py 'pj:~/' {where} "
      "--worker=all",
      "# install jax[tpu] and poisonjax on every worker",
      f"gcloud compute tpus tpu-vm ssh pj {where} --worker=all "
      f"'--command={PIP_TPU} && gcloud storage cp gs://bkt/{whl} ./{whl} && "
      f"python3 -m pip install -U ./{whl}'",
      "# run on every worker (resumes from the newest checkpoint)",
      f"gcloud compute tpus tpu-vm ssh pj {where} --worker=all '--command="
      "python3 -m poisonjax.cli study run --config=study_paper.py "
      "--root=gs://bkt/study --only=size=600m_n=250_seed=0'"]


def test_dry_run_babysat_run(capsys):
  out = _dry(capsys, "launch", "tpu", "--name=pj", "--zone=us-east5-a",
             "--accelerator=v6e-8", f"--git={GIT}", "--babysit", "--poll_s=30",
             f"--config=configs/study_paper.py:run={RUN}",
             f"--workdir=gs://bkt/study/{RUN}")
  assert out[0] == "# slice pj: TPU VM v6e-8 (1 host), runtime v2-alpha-tpuv6e"
  create = ("gcloud compute tpus tpu-vm create pj --zone=us-east5-a "
            "--accelerator-type=v6e-8 --version=v2-alpha-tpuv6e")
  assert out[2] == create
  assert out[-5:] == [
      f"# babysit: every 30 s, until every gs://bkt/study/{RUN}/summary.json exists",
      "gcloud compute tpus tpu-vm describe pj --zone=us-east5-a "
      "'--format=value(state)'",
      "# when preempted or gone: delete, create, then copy, install and run "
      "again as above",
      "gcloud compute tpus tpu-vm delete pj --zone=us-east5-a --quiet",
      create]


def test_dry_run_grid_one_slice_per_run(capsys):
  out = _dry(capsys, "launch", "tpu", "--name=pj", "--zone=us-east5-a",
             f"--git={GIT}", "--config=configs/study_paper.py",
             "--root=gs://bkt/study", "--only=size=600m_n=250_seed=0")
  creates = [l for l in out if l.startswith("gcloud") and " create " in l]
  assert [shlex.split(l)[5] for l in creates] == [
      "pj-600m-n250-s0-d1p0", "pj-600m-n250-s0-d0p5", "pj-600m-n250-s0-d2p0"]
  assert any(f"--config=study_paper.py:run={RUN} --workdir=gs://bkt/study/{RUN}"
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
                   f"--git={GIT}", f"--config=configs/study_paper.py:run={RUN}",
                   f"--workdir={workdir}", f"--set=data.tfds.data_dir={workdir}")
  gpu_lines = _dry(capsys, "launch", "gpu", "--hosts=a,b",
                   f"--remote_dir={tmp_path}", "--config=configs/cpu_micro.py",
                   f"--workdir={workdir}")
  fake = tmp_path / "python3"
  fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                  "open('argv.json', 'w').write(json.dumps(sys.argv[1:]))\n")
  fake.chmod(0o755)
  env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
  for line in [tpu_lines[-1], gpu_lines[0]]:
    remote = _remote_of(line)
    if remote.startswith("cd "):
      remote = remote.split(" && ", 1)[1]
    subprocess.run(["sh", "-c", remote], cwd=tmp_path, env=env, check=True)
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert f"--workdir={workdir}" in argv
    if line is tpu_lines[-1]:
      assert argv[-1] == f"--config.data.tfds.data_dir={workdir}"
    assert argv[:3] == ["-m", "poisonjax.cli", "train"]
    assert not (tmp_path / "PWNED").exists()


def test_slurm_template_passes_each_value_as_one_argument(tmp_path):
  """launch/slurm.sbatch under a fake srun/scontrol: the train argv, exactly."""
  fakes = {
      "scontrol": "#!/bin/sh\nprintf 'node-a\\nnode-b\\n'\n",
      "srun": "#!/bin/sh\nwhile [ \"${1#--}\" != \"$1\" ]; do shift; done\n"
              "SLURM_NTASKS=2 SLURM_PROCID=1 exec \"$@\"\n",
      "python3": f"#!{sys.executable}\nimport json, sys\n"
                 "open('argv.json', 'w').write(json.dumps(sys.argv[1:]))\n"}
  for name, text in fakes.items():
    (tmp_path / name).write_text(text)
    (tmp_path / name).chmod(0o755)
  workdir = "/shared/runs/a b; touch PWNED"
  env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "CONFIG": "configs/x.py:run=r",
         "WORKDIR": workdir, "SLURM_JOB_NODELIST": "node-[a-b]"}
  template = os.path.join(os.path.dirname(__file__), "..", "launch", "slurm.sbatch")
  subprocess.run(["bash", template], cwd=tmp_path, env=env, check=True)
  argv = json.loads((tmp_path / "argv.json").read_text())
  assert argv == ["-m", "poisonjax.cli", "train", "--config=configs/x.py:run=r",
                  f"--workdir={workdir}", "--coordinator_address=node-a:8476",
                  "--num_processes=2", "--process_id=1"]
  assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("args,needle", [
    (["launch", "tpu", "--name=pj;id", "--zone=z1", f"--git={GIT}",
      "--config=configs/cpu_micro.py", "--workdir=gs://b/x"], "--name="),
    (["launch", "tpu", "--name=pj", "--zone=z1", f"--git={GIT}",
      "--config=configs/cpu_micro.py", "--workdir=gs://b/x\nid"], "newline"),
    (["launch", "tpu", "--name=pj", "--zone=z1", f"--git={GIT}",
      "--accelerator=v5p-64", "--config=configs/cpu_micro.py",
      "--workdir=runs/x"], "not on gs://"),
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


FAKE_GCLOUD = """#!{python}
import json, os, sys, time
d = os.environ["FAKE_GCLOUD_DIR"]
args = sys.argv[1:]
with open(os.path.join(d, "calls.jsonl"), "a") as f:
  f.write(json.dumps(args) + "\\n")
states = open(os.path.join(d, "states")).read().split()
ptr_file = os.path.join(d, "ptr")
def ptr():
  return int(open(ptr_file).read()) if os.path.exists(ptr_file) else 0
def last_state():  # The state the latest describe answered.
  return states[min(ptr(), len(states)) - 1]
if "describe" in args:
  state = states[min(ptr(), len(states) - 1)]
  n = ptr() + 1
  with open(ptr_file + ".tmp", "w") as f:
    f.write(str(n))
  os.replace(ptr_file + ".tmp", ptr_file)  # The waiting run reads it whole.
  if state == "NOT_FOUND":
    sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: pj")
  print(state)
elif any("poisonjax.cli" in a for a in args):
  runs = sum("poisonjax.cli" in l for l in open(os.path.join(d, "calls.jsonl")))
  if runs == 1:  # The first run lasts until the slice is preempted.
    deadline = time.time() + 20
    while last_state() == "READY" and time.time() < deadline:
      time.sleep(0.01)
    sys.exit(255)
  open(os.path.join(d, "finished"), "w").write("done")
"""


def test_babysitter_recreates_and_resumes_once_per_preemption(tmp_path, monkeypatch):
  (tmp_path / "states").write_text(
      "NOT_FOUND CREATING READY READY PREEMPTED CREATING READY")
  gcloud = tmp_path / "gcloud"
  gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
  gcloud.chmod(0o755)
  monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
  monkeypatch.setenv("FAKE_GCLOUD_DIR", str(tmp_path))
  s = tpu.Slice("pj", "us-east5-a", "v5p-8")
  w = workload.single("study_paper.py:run=" + RUN, f"gs://bkt/{RUN}")
  asked = []

  def read_summary(workdirs):  # Stands in for summary.json on gs://.
    asked.append(workdirs)
    return (tmp_path / "finished").exists()

  sitter = babysit.Sitter(
      s, tpu.setup_steps(s, tpu.Install(git=GIT), "configs/study_paper.py"),
      tpu.run_step(s, w), w.workdirs, is_finished=read_summary, log=lambda _: None)
  assert babysit.sit([sitter], poll_s=0.01, max_polls=60) == 0
  calls = [json.loads(l) for l in (tmp_path / "calls.jsonl").read_text().splitlines()]
  def verb(c):  # c: gcloud's arguments, ["compute", "tpus", "tpu-vm", VERB, ...].
    if c[3] == "ssh":
      return "run" if "poisonjax.cli" in c[-1] else "install"
    return c[3]

  acts = [verb(c) for c in calls if verb(c) != "describe"]
  assert acts == ["create", "scp", "install", "run",
                  "delete", "create", "scp", "install", "run"]
  assert sitter.creations == 2 and sitter.runs == 2
  runs = [c for c in calls if "poisonjax.cli" in c[-1]]
  assert runs[0] == runs[1]  # The same command: train resumes the workdir.
  assert asked and set(asked) == {(f"gs://bkt/{RUN}",)}


def test_babysitter_gives_up_on_a_run_that_keeps_failing(tmp_path, monkeypatch):
  calls = []

  class Done:
    returncode = 1
    def poll(self):
      return 1

  def call(argv):
    calls.append(argv)
    out = "READY\n" if "describe" in argv else ""
    return subprocess.CompletedProcess(argv, 0, out, "")

  s = tpu.Slice("pj", "us-east5-a", "v5p-8")
  w = workload.single("c.py", "gs://bkt/x")
  sitter = babysit.Sitter(s, [], tpu.run_step(s, w), w.workdirs,
                          is_finished=lambda _: False, call=call,
                          start=lambda argv: Done(), log=lambda _: None,
                          max_failures=2)
  with pytest.raises(Exception, match="ended without finishing 3 times"):
    babysit.sit([sitter], poll_s=0, max_polls=50)
  assert sitter.runs == 3 and sitter.creations == 0


def test_babysitter_stops_at_once_when_gcloud_is_not_set_up():
  def call(argv):
    return subprocess.CompletedProcess(argv, 1, "", (
        "ERROR: (gcloud.compute.tpus.tpu-vm.describe) The required property "
        "[project] is not currently set.\nIt can be set in these ways:"))

  s = tpu.Slice("pj", "us-east5-a", "v5p-8")
  w = workload.single("c.py", "gs://bkt/x")
  sitter = babysit.Sitter(s, [], tpu.run_step(s, w), w.workdirs,
                          is_finished=lambda _: False, call=call,
                          log=lambda _: None)
  with pytest.raises(Exception, match=r"describe` failed: ERROR.*\[project\]"):
    babysit.sit([sitter], poll_s=0, max_polls=5)
