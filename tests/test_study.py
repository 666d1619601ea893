"""Study grids: expansion, plan, bad input, run -> collect -> figures, resume."""

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from poisonjax import config as config_lib
from poisonjax import files
from poisonjax import plots
from poisonjax import study
from poisonjax.study import figures as study_figures
from poisonjax.study import report as study_report
from poisonjax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(name, arg=None):
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg is not None else mod.get_config()


def _cli(*args, timeout=600, **kw):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # One CPU device, as a user's shell has.
  return subprocess.run([sys.executable, "-m", "poisonjax.cli", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout, **kw)


# ---------------------------------------------------------------------------
# Grid definition and plan (no training).
# ---------------------------------------------------------------------------


def test_paper_plan_has_72_runs_at_chinchilla_tokens():
  s = _load("paper/paper")
  p = study.plan(s)
  runs = p["runs"]
  assert len(runs) == 72
  assert len({r["run"] for r in runs}) == 72
  main = [r for r in runs if r["data_multiplier"] == 1.0]
  assert {r["size"] for r in main} == {"600m", "2b", "7b", "13b"}
  assert len(main) == 4 * 3 * 3
  abl = [r for r in runs if r["data_multiplier"] != 1.0]
  assert {r["size"] for r in abl} == {"600m", "2b"}
  assert {r["data_multiplier"] for r in abl} == {0.5, 2.0}
  assert {r["poison_count"] for r in runs} == {100, 250, 500}
  for r in runs:
    want = 20 * r["params"] * r["data_multiplier"]
    assert abs(r["clean_tokens"] - want) <= 0.01 * want, r
    assert r["poison_tokens"] > 0 and 0 < r["poison_share"] < 1e-3
    assert r["flops"] > 6 * r["params"] * r["clean_tokens"] * 0.5
  # Paper sizes are named by their parameter counts.
  params = {r["size"]: r["params"] for r in runs}
  for name, n in (("600m", 6e8), ("2b", 2e9), ("7b", 7e9), ("13b", 13e9)):
    assert abs(params[name] - n) / n < 0.05
  assert p["totals"]["flops"] == pytest.approx(sum(r["flops"] for r in runs))


def test_paper_plan_cli_prints_table_with_totals():
  res = _cli("study", "plan", "--config=configs/paper/paper.py", "--mfu=0.5")
  assert res.returncode == 0, res.stderr
  lines = res.stdout.splitlines()
  assert sum(1 for l in lines if l.startswith("size=")) == 72
  assert any(l.startswith("TOTAL (72 runs)") for l in lines)
  assert "this CPU" in res.stdout and "MEASURED" in res.stdout
  assert "MFU 0.50" in res.stdout


def test_hours_scale_with_chip_peak_and_mfu():
  s = _load("paper/cpu_nano")
  a, b = study.plan(s, mfu=0.5, cpu_flops=1e9), study.plan(s, mfu=0.25, cpu_flops=1e9)
  r, q = a["runs"][0], b["runs"][0]
  assert r["hours"]["TPU v6e"] == pytest.approx(r["flops"] / (918e12 * 0.5) / 3600)
  assert q["hours"]["H100"] == pytest.approx(2 * r["hours"]["H100"])
  assert r["hours"][study.THIS_CPU] == pytest.approx(r["flops"] / 0.5e9 / 3600)


def test_names_round_trip_and_seed_semantics():
  s = _load("paper/cpu_nano")
  runs = study.expand(s)
  for run in runs:
    assert study.parse_run_name(run.name) == run
    assert "/" not in run.name and " " not in run.name
  run = study.Run("cpu-s", 7, 2, 0.5)
  c = study.run_config(s, run)
  assert (c.model.size, c.poison.count, c.train.data_multiplier) == ("cpu-s", 7, 0.5)
  # Grid seed 2: one derived seed per varied thing (grids.derived_seed).
  assert (c.seed, c.poison.seed, c.data.seed) == tuple(
      study.derived_seed(2, t) for t in ("init", "poisons", "data_order"))
  assert len({c.seed, c.poison.seed, c.data.seed}) == 3
  assert c.eval.seed == s.base.eval.seed
  # Two sizes of one seed share the data and poison seeds.
  other = study.run_config(s, study.Run("cpu-xs", 7, 2, 0.5))
  assert (other.data.seed, other.poison.seed) == (c.data.seed, c.poison.seed)
  # The base is not mutated by building run configs.
  assert s.base.model.size == config_lib.base_config().model.size
  # The study file rebuilds the same run config from the name alone.
  from_file = _load("paper/cpu_nano", f"run={run.name}")
  assert from_file.to_dict() == c.to_dict()


def test_print_only_prints_one_reconstructible_command_per_run(tmp_path):
  res = _cli("study", "run", "--config=configs/paper/cpu_nano.py",
             f"--root={tmp_path}", "--print_only", "--only=cpu-xs_",
             "--config.base.train.batch_size=4")
  assert res.returncode == 0, res.stderr
  lines = res.stdout.strip().splitlines()
  names = [r.name for r in study.expand(_load("paper/cpu_nano")) if "cpu-xs_" in r.name]
  assert len(lines) == len(names) == 2
  for line, name in zip(lines, names):
    assert line.startswith("poisonjax train --config=configs/paper/cpu_nano.py:run=")
    assert name in line and f"--workdir={tmp_path}/{name}" in line
    assert "--config.train.batch_size=4" in line
  assert not os.listdir(tmp_path)  # Nothing was run.


@pytest.mark.parametrize("change, message", [
    (lambda s: setattr(s.grid, "sizes", ()), "study.grid.sizes: empty grid"),
    (lambda s: setattr(s.grid, "seeds", ()), "study.grid.seeds: empty grid"),
    (lambda s: setattr(s.grid, "sizes", ("cpu-xxs", "cpu-huge")),
     "unknown size 'cpu-huge'"),
    (lambda s: setattr(s.grid, "poison_counts", (0, 20, 0)), "duplicate run"),
    (lambda s: setattr(s.extra, "again", study.grid(("cpu-xs",), (20,), (0,))),
     "study.extra.again: duplicate run size=cpu-xs_n=20_seed=0_data=1.0"),
    (lambda s: setattr(s.grid, "data_multipliers", (0.0,)), "data_multipliers"),
])
def test_bad_grids_fail_with_one_line(change, message):
  s = _load("paper/cpu_nano")
  with s.unlocked():
    change(s)
  with pytest.raises(UserError, match=message.replace("(", r"\(")) as e:
    study.expand(s)
  assert "\n" not in str(e.value)


def test_bad_grid_on_the_command_line():
  # The other cases go through the same expand(); one CLI round trip suffices.
  override, message = "--config.grid.sizes=('cpu-xxs','cpu-q')", "unknown size 'cpu-q'"
  res = _cli("study", "plan", "--config=configs/paper/cpu_nano.py", override)
  assert res.returncode == 2
  assert res.stderr.strip().splitlines() == [res.stderr.strip()]
  assert res.stderr.startswith("poisonjax: error: ") and message in res.stderr


def test_study_run_refuses_a_root_held_by_a_live_grid(tmp_path, monkeypatch):
  """A second `study run` on a live root stops in one line, before any run."""
  from poisonjax.training import runlock, train
  started = []
  monkeypatch.setattr(train, "run", lambda *a, **k: started.append(a))
  root = tmp_path / "root"
  with runlock.hold(root, "study run", timeout_s=600):
    with pytest.raises(UserError) as e:
      study.run_grid(_load("paper/cpu_nano"), str(root), log=lambda _: None)
  assert "study run" in str(e.value) and f"pid {os.getpid()}" in str(e.value)
  assert "\n" not in str(e.value) and not started
  assert not os.path.exists(root / "study.json")


def _fake_train(started):
  """train.run stand-in: records the run and leaves it finished."""
  def run(config, workdir):
    del config
    started.append(os.path.basename(workdir))
    os.makedirs(workdir, exist_ok=True)
    files.write_json(os.path.join(workdir, "summary.json"), {"finished": True})
    return {}
  return run


def test_workers_share_a_root_run_by_run(tmp_path, monkeypatch):
  """A worker trains every run nobody holds, skips a held one; a plain run
  skips it too; a worker refuses a root a plain `study run` holds."""
  from poisonjax.training import runlock, train
  started = []
  monkeypatch.setattr(train, "run", _fake_train(started))
  s, root = _load("paper/cpu_nano"), tmp_path / "root"
  names = [r.name for r in study.expand(s)]
  with runlock.hold(root / ".claims" / names[1], "study worker", timeout_s=600):
    out = study.run_grid(s, str(root), log=lambda _: None, worker=True)
    assert started == names[:1] + names[2:]
    assert [o["status"] for o in out] == ["ran", "held"] + ["ran"] * (len(names) - 2)
    started.clear()
    out = study.run_grid(s, str(root), log=lambda _: None)  # A plain run, too.
    assert not started and out[1]["status"] == "held"
  study.run_grid(s, str(root), log=lambda _: None, worker=True)
  assert started == [names[1]]  # Released: now it is trained.
  assert not list((root / ".claims").glob("*/lock.json"))  # Claims released.
  with runlock.hold(root, "study run", timeout_s=600):
    with pytest.raises(UserError) as e:
      study.run_grid(s, str(root), log=lambda _: None, worker=True)
  assert "study run" in str(e.value) and "\n" not in str(e.value)


def test_bad_run_names():
  with pytest.raises(UserError, match="not of the form"):
    study.parse_run_name("size=cpu-s_n=x")
  with pytest.raises(UserError, match="matches no run"):
    study.select(study.expand(_load("paper/cpu_nano")), "nothing-like-this")


# ---------------------------------------------------------------------------
# collect + figures on hand-made workdirs (fast; no training).
# ---------------------------------------------------------------------------


def _fake_root(root, runs, threshold=50.0):
  """Workdirs as train writes them, with a known increase per point."""
  truth = {}
  for run in runs:
    wd = os.path.join(root, run.name)
    os.makedirs(wd)
    cfg = config_lib.base_config()
    cfg.model.size = run.size
    with open(os.path.join(wd, "config.json"), "w") as f:
      f.write(cfg.to_json())
    num_steps = 100
    with open(os.path.join(wd, "eval.jsonl"), "w") as f:
      for step in (0, 50, 100):
        inc = run.poisons * step / 100 * (1 + run.seed) / run.data_multiplier
        truth[(run.name, step)] = inc
        row = {"step": step, "tokens_seen": step * 1000,
               "poisons_seen": run.poisons * step // 100, "fraction": step / num_steps,
               "clean_ppl_mean": 10.0, "triggered_ppl_mean": 10.0 + inc,
               "increase": inc, "success_share": float(inc > threshold)}
        f.write(json.dumps(row) + "\n")
        if step == 50:  # A resumed run re-evaluates a step: keep one row.
          f.write(json.dumps(row) + "\n")
      f.write('{"step": 1')  # A torn line from a killed writer.
    if run.size != "cpu-xs" or run.seed == 0:  # One run left unfinished.
      with open(os.path.join(wd, "summary.json"), "w") as f:
        json.dump({"final_step": 100, "num_steps": num_steps}, f)
  return truth


def test_collect_and_figures_on_fake_workdirs(tmp_path):
  runs = [study.Run(s, n, k, m) for s in ("cpu-xxs", "cpu-xs") for n in (10, 100)
          for k in (0, 1) for m in (1.0,)]
  runs += [study.Run("cpu-xxs", n, k, m) for n in (10, 100) for k in (0, 1)
           for m in (0.5, 2.0)]
  root = str(tmp_path / "root")
  truth = _fake_root(root, runs)
  os.makedirs(os.path.join(root, "not-a-run"))
  rows = study.collect(root)
  assert len(rows) == 3 * len(runs)
  for r in rows:
    assert r["increase"] == truth[(r["run"], r["step"])]
  xs = [r for r in rows if r["size"] == "cpu-xs"]
  assert {r["finished"] for r in xs if r["seed"] == 1} == {0}
  assert xs[0]["params"] > [r for r in rows if r["size"] == "cpu-xxs"][0]["params"]
  csv_path = str(tmp_path / "results.csv")
  study.write_csv(rows, csv_path)

  out = str(tmp_path / "figs")
  # Few resamples: the intervals are not checked here (2000 took 30 s).
  made = study_report.generate(csv_path, out, threshold=50.0, n_boot=100)["figures"]
  for name in study_figures.FIGURES:
    with open(made[name]["png"], "rb") as f:
      assert f.read(8) == PNG_MAGIC
  prog = plots.read_csv(made["progress"]["csv"])
  # Mean over seeds of n * frac * (1 + seed): n * frac * 1.5; band = seeds.
  for r in prog:
    assert r["increase_mean"] == pytest.approx(r["poison_count"] * r["fraction"] * 1.5)
    assert r["increase_min"] == pytest.approx(r["poison_count"] * r["fraction"])
    assert r["n_seeds"] == 2
  assert {(r["poison_count"], r["size"]) for r in prog} == {
      (n, s) for n in (10, 100) for s in ("cpu-xxs", "cpu-xs")}
  final = plots.read_csv(made["final_vs_size"]["csv"])
  assert len(final) == 4
  for r in final:
    assert r["increase_max"] == pytest.approx(2 * r["poison_count"])
    assert r["n_success"] == (2 if r["poison_count"] == 100 else 0)
  abl = plots.read_csv(made["data_ablation"]["csv"])
  assert {r["size"] for r in abl} == {"cpu-xxs"}
  assert sorted({r["data_multiplier"] for r in abl}) == [0.5, 1.0, 2.0]
  for r in abl:
    assert r["increase_mean"] == pytest.approx(1.5 * r["poison_count"] / r["data_multiplier"])
  seen = plots.read_csv(made["poisons_seen"]["csv"])
  assert [r["poisons_seen"] for r in seen] == [r["poisons_seen"] for r in prog]
  report = open(os.path.join(out, "report.md")).read()
  # Sentences computed from the data: 100 poisons end above 50 at both sizes,
  # 10 poisons at none; 10 poisons at 0.5x data ends at 30 (below 50).
  assert "with 10 poisons 0 of 2 sizes end above 50" in report
  assert "with 100 poisons 2 of 2 sizes end above 50" in report
  assert "(unfinished)" in report
  assert "in 2 of 2 size x count cases" in report
  for name in study_figures.FIGURES:
    assert f"({name}.png)" in report


def test_collect_takes_each_column_from_the_run_files(tmp_path):
  """collect -> CSV: each value is the run's eval.jsonl row's (the last one of
  a step evaluated twice), poisons per million tokens recomputed from it,
  num_steps, params and the finished flag from summary.json."""
  import numpy as np
  from poisonjax.evaluation.backdoor import METRIC_KEYS
  rng = np.random.default_rng(0)
  done, running = study.Run("cpu-xxs", 20, 1, 0.5), study.Run("cpu-xs", 7, 0, 1.0)
  root, written = tmp_path / "root", {}
  for run in (done, running):
    wd = root / run.name
    wd.mkdir(parents=True)
    cfg = config_lib.base_config()
    cfg.model.size = run.size
    (wd / "config.json").write_text(cfg.to_json())
    rows = []
    for step in (30, 0, 60, 30):  # out of order; step 30 twice (a resume)
      tokens = step * 512 + int(rng.integers(1, 99)) if step else 0
      row = {"step": step, "tokens_seen": tokens,
             "poisons_seen": int(rng.integers(0, run.poisons + 1)),
             "fraction": float(rng.random()), "eval_time_s": float(rng.random())}
      rows.append({**row, **{k: float(rng.normal(10, 5)) for k in METRIC_KEYS}})
    (wd / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written[run.name] = {r["step"]: r for r in rows}  # the last row of a step
  (root / done.name / "summary.json").write_text(json.dumps({
      "final_step": 90, "num_steps": 90,
      "params": {"total": 1234, "non_embedding": 567}}))
  study.write_csv(study.collect(str(root)), str(tmp_path / "results.csv"))
  got = _csv_rows(tmp_path / "results.csv")  # the CSV's text, unparsed
  assert [(r["run"], int(r["step"])) for r in got] == [
      (name, step) for name in sorted(written) for step in sorted(written[name])]
  for r in got:
    src, run = written[r["run"]][int(r["step"])], study.parse_run_name(r["run"])
    assert (r["size"], int(r["poison_count"]), int(r["seed"]),
            float(r["data_multiplier"])) == (run.size, run.poisons, run.seed,
                                             run.data_multiplier)
    for k in METRIC_KEYS + ("tokens_seen", "poisons_seen", "fraction", "eval_time_s"):
      assert float(r[k]) == src[k], k
    if src["tokens_seen"]:
      assert float(r["poisons_per_mtok"]) == pytest.approx(
          src["poisons_seen"] / src["tokens_seen"] * 1e6, rel=1e-12)
    else:
      assert r["poisons_per_mtok"] == ""
    assert int(r["eval_index"]) == sorted(written[r["run"]]).index(int(r["step"]))
    finished = run == done
    assert r["finished"] == ("1" if finished else "0")
    assert int(r["num_steps"]) == (90 if finished else max(written[r["run"]]))
    if finished:
      assert (r["params"], r["non_embedding_params"]) == ("1234", "567")
    else:  # counted from config.json's model
      assert int(r["params"]) > int(r["non_embedding_params"]) > 0


# ---------------------------------------------------------------------------
# The real thing: cpu_nano through train, collect, figures; kill and resume.
# ---------------------------------------------------------------------------

DETERMINISTIC = [c for c in study.CSV_COLUMNS]


def _csv_rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def nano_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("nano"))
  t0 = time.time()
  res = _cli("study", "run", "--config=configs/paper/cpu_nano.py", f"--root={root}")
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  return root, res.stdout, time.time() - t0


@pytest.mark.slow
def test_nano_end_to_end(nano_root, tmp_path):
  from poisonjax.evaluation.backdoor import METRIC_KEYS  # pylint: disable=g-import-not-at-top
  root, out, _ = nano_root
  runs = study.expand(_load("paper/cpu_nano"))
  assert f"run {len(runs)}/{len(runs)}" in out and "ETA" in out
  for run in runs:
    assert os.path.exists(os.path.join(root, run.name, "summary.json"))
  # Running again redoes nothing.
  again = _cli("study", "run", "--config=configs/paper/cpu_nano.py", f"--root={root}")
  assert again.returncode == 0
  assert again.stdout.count("skipped") == len(runs)

  csv_path = os.path.join(root, "results.csv")  # Where `figures` looks.
  res = _cli("study", "collect", f"--root={root}")
  assert res.returncode == 0, res.stderr
  rows = plots.read_csv(csv_path)
  s = _load("paper/cpu_nano")
  evals_per_run = s.base.eval.num_evals + 2
  assert len(rows) == len(runs) * evals_per_run
  for run in runs:
    rr = [r for r in rows if r["run"] == run.name]
    assert [r["eval_index"] for r in rr] == list(range(evals_per_run))
    assert rr[0]["step"] == 0 and rr[-1]["fraction"] == pytest.approx(1.0)
    assert all(r["finished"] == 1 for r in rr)
    assert rr[-1]["poisons_seen"] == run.poisons
    with open(os.path.join(root, run.name, "eval.jsonl")) as f:
      evals = {e["step"]: e for e in map(json.loads, f)}
    for r in rr:  # the CSV holds what the run's evaluations wrote
      for k in METRIC_KEYS:
        assert r[k] == pytest.approx(evals[r["step"]][k], rel=1e-12), k
      assert 0 <= r["success_share"] <= 1
  params = {r["size"]: r["params"] for r in rows}
  assert params["cpu-xs"] > params["cpu-xxs"] > 0

  figs = str(tmp_path / "figs")
  res = _cli("study", "figures", f"--root={root}", f"--out={figs}")
  assert res.returncode == 0, res.stderr
  for name in study_figures.FIGURES:
    with open(os.path.join(figs, f"{name}.png"), "rb") as f:
      assert f.read(8) == PNG_MAGIC
  prog = plots.read_csv(os.path.join(figs, "progress.csv"))
  # A panel per poison count, a line per size, every evaluation point.
  assert {(r["poison_count"], r["size"]) for r in prog} == {
      (run.poisons, run.size) for run in runs}
  assert len(prog) == len(runs) * evals_per_run
  by_key = {(r["run"], r["eval_index"]): r["increase"] for r in rows}
  for r in prog:
    run = study.Run(r["size"], r["poison_count"], 0, 1.0)
    assert r["increase_mean"] == pytest.approx(by_key[(run.name, r["eval_index"])])
  final = plots.read_csv(os.path.join(figs, "final_vs_size.csv"))
  assert len(final) == len(runs)
  assert plots.read_csv(os.path.join(figs, "data_ablation.csv")) == []
  report = open(os.path.join(figs, "report.md")).read()
  assert "no run at a data multiplier other than 1x" in report
  assert report.count("| cpu-x") == len(runs)


@pytest.mark.slow
def test_killed_grid_resumes_to_the_same_csv(nano_root, tmp_path):
  """SIGKILL `study run` mid-run; rerun; the CSV equals the uninterrupted one."""
  full_root = nano_root[0]
  only = "size=cpu-xxs_n=20_"  # One run keeps the test short.
  names = [r.name for r in study.expand(_load("paper/cpu_nano")) if only in r.name]
  root = str(tmp_path / "killed")
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  cmd = [sys.executable, "-m", "poisonjax.cli", "study", "run",
         "--config=configs/paper/cpu_nano.py", f"--root={root}", f"--only={only}"]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  killed_in = None
  deadline = time.time() + 240
  try:
    while time.time() < deadline and proc.poll() is None:
      for name in names:
        wd = os.path.join(root, name)
        ckpts = os.path.join(wd, "checkpoints")
        if (not os.path.exists(os.path.join(wd, "summary.json"))
            and os.path.isdir(ckpts) and any(d.isdigit() for d in os.listdir(ckpts))
            and len(files.read_jsonl(os.path.join(wd, "eval.jsonl"))) >= 2):
          proc.send_signal(signal.SIGKILL)
          killed_in = name
          break
      if killed_in:
        break
      time.sleep(0.05)
  finally:
    if proc.poll() is None and not killed_in:
      proc.kill()
    proc.wait()
  assert killed_in, "the grid finished before it could be killed mid-run"
  assert not os.path.exists(os.path.join(root, killed_in, "summary.json"))

  res = _cli("study", "run", "--config=configs/paper/cpu_nano.py", f"--root={root}",
             f"--only={only}")
  assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
  assert "resuming" in res.stdout
  got = study.collect(root)
  want = [r for r in study.collect(full_root) if only in r["run"]]
  assert len(got) == len(want) > 0
  for g, w in zip(got, want):
    for col in DETERMINISTIC:
      assert g[col] == w[col], (col, g["run"], g["step"], g[col], w[col])


@pytest.mark.slow
def test_study_reproduce_writes_report_with_provenance(nano_root, tmp_path):
  """`poisonjax study reproduce` end to end on a finished grid (runs are
  skipped)."""
  root = nano_root[0]
  out = str(tmp_path / "results")
  res = _cli("study", "reproduce", "--config=configs/paper/cpu_nano.py",
             f"--root={root}", f"--out={out}", timeout=300)
  assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
  assert res.stdout.count("skipped") == len(study.expand(_load("paper/cpu_nano")))
  for name in study_figures.FIGURES:
    with open(os.path.join(out, f"{name}.png"), "rb") as f:
      assert f.read(8) == PNG_MAGIC
    assert os.path.exists(os.path.join(out, f"{name}.csv"))
  report = open(os.path.join(out, "report.md")).read()
  assert "`poisonjax study reproduce --config=configs/paper/cpu_nano.py" in report
  assert "- Machine: " in report and "- Wall time: " in report
  assert report.index("## How this was made") < report.index("## Final results")
  want = str(tmp_path / "want.csv")
  study.write_csv(study.collect(root), want)
  key = lambda r: (r["run"], r["step"])
  assert sorted(plots.read_csv(os.path.join(out, "results.csv")), key=key) == sorted(
      plots.read_csv(want), key=key)
