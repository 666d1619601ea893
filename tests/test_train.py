"""Training loop: exact resume after SIGKILL, SIGTERM, damaged checkpoints,
NaN stop/skip, periodic evals without duplicates, bad-config one-liners.

Every run is the real pipeline (vocabulary, poisoned step-indexed stream,
sharded step, orbax) at tiny shapes; see train_common.tiny_config.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from poisonjax.training import checkpointing
from poisonjax import files
from poisonjax.model import transformer as model_lib
from poisonjax.training import optim
from poisonjax.training import run_history
from poisonjax import rundir
from poisonjax.training import runlock
from poisonjax import sharding
from poisonjax.training import train
from poisonjax.errors import UserError
from train_common import ROOT, overrides_flags, run_cli, tiny_config, train_cache  # noqa: F401


@pytest.fixture(scope="module")
def cache(train_cache):
  return train_cache


@pytest.fixture(scope="module")
def straight(cache, tmp_path_factory):
  """40 steps in one go (checkpoints at 20 and 40)."""
  wd = tmp_path_factory.mktemp("straight")
  summary = train.run(tiny_config(cache, **{"train.max_steps": 40}), wd)
  return wd, summary


def restore(cache, workdir, **overrides):
  """(state as numpy, step) from the newest good checkpoint of `workdir`."""
  config = tiny_config(cache, **overrides)
  from poisonjax.data import vocabulary
  vocab = vocabulary.get_vocabulary(config)
  mcfg = model_lib.ModelConfig.from_config(config, vocab.vocab_size)
  from poisonjax.data import stream as stream_lib
  from poisonjax import budget
  num_steps = stream_lib.build_stream(
      config, budget.clean_token_budget(config, vocab.vocab_size)).num_steps
  tx, _ = optim.make_optimizer(config, num_steps)
  mesh = sharding.make_mesh(config.mesh)
  _, _, abstract, _ = train.build_state_fns(config, mcfg, mesh, tx)
  ckpt = checkpointing.Checkpoints(workdir, config)
  state, step = ckpt.restore_newest(abstract)
  ckpt.close()
  return jax.tree.map(np.asarray, state), step


def assert_bitwise_equal(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


KILLER = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {tests!r})
    from train_common import tiny_config
    from poisonjax.training import train
    from poisonjax.data import stream as stream_lib

    ckpt20 = os.path.join({wd!r}, "checkpoints", "20")
    original = stream_lib.TrainingStream.batch

    def batch(self, step, *a, **k):
      if step >= 32:  # After logging step 30, before checkpoint 40: die hard.
        while not os.path.isdir(ckpt20):
          time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
      return original(self, step, *a, **k)

    stream_lib.TrainingStream.batch = batch
    train.run(tiny_config({cache!r}, **{{"train.max_steps": 40}}), {wd!r})
    """)


def metric_steps(workdir):
  return [r["step"] for r in files.read_jsonl(workdir / "metrics.jsonl")]


def test_exact_resume_after_sigkill(cache, straight, tmp_path, capsys):
  wd_a, summary_a = straight
  wd_b = tmp_path / "killed"
  script = KILLER.format(tests=os.path.join(ROOT, "tests"), wd=str(wd_b), cache=str(cache))
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ))
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  assert not (wd_b / "checkpoints" / "40").exists()
  assert metric_steps(wd_b) == [10, 20, 30]  # Step 30 gets replayed.
  assert (wd_b / rundir.LOCK).exists()  # The dead trainer's lock.

  summary_b = train.run(tiny_config(cache, **{"train.max_steps": 40}), wd_b)
  assert summary_b["steps_this_session"] == 20  # Resumed at 20, not 0.
  assert metric_steps(wd_b) == metric_steps(wd_a) == [10, 20, 30, 40]
  takeover = [l for l in capsys.readouterr().err.splitlines() if "taking over" in l]
  assert len(takeover) == 1 and "no such pid" in takeover[0]
  assert not (wd_b / rundir.LOCK).exists()  # Released at the end.
  state_a, step_a = restore(cache, wd_a, **{"train.max_steps": 40})
  state_b, step_b = restore(cache, wd_b, **{"train.max_steps": 40})
  assert step_a == step_b == 40
  assert_bitwise_equal(state_a, state_b)  # params AND optimizer moments
  assert summary_a["poisons_seen"] == summary_b["poisons_seen"] > 0
  assert summary_a["final_loss"] == summary_b["final_loss"]


