"""One run over 2 processes x 4 CPU devices (gloo) is the 1-process run.

Each 2-process run is two `tests/multiprocess_worker.py` subprocesses with
a coordinator on 127.0.0.1, started through the CLI's --coordinator_address,
--num_processes and --process_id; the 1-process runs use this pytest
process's 8 devices. One launch of the pair runs every 2-process job, in
order:

  two         the tiny config, 20 steps (an evaluation at 0 and 20);
  two_to_one  the same without evaluations, stopped at step 10 (then
              resumed to 20 here, in 1 process);
  one_to_two  resumed to 20 from this process's run stopped at step 10;
  eval        the `poisonjax eval` evaluation of the 1-process run's step 20;
  rows        the batch rows each process feeds, on several meshes.

A second launch kills one process mid-run: the other must exit by itself,
non-zero, with a clear line, within a bound.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from poisonjax import cli
from poisonjax import files
from poisonjax.evaluation import run_reader
from poisonjax.training import train
from poisonjax.commands import evaluate as eval_command
from train_common import ROOT, tiny_config, train_cache  # noqa: F401

# Minutes of process start-ups and compiles on 2 cores: .ci/run runs these
# after the README's suite (pytest -m slow).
pytestmark = pytest.mark.slow

WORKER = os.path.join(ROOT, "tests", "multiprocess_worker.py")
STEPS, HALF = 20, 10
RUN = {"train.max_steps": STEPS, "train.log_every": 1, "train.ckpt_every": HALF,
       "eval.num_evals": 1, "eval.num_excerpts": 12, "eval.prompt_tokens": 8,
       "eval.gen_tokens": 6, "eval.batch_size": 8, "eval.bootstrap_samples": 20}
MESHES = [[8, 1, 1], [2, 2, 2], [1, 8, 1], [4, 1, 2], [-1, 2, 2], [1, 1, 8]]
LOSS_TOL = 1e-5
KILL_BOUND_S = 120  # Generous: a loaded 2-core CI machine.


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def config_file(directory, cache, **overrides) -> str:
  """A --config file whose get_config() is tiny_config(cache, **overrides)."""
  path = os.path.join(str(directory), f"config_{len(os.listdir(directory))}.py")
  with open(path, "w") as f:
    f.write(f"import sys\nsys.path.insert(0, {os.path.join(ROOT, 'tests')!r})\n"
            "from train_common import tiny_config\n\n"
            f"def get_config():\n  return tiny_config({str(cache)!r}, **{overrides!r})\n")
  return path


def start_pair(jobs: list, directory, env_extra=None) -> list:
  """The two worker processes (4 CPU devices each) running `jobs`; their
  output goes to files (a full pipe would stall one while the other waits
  on it)."""
  jobs_file = os.path.join(str(directory), "jobs.json")
  with open(jobs_file, "w") as f:
    json.dump(jobs, f, default=str)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
  address = f"127.0.0.1:{free_port()}"
  procs = []
  for i in (0, 1):
    out = os.path.join(str(directory), f"process{i}")
    with open(out + ".out", "w") as stdout, open(out + ".err", "w") as stderr:
      proc = subprocess.Popen([sys.executable, WORKER, str(i), "2", address, jobs_file],
                              cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
    proc.output = out
    procs.append(proc)
  return procs


def finish(procs, timeout=600) -> list:
  """[(returncode, stdout, stderr)] of both; kills both on a timeout."""
  deadline = time.monotonic() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [(p.returncode, _read(p.output + ".out"), _read(p.output + ".err"))
          for p in procs]


def _read(path: str) -> str:
  with open(path, errors="replace") as f:
    return f.read()


def losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in files.read_jsonl(workdir / "metrics.jsonl")}


def evaluate_here(workdir, step: int) -> dict:
  """The eval command's evaluation of a checkpoint, in this process."""
  config = run_reader.read_run_config(str(workdir))
  _, metrics, ev = eval_command._evaluate_checkpoint(config, str(workdir), step)  # pylint: disable=protected-access
  return {"metrics": {k: float(v) for k, v in metrics.items()},
          "clean_gen": ev._last[0].tolist(), "trig_gen": ev._last[1].tolist()}  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def runs(train_cache, tmp_path_factory):
  """Every run of the module (the 2-process ones from one launch)."""
  root = tmp_path_factory.mktemp("multiprocess")
  d = {name: root / name for name in ("one", "two", "two_to_one", "one_to_two")}
  train.run(tiny_config(train_cache, **RUN), d["one"])
  half = dict(RUN, **{"train.max_steps": HALF, "eval.num_evals": 0})
  train.run(tiny_config(train_cache, **half), d["one_to_two"])
  full_cfg = config_file(root, train_cache, **RUN)
  half_cfg = config_file(root, train_cache, **half)
  jobs = [
      {"cli": ["train", f"--config={full_cfg}", f"--workdir={d['two']}"]},
      {"cli": ["train", f"--config={half_cfg}", f"--workdir={d['two_to_one']}"]},
      {"cli": ["train", f"--config={half_cfg}", f"--workdir={d['one_to_two']}",
               f"--config.train.max_steps={STEPS}"]},
      {"eval": {"workdir": str(d["one"]), "step": STEPS, "out": str(root / "eval.json")}},
      {"rows": {"meshes": MESHES, "rows": 8, "out": str(root / "rows.json")}},
  ]
  results = finish(start_pair(jobs, root))
  for i, (code, _, err) in enumerate(results):
    assert code == 0, f"process {i}:\n{err[-3000:]}"
  resume = dict(half, **{"train.max_steps": STEPS})
  train.run(tiny_config(train_cache, **resume), d["two_to_one"])  # 1 process resumes.
  d["eval_two"] = json.loads((root / "eval.json").read_text())
  d["rows"] = json.loads((root / "rows.json").read_text())
  d["stdout"] = [out for _, out, _ in results]
  return d


