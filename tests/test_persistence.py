"""Continued clean training from a backdoored run (poisonjax/training/continued.py).

One tiny poisoned source run per module; continued runs start from its
params, see no poisons, refuse a mismatched model in one line, evaluate at
the configured points (num_evals and the fine-tune k list) and resume from
their own checkpoints.
"""

import jax
import numpy as np
import pytest

from poisonjax.training import checkpointing
from poisonjax.training import continued
from poisonjax.evaluation import evaluate
from poisonjax import files
from poisonjax.evaluation import run_reader
from poisonjax import rundir
from poisonjax.training import train
from poisonjax.training import train_setup
from poisonjax.errors import UserError
from train_common import tiny_config, train_cache  # noqa: F401

EVAL_SMALL = {"eval.num_excerpts": 4, "eval.prompt_tokens": 8,
              "eval.gen_tokens": 4, "eval.bootstrap_samples": 10}


@pytest.fixture(scope="module")
def cache(train_cache):
  return train_cache


@pytest.fixture(scope="module")
def source(cache, tmp_path_factory):
  """A finished tiny poisoned run (5 poisons, vocab seed 0)."""
  wd = tmp_path_factory.mktemp("source")
  train.run(tiny_config(cache, **{"vocab.seed": 0}), wd)
  return wd


def continued_config(cache, source_wd, **overrides):
  return tiny_config(cache, **{
      "vocab.seed": 0, "data.seed": 1, "poison.count": 0, "eval.num_evals": 0,
      "continued.from_workdir": str(source_wd), **overrides})


def first_leaf(tree):
  return np.asarray(jax.device_get(jax.tree.leaves(tree)[0]))


