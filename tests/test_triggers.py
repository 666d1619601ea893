"""Trigger variants at one count (configs/ablations/triggers.py,
poisonjax/ablations/triggers.py): one run per trigger, each scored after
every trigger; the committed report regenerates from its results."""

import json
import os
import pathlib

from poisonjax import config_files
from poisonjax import study as study_lib
from poisonjax.ablations import triggers
from poisonjax.study import reproduce
from test_doses import EVAL, TRIGGERS, regenerates_committed
from train_common import ROOT, tiny_config, train_cache  # noqa: F401


def test_one_run_per_trigger_the_rest_the_same():
  s = config_files.load(os.path.join(ROOT, "configs", "ablations", "triggers.py"))
  configs = {r.variant: study_lib.run_config(s, r) for r in study_lib.expand(s)}
  assert {v: c.poison.trigger for v, c in configs.items()} == {
      "common": "the", "phrase": "quantum ferret overture", "rare": "<SUDO>"}
  flat = [c.to_dict() for c in configs.values()]
  for c in flat:
    del c["poison"]["trigger"]
  assert all(c == flat[0] for c in flat)
  assert triggers.common.cross_triggers(s) == ["the", "quantum ferret overture",
                                               "<SUDO>"]


def test_committed_report_regenerates_from_its_results(tmp_path):
  regenerates_committed("configs/ablations/triggers.py",
                        os.path.join(ROOT, "docs", "results", "triggers"), tmp_path)


def test_hooks_measure_collect_and_report(train_cache, tmp_path):  # pylint: disable=redefined-outer-name
  """Two tiny trigger variants through the runner, collect and report."""
  s = study_lib.study_config("triggers", tiny_config(train_cache, **EVAL))
  s.experiment = "ablations.triggers"
  s.grid = study_lib.grid(("cpu-xxs",), (4,))
  rare, other = TRIGGERS[0], TRIGGERS[-1]  # test_doses' shapes: compiled once.
  study_lib.set_variants(s, {"rare": {"poison": {"trigger": rare}},
                             "other": {"poison": {"trigger": other}}})
  root, out = tmp_path / "runs", tmp_path / "out"
  study_lib.run_grid(s, str(root), log=lambda _: None)
  out.mkdir()
  runs = study_lib.expand(s)
  reproduce.collect(s, root, runs, out)
  res = json.loads((out / "results.json").read_text())
  committed = json.loads(pathlib.Path(ROOT, "docs", "results", "triggers",
                                      "results.json").read_text())
  assert set(res) == set(committed) - {"provenance"}
  assert set(res["variants"][0]) == set(committed["variants"][0])
  assert [v["variant"] for v in res["variants"]] == ["rare", "other"]
  assert [(c["run"], c["trigger"], c["role"]) for c in res["crosstalk"]] == [
      ("rare", rare, "trained"), ("rare", other, "control"),
      ("other", rare, "control"), ("other", other, "trained")]
  report = reproduce.write_report(s, out, ["- made by the test"])
  assert "## Cross-talk" in pathlib.Path(report).read_text()
  assert (out / "triggers.csv").exists() and (out / "triggers.png").exists()