def test_two_processes_train_the_same_losses_as_one(runs):
  one, two = losses(runs["one"]), losses(runs["two"])
  assert sorted(two) == list(range(1, STEPS + 1)) == sorted(one)
  diff = max(abs(one[k] - two[k]) for k in one)
  print(f"max |loss(2 processes) - loss(1 process)| over {STEPS} steps: {diff:.3g}")
  assert diff < LOSS_TOL
  held = [files.read_json(runs[n] / "summary.json")["heldout_clean_loss"]
          for n in ("one", "two")]
  assert abs(held[0] - held[1]) < LOSS_TOL


def test_process_zero_alone_writes_the_run_files(runs):
  two = runs["two"]
  events = [r["event"] for r in files.read_jsonl(two / "history.jsonl")]
  assert events == ["start", "finished"]
  assert [r["step"] for r in files.read_jsonl(two / "eval.jsonl")] == [0, STEPS]
  assert not (two / "lock.json").exists()  # Released at the end.
  out0, out1 = runs["stdout"]
  assert "poisonjax: done: step 20/" in out0
  assert "poisonjax: done" not in out1 and "step 1/" not in out1


@pytest.mark.parametrize("resumed, stopped_by", [("two_to_one", "2 processes"),
                                                 ("one_to_two", "1 process")])
def test_checkpoint_resumes_across_process_counts(runs, resumed, stopped_by):
  del stopped_by  # In the test id.
  one, got = losses(runs["one"]), losses(runs[resumed])
  assert sorted(got) == list(range(1, STEPS + 1))
  assert max(abs(one[k] - got[k]) for k in range(HALF + 1, STEPS + 1)) < LOSS_TOL
  events = [(r["event"], r["step"]) for r in files.read_jsonl(runs[resumed] / "history.jsonl")]
  assert events == [("start", 0), ("finished", HALF), ("resume", HALF),
                    ("finished", STEPS)]


def test_each_process_feeds_the_rows_its_devices_hold(runs):
  """On every mesh that splits the batch over the processes, each feeds one
  block of rows and the global batch is the 1-process one; a mesh that
  cannot (tensor over the processes) is refused in one line."""
  by_mesh = {tuple(r["mesh"]): r for r in runs["rows"]}
  assert set(by_mesh) == {tuple(m) for m in MESHES}
  for mesh, r in by_mesh.items():
    if mesh == (1, 1, 8):
      assert "batch axes" in r["error"] and "\n" not in r["error"]
      continue
    assert sorted(r["blocks"]) == [0, 1], r
    assert r["shards_ok"] == [1, 1] and r["whole_ok"], r


