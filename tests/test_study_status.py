"""`poisonjax study status`: each run's state, saved step and the time left."""

import os
import subprocess
import sys

import pytest

from poisonjax import files

from poisonjax.training import runlock
from poisonjax import study
from poisonjax.study import status as status_lib
from test_study import ROOT, _load


def _ckpt(workdir, *steps):
  for s in steps:
    os.makedirs(workdir / "checkpoints" / str(s))
  os.makedirs(workdir / "checkpoints" / "30.orbax-checkpoint-tmp-1")  # Unfinished save.


def _metrics(workdir, step, steps_per_s):
  files.append_jsonl(workdir / "metrics.jsonl", {"step": step - 10, "steps_per_s": steps_per_s})
  files.append_jsonl(workdir / "metrics.jsonl", {"step": step, "steps_per_s": steps_per_s})


@pytest.fixture
def grid_root(tmp_path):
  """nano's four runs: finished, training (live lock), interrupted, pending."""
  s = _load("paper/cpu_nano")
  rows = study.plan(s)["runs"]
  names = [r["run"] for r in rows]
  root = tmp_path / "root"
  finished, training, interrupted = (root / n for n in names[:3])
  os.makedirs(finished)
  files.write_json(finished / "summary.json", {"finished": True})
  _metrics(finished, rows[0]["steps"], 4.0)
  _ckpt(training, 10)
  _metrics(training, 20, 4.0)
  _ckpt(interrupted, 10, 20)
  _metrics(interrupted, 25, 2.0)
  return s, root, rows


def test_states_saved_steps_and_holder(grid_root):
  s, root, rows = grid_root
  with runlock.hold(root / rows[1]["run"], "train", timeout_s=600):
    st = status_lib.status(s, root)
  got = [(r["state"], r["saved"], r["logged"]) for r in st["runs"]]
  assert got == [("finished", rows[0]["steps"], rows[0]["steps"]), ("training", 10, 20),
                 ("interrupted", 20, 25), ("pending", 0, 0)]
  assert f"pid {os.getpid()}" in st["runs"][1]["holder"] and not st["runs"][2]["holder"]
  assert st["counts"] == {"finished": 1, "training": 1, "interrupted": 1, "pending": 1}
  # Not held any more: the same run reads as interrupted.
  assert status_lib.status(s, root)["runs"][1]["state"] == "interrupted"


def test_time_left_from_logged_speeds(grid_root):
  """Sizes that logged speed use their median; an unmeasured size is scaled
  by FLOPs per step from the largest measured one."""
  s, root, rows = grid_root
  st = status_lib.status(s, root)
  by_size = {}
  for r, speed in zip(rows[:3], (4.0, 4.0, 2.0)):
    by_size.setdefault(r["size"], []).append(1 / speed)
  per_step = {k: sorted(v)[len(v) // 2] if len(v) % 2 else sum(v) / len(v)
              for k, v in by_size.items()}
  fps = {r["size"]: r["flops"] / r["steps"] for r in rows}
  ref = max(per_step, key=fps.get)
  for size in fps:
    per_step.setdefault(size, per_step[ref] * fps[size] / fps[ref])
  expected = sum((r["steps"] - saved) * per_step[r["size"]]
                 for r, saved in zip(rows[1:], (10, 20, 0)))
  assert st["eta_s"] == pytest.approx(expected)
  saved_flops = rows[0]["flops"] + sum(r["flops"] * k / r["steps"]
                                       for r, k in zip(rows[1:3], (10, 20)))
  assert st["done_share"] == pytest.approx(saved_flops / sum(r["flops"] for r in rows))
  text = status_lib.format_status(st)
  assert rows[0]["run"] not in text and rows[3]["run"] in text
  assert "4 runs: 1 finished, 0 training, 2 interrupted, 1 pending" in text
  assert rows[0]["run"] in status_lib.format_status(st, all_runs=True)


def test_cli_status_and_a_missing_root(grid_root, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = [sys.executable, "-m", "poisonjax.cli", "study", "status",
         "--config=configs/paper/cpu_nano.py"]
  ok = subprocess.run(cmd + [f"--root={grid_root[1]}"], cwd=ROOT, env=env,
                      capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr
  assert "1 finished, 0 training, 2 interrupted, 1 pending" in ok.stdout
  assert "time left:" in ok.stdout
  bad = subprocess.run(cmd + [f"--root={tmp_path / 'nothing'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
  assert "--root=" in bad.stderr and "study run" in bad.stderr