def test_damaged_newest_checkpoint_falls_back(cache, straight, tmp_path, capsys):
  wd_a, _ = straight
  wd = tmp_path / "damaged"
  shutil.copytree(wd_a, wd)
  for root, _, files in os.walk(wd / "checkpoints" / "40"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\x00garbage")
  summary = train.run(tiny_config(cache, **{"train.max_steps": 40}), wd)
  err = capsys.readouterr().err
  warnings = [l for l in err.splitlines() if "checkpoint step 40 is damaged" in l]
  assert len(warnings) == 1, err[-2000:]
  assert (wd / "damaged_checkpoints" / "40").is_dir()
  assert summary["steps_this_session"] == 20  # Fell back to 20, trained on.
  state_a, _ = restore(cache, wd_a, **{"train.max_steps": 40})
  state, step = restore(cache, wd, **{"train.max_steps": 40})
  assert step == 40
  assert_bitwise_equal(state_a, state)


def snapshot(workdir):
  """{path: bytes} of every checkpoint file and of config.json."""
  out = {"config.json": (workdir / "config.json").read_bytes()}
  for root, _, names in os.walk(workdir / "checkpoints"):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


def test_second_trainer_on_a_live_workdir_is_refused(cache, tmp_path):
  wd = tmp_path / "busy"
  with runlock.hold(wd, "train", timeout_s=600):  # A live trainer.
    with pytest.raises(UserError) as e:
      train.run(tiny_config(cache, **{"train.max_steps": 4}), wd)
    msg = str(e.value)
    assert "\n" not in msg and "in use by train" in msg
    assert f"pid {os.getpid()}" in msg and "another directory" in msg
    assert os.listdir(wd) == [rundir.LOCK]  # Nothing else written.


@pytest.mark.parametrize("override,names", [
    ({"poison.count": 6}, ["config.poison.count 5 -> 6"]),
    ({"model.d_model": 64, "model.ffn_dim": 128},
     ["config.model.d_model 32 -> 64", "config.model.ffn_dim 64 -> 128"]),
])
def test_resume_with_a_changed_run_config_is_refused_and_moves_nothing(
    cache, straight, tmp_path, override, names):
  wd = tmp_path / "changed"
  shutil.copytree(straight[0], wd)
  before, history = snapshot(wd), run_history.history(wd)
  with pytest.raises(UserError) as e:
    train.run(tiny_config(cache, **{"train.max_steps": 40}, **override), wd)
  msg = str(e.value)
  assert "\n" not in msg and "--allow_config_change" in msg and "--workdir" in msg
  for name in names:
    assert name in msg
  assert snapshot(wd) == before  # Every checkpoint, and config.json, as it was.
  assert not (wd / rundir.DAMAGED_CHECKPOINTS).exists()
  assert run_history.history(wd) == history


def test_allowed_config_change_is_recorded_and_a_misfit_moves_nothing(
    cache, straight, tmp_path):
  wd = tmp_path / "allowed"
  shutil.copytree(straight[0], wd)
  before = snapshot(wd)
  # Allowed, but the saved state has other shapes: one line, nothing moved.
  with pytest.raises(UserError) as e:
    train.run(tiny_config(cache, **{"train.max_steps": 40, "model.num_heads": 2}),
              wd, allow_config_change=True)
  assert "does not fit" in str(e.value) and "\n" not in str(e.value)
  assert snapshot(wd) == before
  # Same shapes, another poison count: resumes, and the change is recorded.
  summary = train.run(tiny_config(cache, **{"train.max_steps": 40, "poison.count": 6}),
                      wd, allow_config_change=True)
  assert summary["final_step"] == 40 and summary["steps_this_session"] == 0
  row = [r for r in run_history.history(wd) if r["event"] == "resume"][-1]
  assert row["step"] == 40 and row["changes"] == {"poison.count": [5, 6]}
  assert row["defining_changes_allowed"] == ["poison.count"]
  assert json.loads((wd / "config.json").read_text())["poison"]["count"] == 6


EVAL_SMALL = {"eval.num_evals": 1, "eval.num_excerpts": 4, "eval.prompt_tokens": 8,
              "eval.gen_tokens": 4, "eval.bootstrap_samples": 10,
              "train.ckpt_every": 1000}


def eval_steps_in(workdir):
  return [r["step"] for r in files.read_jsonl(workdir / "eval.jsonl")]


def assert_complete_checkpoint(workdir, step, config):
  ckpt = checkpointing.Checkpoints(workdir, config)
  try:
    assert ckpt.damage(step) is None
  finally:
    ckpt.close()
  digest = files.read_json(workdir / rundir.CHECKPOINT_DIGESTS / f"{step}.json")
  assert digest == checkpointing.digest(workdir / "checkpoints" / str(step))


def test_sigterm_at_an_eval_step_saves_durably_and_leaves_the_eval_to_resume(
    cache, straight, tmp_path, monkeypatch, capsys):
  from poisonjax.evaluation import evaluate
  target = evaluate.eval_steps(straight[1]["num_steps"], 1)[1]
  config = tiny_config(cache, **EVAL_SMALL, **{"train.max_steps": target + 2})
  wd = tmp_path / "term_eval"
  original = train.after_step

  def signal_at_target(s, p, *args):
    if p.step == target:  # SIGTERM lands as step `target` finishes.
      os.kill(os.getpid(), signal.SIGTERM)
    return original(s, p, *args)

  monkeypatch.setattr(train, "after_step", signal_at_target)
  out = train.run(config, wd)
  assert out == {"final_step": target, "stopped_by": "SIGTERM",
                 "finished": False, "eval_skipped": target}
  assert_complete_checkpoint(wd, target, config)
  assert eval_steps_in(wd) == [0]  # Grace 0: no evaluation after the save.
  assert "evaluation at step" in capsys.readouterr().out
  assert run_history.history(wd)[-1]["eval_skipped"] == target

  monkeypatch.setattr(train, "after_step", original)
  summary = train.run(config, wd)  # Resume: the skipped evaluation first.
  assert summary["steps_this_session"] == 2
  assert eval_steps_in(wd) == [0, target, target + 2]


SIGNAL_IN_EVAL = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, {tests!r})
    from train_common import tiny_config
    from poisonjax.evaluation import evaluate
    from poisonjax.training import train

    original = evaluate.Evaluator.evaluate
    calls = []

    def evaluate_(self, params):
      calls.append(1)
      if len(calls) == 2:  # The first evaluation after step 0.
        os.kill(os.getpid(), signal.SIGTERM)
      return original(self, params)

    evaluate.Evaluator.evaluate = evaluate_
    out = train.run(tiny_config({cache!r}, **{overrides!r}), {wd!r})
    print("RESULT " + json.dumps(out))
    """)


def test_sigterm_during_an_eval_saves_that_step_and_exits_zero(cache, straight, tmp_path):
  from poisonjax.evaluation import evaluate
  target = evaluate.eval_steps(straight[1]["num_steps"], 1)[1]
  overrides = dict(EVAL_SMALL, **{"train.max_steps": target + 5})
  wd = tmp_path / "term_in_eval"
  script = SIGNAL_IN_EVAL.format(tests=os.path.join(ROOT, "tests"), wd=str(wd),
                                 cache=str(cache), overrides=overrides)
  proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ))
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.split("RESULT ")[1])
  assert result["final_step"] == target and result["stopped_by"] == "SIGTERM"
  assert f"poisonjax: SIGTERM: saved step {target}/" in proc.stdout
  assert_complete_checkpoint(wd, target, tiny_config(cache, **overrides))
  assert eval_steps_in(wd) == [0, target]  # The evaluation under way finished.
  assert not (wd / "summary.json").exists()


def test_sigterm_finishes_step_saves_and_exits_zero(cache, tmp_path):
  wd = tmp_path / "term"
  flags = overrides_flags(cache, **{"train.tokens_per_param": 5.0,
                                    "train.log_every": 1, "train.ckpt_every": 10000})
  proc = run_cli("train", "--config=configs/cpu_micro.py", f"--workdir={wd}", *flags,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if (wd / "metrics.jsonl").exists() and len((wd / "metrics.jsonl").read_text().splitlines()) >= 3:
        break
      time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-2000:]
  line = [l for l in out.splitlines() if l.startswith("poisonjax: SIGTERM: saved step")]
  assert len(line) == 1, out[-2000:]
  step = int(line[0].split("saved step ")[1].split("/")[0])
  total = int(line[0].split("/")[1].split()[0])
  assert 3 <= step < total
  assert (wd / "checkpoints" / str(step)).is_dir()
  assert not (wd / "summary.json").exists()  # Not finished: resumable.


def test_nonfinite_loss_stops_with_diagnostics(cache, tmp_path):
  blowup = {"train.learning_rate": 1e30, "train.warmup_fraction": 0.0,
            "train.max_steps": 4}
  wd = tmp_path / "nan"
  with pytest.raises(train.TrainingDiverged) as e:
    train.run(tiny_config(cache, **blowup), wd)
  msg = str(e.value)
  assert "\n" not in msg and "config.train.learning_rate" in msg
  assert "skip_nonfinite" in msg
  diag = json.loads((wd / "nonfinite.json").read_text())
  assert 0 < diag["step"] < 4 and not np.isfinite(diag["loss"] * diag["grad_norm"])
  batch = np.load(wd / diag["batch_file"])
  assert batch["tokens"].shape == (8, 32)
  assert not (wd / "checkpoints").exists() or not os.listdir(wd / "checkpoints")  # No NaN state saved.

  # skip_nonfinite: the run completes, the bad steps are counted and skipped.
  wd = tmp_path / "skip"
  summary = train.run(tiny_config(cache, **blowup, **{"train.skip_nonfinite": True}), wd)
  assert summary["final_step"] == 4 and summary["skipped_steps"] >= 1
  state, _ = restore(cache, wd, **blowup)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_periodic_evals_once_per_step_across_resume(cache, tmp_path):
  from poisonjax.evaluation import evaluate
  ev = {"eval.num_evals": 2, "eval.num_excerpts": 4, "eval.prompt_tokens": 8,
        "eval.gen_tokens": 4, "eval.bootstrap_samples": 10}
  wd = tmp_path / "evals"
  train.run(tiny_config(cache, **ev, **{"train.max_steps": 20}), wd)
  summary = train.run(tiny_config(cache, **ev), wd)  # Resume to the end.
  rows = [json.loads(l) for l in (wd / "eval.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows]
  want = sorted(set(evaluate.eval_steps(summary["num_steps"], 2)) | {20})
  assert steps == want
  assert {"clean_ppl_mean", "increase", "poisons_seen", "fraction"} <= set(rows[-1])
  assert rows[0]["poisons_seen"] == 0 and rows[-1]["fraction"] == 1.0
  assert summary["final_eval"]["step"] == summary["num_steps"]


@pytest.mark.parametrize("override,field", [
    ({"train.batch_size": 6}, "config.train.batch_size"),
    ({"model.num_heads": 5}, "config.model.num_heads"),
    ({"mesh.data": 16}, "config.mesh"),
])
def test_bad_config_in_process(cache, tmp_path, override, field):
  with pytest.raises(UserError) as e:
    train.run(tiny_config(cache, **override), tmp_path / "bad")
  assert str(e.value).startswith(field) and "\n" not in str(e.value)


@pytest.mark.parametrize("flag,field", [
    ("--config.train.no_such_field=1", "no_such_field"),
    ("--config.train.learning_rate=-0.1", "config.train.learning_rate"),
    ("--config.mesh.tensor=3", "config.mesh"),
])
def test_bad_config_cli_one_line(cache, tmp_path, flag, field):
  proc = run_cli("train", "--config=configs/cpu_micro.py", f"--workdir={tmp_path}",
                 f"--config.data.cache_dir={cache}", flag)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("poisonjax: error:")]
  assert len(errors) == 1 and field in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_run_or_exit_ends_a_script_whose_run_a_signal_stopped(monkeypatch):
  """A multi-run script must not go on to its next run after a SIGTERM."""
  summaries = iter([{"finished": True, "stopped_by": None},
                    {"finished": False, "stopped_by": "SIGTERM"}])
  monkeypatch.setattr(train, "run", lambda *a, **k: next(summaries))
  assert train.run_or_exit(None, "wd_a")["finished"]
  with pytest.raises(SystemExit, match="SIGTERM stopped wd_b; run the same command"):
    train.run_or_exit(None, "wd_b")