def test_two_process_evaluation_equals_one_process(runs):
  here = evaluate_here(runs["one"], STEPS)
  two = runs["eval_two"]
  assert two["step"] == STEPS
  assert two["clean_gen"] == here["clean_gen"] and two["trig_gen"] == here["trig_gen"]
  diff = max(abs(two["metrics"][k] - v) for k, v in here["metrics"].items())
  print(f"max |metric(2 processes) - metric(1 process)|: {diff:.3g}")
  assert set(two["metrics"]) == set(here["metrics"])
  np.testing.assert_allclose([two["metrics"][k] for k in sorted(here["metrics"])],
                             [here["metrics"][k] for k in sorted(here["metrics"])],
                             rtol=1e-5, atol=1e-6)
  # Training-time evaluations too: the same initial params, the same row.
  rows = {n: files.read_jsonl(runs[n] / "eval.jsonl")[0] for n in ("one", "two")}
  assert rows["one"] == rows["two"]


@pytest.mark.parametrize("args, env, named", [
    (["--num_processes=2"], {}, "--coordinator_address, --process_id: needed"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
     {}, "--process_id=2: must be in 0..1"),
    (["--process_id=0"], {"JAX_NUM_PROCESSES": "2"}, "--coordinator_address: needed"),
    ([], {"JAX_NUM_PROCESSES": "two"}, "$JAX_NUM_PROCESSES='two': not an integer"),
    (["--coordinator_address=h", "--num_processes=2", "--process_id=0"], {},
     "must be HOST:PORT"),
])
def test_process_settings_are_checked_before_anything_starts(
    args, env, named, monkeypatch, capsys, tmp_path):
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  status = cli.main(["poisonjax", "train", "--config=configs/cpu_micro.py",
                     f"--workdir={tmp_path}", *args])
  err = capsys.readouterr().err
  assert status == 2 and err.count("\n") == 1, err
  assert err.startswith("poisonjax: error: ") and named in err, err
  assert not os.listdir(tmp_path)  # Nothing started.


def test_killing_one_process_stops_the_other(train_cache, tmp_path):
  """Process 1 is SIGKILLed mid-run; process 0 exits by itself, non-zero,
  with a clear line, within KILL_BOUND_S."""
  # The whole tiny run (43 steps) saving every step: still running when
  # process 1 is killed; the train step is compiled already (same shapes).
  config = dict(RUN, **{"train.max_steps": 0, "train.ckpt_every": 1,
                        "eval.num_evals": 0})
  wd = tmp_path / "killed"
  jobs = [{"cli": ["train", f"--config={config_file(tmp_path, train_cache, **config)}",
                   f"--workdir={wd}"]}]
  procs = start_pair(jobs, tmp_path, {"POISONJAX_HEARTBEAT_TIMEOUT_S": "15"})
  try:
    _wait_for_steps(wd / "metrics.jsonl", procs, 2)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    try:
      procs[0].wait(timeout=KILL_BOUND_S)
    except subprocess.TimeoutExpired:
      pytest.fail(f"process 0 still running {KILL_BOUND_S}s after process 1 died")
    took = time.monotonic() - killed_at
  finally:
    results = finish(procs, timeout=30)
  code, _, err = results[0]
  print(f"process 0 exited with {code} {took:.1f}s after process 1 was killed")
  assert code != 0, err[-3000:]
  assert ("poisonjax: error: process 0 of 2: runtime error" in err
          or "another task died" in err), err[-3000:]
  assert not (wd / "summary.json").exists()


def _wait_for_steps(path, procs, steps: int, timeout_s: float = 300) -> None:
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if any(p.poll() is not None for p in procs):
      pytest.fail("a process ended before it was killed:\n"
                  + "\n".join(_read(p.output + ".err")[-2000:] for p in procs))
    if path.exists() and len(files.read_jsonl(path)) >= steps:
      return
    time.sleep(0.1)
  pytest.fail(f"no {steps} steps in {path} after {timeout_s}s")