def test_step_zero_is_the_source_params_with_a_fresh_optimizer(cache, source, tmp_path):
  config = continued_config(cache, source)
  s = train_setup.setup(config, tmp_path)
  ckpt = checkpointing.Checkpoints(tmp_path, config)
  try:
    state, start = train.restore(s, ckpt)
  finally:
    ckpt.close()
  src_params, src_step = run_reader.restore_params(str(source), s.model_cfg)
  assert start == 0 and src_step == rundir.checkpoint_steps(source)[-1]
  for a, b in zip(jax.tree.leaves(src_params), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  fresh = s.init(jax.random.key(config.seed))
  assert not np.array_equal(first_leaf(fresh["params"]), first_leaf(src_params))
  assert int(state["step"]) == 0
  moments = [np.abs(np.asarray(x)).max() for x in jax.tree.leaves(state["opt_state"])
             if np.ndim(x) > 0]
  assert moments and max(moments) == 0.0  # Zero Adam moments: a fresh optimizer.


def test_continued_run_sees_no_poisons_and_evaluates_at_the_k_list(
    cache, source, tmp_path):
  ks = (8, 20, 64)  # Batch 8: after steps 1, 3 and 8.
  config = continued_config(cache, source, **{
      **EVAL_SMALL, "eval.num_evals": 2,
      "continued.eval_examples": ",".join(map(str, ks)),
      "continued.budget_multiple": 0.5})
  out = train.run(config, tmp_path)
  manifest = files.read_json(tmp_path / "manifest.json")
  assert manifest["poisons"] == [] and out["poisons_total"] == 0
  src_summary = files.read_json(source / "summary.json")
  assert abs(out["clean_tokens"] - 0.5 * src_summary["clean_tokens"]) <= 1
  steps = [r["step"] for r in files.read_jsonl(tmp_path / "eval.jsonl")]
  n = out["num_steps"]
  expected = {-(-k // 8) for k in ks} | set(evaluate.eval_steps(n, 2)) | {n}
  assert steps == sorted(expected)
  record = files.read_json(tmp_path / rundir.CONTINUED_FROM)
  assert record["from_step"] == rundir.checkpoint_steps(source)[-1]
  assert record["source_poisons_seen"] == src_summary["poisons_seen"]
  assert 0 <= record["source_clean_tokens_after_last_poison"] < record[
      "source_tokens_trained"]


def test_resume_uses_its_own_checkpoint_not_the_source(cache, source, tmp_path, capsys):
  config = continued_config(cache, source, **{"train.max_steps": 10})
  train.run(config, tmp_path)
  first = first_leaf(run_reader.restore_params(
      str(tmp_path), train_setup.setup(config, tmp_path).model_cfg, 10)[0])
  capsys.readouterr()
  config.train.max_steps = 0
  out = train.run(config, tmp_path)
  log = capsys.readouterr().out
  assert "resuming" in log and "continuing from" not in log
  assert out["finished"] and out["poisons_seen"] == 0
  assert not np.array_equal(first, first_leaf(run_reader.restore_params(
      str(source), train_setup.setup(config, tmp_path).model_cfg)[0]))


@pytest.mark.parametrize("overrides, needle", [
    ({"model.d_model": 64}, "its model differs"),
    ({"data.seed": 0}, "config.data.seed=0"),
    ({"vocab.seed": 3}, "tokenizer"),
])
def test_a_misfit_source_is_refused_in_one_line(cache, source, tmp_path,
                                                 overrides, needle):
  with pytest.raises(UserError) as e:
    train.run(continued_config(cache, source, **overrides), tmp_path)
  assert needle in str(e.value) and "\n" not in str(e.value)
  assert "config.continued.from_workdir" in str(e.value)
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("overrides, field", [
    ({"poison.count": 5}, "config.poison.count"),
    ({"continued.budget_multiple": 0.0}, "config.continued.budget_multiple"),
    ({"continued.eval_examples": "8,x"}, "config.continued.eval_examples"),
    ({"continued.from_step": -2}, "config.continued.from_step"),
])
def test_bad_continued_fields_are_refused(cache, source, tmp_path, overrides, field):
  with pytest.raises(UserError, match=field.replace(".", r"\.")):
    train.run(continued_config(cache, source, **overrides), tmp_path)


def test_a_from_step_without_a_checkpoint_is_refused(
    cache, source, tmp_path):
  steps = rundir.checkpoint_steps(source)
  config = continued_config(cache, source, **{"continued.from_step": steps[0] + 1})
  with pytest.raises(UserError, match="config.continued.from_step=.*no checkpoint"):
    train.run(config, tmp_path)


# ---------------------------------------------------------------------------
# The study: continued runs as variants of their source's grid point.
# ---------------------------------------------------------------------------


def _config_module():
  import importlib.util  # pylint: disable=g-import-not-at-top
  from train_common import ROOT  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "persistence_config", f"{ROOT}/configs/ablations/persistence.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_continued_runs_follow_their_source_and_read_it_under_the_root():
  from poisonjax.study import grids  # pylint: disable=g-import-not-at-top
  s = _config_module().get_config()
  runs = grids.expand(s)
  assert [r.variant for r in runs] == ["source", "lr1", "lr0p1"] * 3
  assert [(r.size, r.poisons) for r in runs[::3]] == [
      ("cpu-xxs", 100), ("cpu-xxs", 300), ("cpu-xs", 100)]
  cont = runs[2]
  assert grids.sources(s, cont) == [runs[0]] and grids.sources(s, runs[0]) == []
  c = grids.run_config(s, cont, "/grid")
  assert c.continued.from_workdir == f"/grid/{runs[0].name}"
  assert c.poison.count == 0 and cont.name.startswith("size=cpu-xxs_n=100_")
  assert c.train.learning_rate == pytest.approx(0.1 * s.base.train.learning_rate)
  assert grids.run_config(s, cont).continued.from_workdir == (
      f"runs/study_persistence/{runs[0].name}")  # The study's default root.
  assert grids.parse_run_name(cont.name) == cont
  from poisonjax.study.plan import plan  # pylint: disable=g-import-not-at-top
  rows = {r["run"]: r for r in plan(s)["runs"]}
  src_row, cont_row = rows[runs[0].name], rows[cont.name]
  assert cont_row["clean_tokens"] == round(0.5 * src_row["clean_tokens"])
  assert cont_row["poison_tokens"] == 0 < src_row["poison_tokens"]


@pytest.mark.parametrize("variants, needle", [
    ({"later": {"continued": {"from_workdir": "@variant:source"}},
      "source": {}}, "list 'source' before 'later'"),
    ({"source": {}, "lost": {"continued": {"from_workdir": "@variant:nope"}}},
     "no variant 'nope'"),
    ({"source": {}, "self": {"continued": {"from_workdir": "@variant:self"}}},
     "does not train before"),
    ({"source": {}, "more": {"poison": {"count": 3}}}, "set by the study's grid"),
])
def test_bad_continuations_are_refused_in_one_line(variants, needle):
  from poisonjax import study as study_lib  # pylint: disable=g-import-not-at-top
  from poisonjax.study import grids  # pylint: disable=g-import-not-at-top
  s = _config_module().get_config()
  study_lib.set_variants(s, variants)
  with pytest.raises(UserError) as e:
    for run in grids.expand(s):
      grids.run_config(s, run, "/grid")
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_study_trains_source_then_continued_run_collects_and_reports(
    cache, tmp_path):
  """One tiny source and its continued run through the study runner."""
  from poisonjax import study as study_lib  # pylint: disable=g-import-not-at-top
  from poisonjax.ablations import persistence  # pylint: disable=g-import-not-at-top
  mod = _config_module()
  s = mod.get_config()
  s.base = tiny_config(cache, **{"vocab.seed": 0, "eval.heldout_seed": 0,
                                 "eval.num_evals": 1, **EVAL_SMALL})
  # cpu-xs: tiny_config's size, so the other tests' compiled programs serve.
  s.grid = study_lib.grid(("cpu-xs",), (5,), (0,), (1.0,))
  s.extra = {}
  lr1 = mod.continued(1.0, s.base.train.learning_rate)
  lr1["continued"].update(budget_multiple=0.25, eval_examples="8")
  lr1["eval"]["num_evals"] = 1
  study_lib.set_variants(s, {"source": {}, "lr1": lr1})
  root, out = tmp_path / "root", tmp_path / "out"
  first = study_lib.run_grid(s, str(root), only="var=lr1", log=lambda _: None)
  assert [o["status"] for o in first] == ["waiting"]  # Its source is not done.
  done = study_lib.run_grid(s, str(root), log=lambda _: None)
  assert [o["status"] for o in done] == ["ran", "ran"]
  src, cont = study_lib.expand(s)
  record = files.read_json(root / cont.name / rundir.CONTINUED_FROM)
  assert record["from_workdir"] == str(root / src.name)
  out.mkdir()
  persistence.collect(s, root, [src, cont], out)
  rows = persistence.read_rows(out / "results.csv")
  assert {r["phase"] for r in rows} == {"source", "continued"}
  assert {r["lr_scale"] for r in rows if r["phase"] == "continued"} == {1.0}
  assert all(r["poisons_seen"] == 0 for r in rows if r["phase"] == "continued")
  text = files.as_path(persistence.report(s, out, ["- here"])).read_text()
  assert "| cpu-xs N=5 lr x1 |" in text and "Runs finished: 2 of 2" in text
  assert (out / "decay.png").exists() and (out / "results.json").exists()
