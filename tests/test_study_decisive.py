"""The decisive study's design (issue 27): 300 prompts, block order
(cheapest first), and a budget in measured core-hours within ~30."""

from __future__ import annotations

import importlib.util
import os

import pytest

from poisonjax import study as study_lib
from poisonjax.errors import UserError
from poisonjax.study import grids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _study(name: str = "cpu_decisive"):
  path = os.path.join(ROOT, "configs", "paper", f"{name}.py")
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _decisive():
  return _study("cpu_decisive")


def test_blocks_train_in_run_order_seed_major_within():
  s = _decisive()
  runs = grids.expand(s)
  sizes = [(r.size, r.data_multiplier) for r in runs]
  firsts = [sizes.index(k) for k in (("cpu-xxs", 1.0), ("cpu-xs", 1.0),
                                     ("cpu-s", 1.0), ("cpu-xxs", 8.0))]
  assert firsts == sorted(firsts) and firsts[0] == 0
  xs = [r.seed for r in runs if r.size == "cpu-xs" and r.poisons < 170]
  assert xs == sorted(xs) and len(xs) == 30  # The block "xs", seed by seed.
  assert grids.run_config(s, runs[0]).eval.num_excerpts == 300
  s.run_order = ("grid", "s")
  with pytest.raises(UserError, match="run_order"):
    grids.expand(s)
  s.run_order = ()
  assert [r.seed for r in grids.expand(s)] == sorted(r.seed for r in runs)


def test_plan_gives_measured_core_hours_within_budget():
  """Planned on one seed per block (steps do not depend on the seed; the
  full plan takes a minute of model shapes), scaled by the seeds."""
  s = _decisive()
  seeds = {"grid": len(s.grid.seeds)}
  s.grid.seeds = (0,)
  for name in s.extra.keys():
    seeds[name] = len(s.extra[name].seeds)
    s.extra[name].seeds = s.extra[name].seeds[:1]
  p = study_lib.plan(s)
  block = {("cpu-xxs", 1.0): "grid", ("cpu-xs", 1.0): "xs", ("cpu-s", 1.0): "s",
           ("cpu-xxs", 8.0): "arm"}
  block_of = lambda r: ("xs_170" if r["run"].startswith("size=cpu-xs_n=170_") else
                        "s_0" if r["run"].startswith("size=cpu-s_") and "_seed=0_" in r["run"] else
                        "s_45" if r["run"].startswith("size=cpu-s_n=45_") else
                        "s_20" if r["run"].startswith("size=cpu-s_n=20_") else
                        block[(r["size"], r["data_multiplier"])])
  total = sum(r["core_hours"] * seeds[block_of(r)] for r in p["runs"])
  assert 20 < total <= 31
  assert p["totals"]["core_hours"] == pytest.approx(sum(r["core_hours"] for r in p["runs"]))
  row = next(r for r in p["runs"] if r["run"] == "size=cpu-s_n=40_seed=0_data=1.0")
  assert row["core_hours"] == pytest.approx(row["steps"] * 0.77 / 3600)
  assert "core-h" in study_lib.format_plan(p)


def test_the_gpu_study_is_the_decisive_regime_over_a_wider_size_range():
  """configs/paper/gpu_wide.py: each run's config equals the decisive
  study's run of the same size, count and seed, except for checkpoint
  spacing and TensorBoard files (no result depends on either); its sizes
  span at least 20x in parameters."""
  wide, decisive = _study("gpu_wide"), _decisive()
  run = next(r for r in grids.expand(wide) if r.size == "cpu-xxs" and r.seed == 0)
  mine, theirs = grids.run_config(wide, run), grids.run_config(decisive, run)
  for c in (mine, theirs):
    c.train.ckpt_every, c.train.tensorboard = 0, False
  assert mine.to_dict() == theirs.to_dict()
  wide.grid.seeds, wide.grid.poison_counts = (0,), (30,)
  params = [r["params"] for r in study_lib.plan(wide)["runs"]]
  assert len(params) == 5 and max(params) / min(params) >= 20
