"""Study variants: a placement sweep as a grid axis, end to end on a nano study.

Two variants (uniform; all poisons in the last half) x two counts, trained
in process: run names carry the variant, each run's config and manifest
record its placement, results.csv has the variant column, and the report
compares the variants. Bad overrides fail with one line naming the variant
and the field; studies without variants keep their run names and columns.
"""

import csv
import importlib.util
import json
import os

import pytest

from poisonjax import files
from poisonjax import study
from poisonjax.errors import UserError
from train_common import ROOT, tiny_config, train_cache  # pylint: disable=unused-import

VARIANTS = {"uniform": {},
            "last50": {"poison": {"placement": "last", "placement_fraction": 0.5}}}
COUNTS = (4, 8)


def _study(cache, variants=VARIANTS):
  base = tiny_config(cache)
  # test_evaluate.py's evaluation: its compiled programs are in the session's
  # compilation cache when the suite runs (compiling is most of this test).
  base.eval.num_evals = 1
  base.eval.num_excerpts, base.eval.prompt_tokens, base.eval.gen_tokens = 12, 8, 8
  base.eval.bootstrap_samples = 200
  s = study.study_config("variants_nano", base)
  s.grid = study.grid(("cpu-xxs",), COUNTS, (0,), (1.0,))
  study.set_variants(s, variants)
  return s


