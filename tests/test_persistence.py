"""Continued clean training from a backdoored run (poisonjax/continued.py).

One tiny poisoned source run per module; continued runs start from its
params, see no poisons, refuse a mismatched model in one line, evaluate at
the configured points (num_evals and the fine-tune k list) and resume from
their own checkpoints.
"""

import jax
import numpy as np
import pytest

from poisonjax import checkpointing
from poisonjax import continued
from poisonjax import evaluate
from poisonjax import files
from poisonjax import restore as restore_lib
from poisonjax import rundir
from poisonjax import train
from poisonjax import train_setup
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
  src_params, src_step = restore_lib.restore_params(str(source), s.model_cfg)
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
  first = first_leaf(restore_lib.restore_params(
      str(tmp_path), train_setup.setup(config, tmp_path).model_cfg, 10)[0])
  capsys.readouterr()
  config.train.max_steps = 0
  out = train.run(config, tmp_path)
  log = capsys.readouterr().out
  assert "resuming" in log and "continuing from" not in log
  assert out["finished"] and out["poisons_seen"] == 0
  assert not np.array_equal(first, first_leaf(restore_lib.restore_params(
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