def _load(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def swept(train_cache, tmp_path_factory):
  """The nano sweep trained, collected and reported once for the module."""
  root = tmp_path_factory.mktemp("variants")
  s = _study(train_cache)
  study.run_grid(s, str(root), log=lambda m: None)
  study.write_csv(study.collect(str(root)), str(root / "results.csv"))
  made = study.make_figures(str(root))
  return s, root, made


def test_run_names_carry_the_variant_and_round_trip(swept):
  s, root, _ = swept
  runs = study.expand(s)
  assert [(r.poisons, r.variant) for r in runs] == [
      (n, v) for n in COUNTS for v in VARIANTS]  # variants innermost
  for run in runs:
    assert run.name.endswith(f"_var={run.variant}")
    assert study.parse_run_name(run.name) == run
    assert (root / run.name / "summary.json").exists()


def test_each_run_records_its_placement(swept):
  s, root, _ = swept
  where = {}
  for run in study.expand(s):
    cfg = files.read_json(root / run.name / "config.json")
    manifest = files.read_json(root / run.name / "manifest.json")
    kind = "last" if run.variant == "last50" else "uniform"
    assert cfg["poison"]["placement"] == manifest["placement"]["kind"] == kind
    assert cfg["poison"]["count"] == len(manifest["poisons"]) == run.poisons
    where[run.name] = sorted(m["fraction"] for m in manifest["poisons"])
    if kind == "last":
      assert manifest["placement"]["fraction"] == 0.5
      assert min(where[run.name]) >= 0.5
      assert min(m["clean_offset"] for m in manifest["poisons"]) >= (
          0.5 * manifest["clean_tokens"])
  # One grid seed: the variants differ only in where the poisons go.
  for n in COUNTS:
    uniform, last = (study.Run("cpu-xxs", n, 0, 1.0, v).name for v in VARIANTS)
    assert where[uniform] != where[last]


def test_results_csv_has_the_variant_column(swept):
  s, root, _ = swept
  with open(root / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  header = list(rows[0])
  assert header.index("variant") == header.index("data_multiplier") + 1
  for r in rows:
    assert r["variant"] == study.parse_run_name(r["run"]).variant
  assert {(r["run"], r["variant"]) for r in rows} == {
      (run.name, run.variant) for run in study.expand(s)}


def test_report_compares_the_variants(swept):
  _, root, made = swept
  report = open(made["report"]).read()
  assert "variant `uniform`'s runs alone" in report
  by_variant = report[report.index("## By variant"):]
  assert "- `last50`: poison.placement='last', poison.placement_fraction=0.5" in by_variant
  for name in VARIANTS:
    assert f"- `{name}`:" in by_variant
  # One N50 row per variant; one final row per variant and count, which
  # holds that run's own final increase.
  n50 = by_variant[by_variant.index("### N50"):by_variant.index("### Final")]
  assert sum(l.startswith("| uniform |") for l in n50.splitlines()) == 1
  assert sum(l.startswith("| last50 |") for l in n50.splitlines()) == 1
  n50_rows = list(csv.DictReader(open(made["figures"]["by_variant"]["n50_csv"])))
  assert [(r["variant"], int(r["n_runs"])) for r in n50_rows] == [
      (v, len(COUNTS)) for v in VARIANTS]  # each variant's runs alone
  table = list(csv.DictReader(open(made["figures"]["by_variant"]["csv"])))
  assert {(r["variant"], int(r["poison_count"])) for r in table} == {
      (v, n) for v in VARIANTS for n in COUNTS}
  finals = {}
  for r in csv.DictReader(open(root / "results.csv")):
    if r["finished"] == "1":
      finals[(r["variant"], int(r["poison_count"]))] = float(r["increase"])
  for r in table:
    assert float(r["increase_mean"]) == pytest.approx(
        finals[(r["variant"], int(r["poison_count"]))])
    assert f"| {r['variant']} | 1 | {float(r['increase_mean']):.1f} " in by_variant
  with open(made["figures"]["by_variant"]["png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # The main sections are the reference variant's runs only.
  main = report[:report.index("## By variant")]
  final_rows = [l for l in main.splitlines() if l.startswith("| cpu-xxs |")]
  assert len(final_rows) == len(COUNTS)


def test_a_bad_override_fails_with_one_line_naming_variant_and_field(
    train_cache, tmp_path):
  bad = dict(VARIANTS, typo={"poison": {"placment": "last"}})
  with pytest.raises(UserError) as e:
    study.run_grid(_study(train_cache, bad), str(tmp_path / "root"))
  assert str(e.value).startswith("study.variants.typo.poison.placment: "
                                 "unknown config field")
  assert "\n" not in str(e.value) and "'placement'" in str(e.value)
  assert not list((tmp_path / "root").glob("size=*"))  # Nothing trained.
  grid_owned = dict(VARIANTS, more={"poison": {"count": 3}})
  with pytest.raises(UserError, match=r"^study.variants.more.poison.count: set by"):
    study.plan(_study(train_cache, grid_owned))
  with pytest.raises(UserError, match=r"^study.variants: name 'a_b'"):
    _study(train_cache, {"a_b": {}})


def test_without_variants_names_and_columns_are_unchanged(tmp_path):
  s = _load("paper/cpu_chinchilla").get_config()
  names = [r.name for r in study.expand(s)]
  assert names[0] == "size=cpu-xxs_n=10_seed=0_data=1.0"
  assert not any("var" in n for n in names)
  rows = [{"run": n, **study.parse_run_name(n).coords()} for n in names[:2]]
  study.write_csv(rows, str(tmp_path / "r.csv"))
  header = open(tmp_path / "r.csv").readline().strip().split(",")
  assert "variant" not in header and header[:5] == list(study.COORD_COLUMNS[:5])


def test_placement_study_plans_its_placements():
  mod = _load("ablations/placement")
  s = mod.get_config()
  runs = study.expand(s)
  assert len(runs) == 10 and [r.variant for r in runs[:5]] == [
      "uniform", "first10", "last10", "bursts5", "periodic4x46"]
  assert s.experiment == "ablations.placement"
  for run in runs:
    c = study.run_config(s, run)
    fields = mod.VARIANTS[run.variant]["poison"]
    assert {k: c.poison[k] for k in fields} == fields
    assert (c.model.size, c.poison.budget_mode) == ("cpu-xxs", "replace")
    assert c.eval.num_evals == 20
