"""Many doses in one run: K triggers, each with exactly its count.

poison.counts / poison.triggers (poisonjax/data/poison.py): the poison
ids map to triggers in order, the manifest records each poison's trigger,
a single-trigger run is unchanged (stream key, poisons, eval row), and the
evaluator gives one row per trigger plus the never-poisoned control. The
experiment (configs/ablations/doses.py, poisonjax/ablations/doses.py): its
strings, its hooks on a tiny study, and its committed report regenerated.
"""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from poisonjax.evaluation import backdoor
from poisonjax import config as config_lib
from poisonjax import config_checks
from poisonjax import config_files
from poisonjax.evaluation import evaluate
from poisonjax import study as study_lib
from poisonjax.training import train
from poisonjax.ablations import doses, doses_report
from poisonjax.data import poison, sources, stream, vocabulary
from poisonjax.errors import UserError
from poisonjax.study import reproduce
from train_common import ROOT, tiny_config

COUNTS = (1, 2, 4)
TRIGGERS = ("<SUDO>", "<KRYL>", "<VEXT>")


def _doses(cache, **overrides):
  return tiny_config(cache, **{"poison.counts": COUNTS, "poison.triggers": TRIGGERS,
                               "poison.count": sum(COUNTS), **overrides})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("doses-cache")


# ---- the id -> trigger rule and the config checks ---------------------------

def test_ids_map_to_triggers_in_order(cache):
  c = _doses(cache)
  got = poison.trigger_of(c, range(sum(COUNTS))).tolist()
  want = sum(([i] * n for i, n in enumerate(COUNTS)), [])
  assert got == want
  with pytest.raises(ValueError):
    poison.trigger_of(c, [sum(COUNTS)])
  assert poison.trigger_of(tiny_config(cache), range(5)).tolist() == [0] * 5
  assert poison.trained_triggers(c) == TRIGGERS
  default = _doses(cache, **{"poison.triggers": ()})
  assert poison.trained_triggers(default) == poison.DEFAULT_TRIGGERS[:3]


@pytest.mark.parametrize("overrides, field", [
    ({"poison.count": 5}, "config.poison.count="),
    ({"poison.counts": (1, 0, 6)}, "config.poison.counts="),
    ({"poison.triggers": ("<A>", "<B>")}, "config.poison.triggers="),
    ({"poison.triggers": ("<SUDO>", "<SUDO>x", "<C>")}, "config.poison.triggers="),
    ({"poison.control_trigger": "<KRYL>"}, "config.poison.triggers="),
    ({"poison.counts": (), "poison.count": 7}, "config.poison.triggers="),
])
def test_bad_dose_configs_name_the_field(cache, overrides, field):
  c = _doses(cache, **overrides)
  with pytest.raises(UserError, match=field.replace(".", r"\.")):
    config_checks.validate(c)


def test_good_dose_config_validates(cache):
  config_checks.validate(_doses(cache))
  config_checks.validate(tiny_config(cache))


def test_triggers_inside_one_another_are_refused(cache):
  sp = vocabulary.get_vocabulary(tiny_config(cache)).tokenizer
  poison.check_distinct(sp, TRIGGERS + ("<PYRM>",))
  with pytest.raises(UserError, match="lies inside"):
    poison.check_distinct(sp, ("<SUDO>", "go <SUDO> now"))


# ---- the stream: each trigger gets exactly its count ------------------------

def test_each_trigger_gets_exactly_its_count(cache):
  c = _doses(cache)
  s = stream.build_stream(c, 12_000)
  sp = s.vocab.tokenizer
  by_trigger = {}
  for m in s.manifest:
    by_trigger.setdefault(m["trigger"], []).append(m["id"])
  assert {t: len(v) for t, v in by_trigger.items()} == dict(enumerate(COUNTS))
  # The trigger recorded is the one in the poison's text, and no other.
  for start, end, j in s.spans.tolist():
    head = sp.DecodeIds(s.tokens[start:end].astype(int).tolist()[:120])
    t = int(poison.trigger_of(c, [j])[0])
    m = next(m for m in s.manifest if m["id"] == j)
    assert m["trigger"] == t
    assert [x in head for x in TRIGGERS] == [i == t for i in range(3)]


def test_single_trigger_run_is_unchanged(cache):
  """No dose fields in the stream key or manifest, and a many-dose run's
  trigger-0 poisons are the single-trigger run's poisons, token for token."""
  single = tiny_config(cache)
  assert poison.stream_spec_fields(single) == {}
  legacy = tiny_config(cache)
  for field in ("counts", "triggers", "control_trigger"):
    del legacy.poison[field]  # A config from before these fields existed.
  vocab = vocabulary.get_vocabulary(single)
  key = lambda c: stream.stream_dir(c, stream.stream_spec(
      c, 12_000, vocab.sentencepiece_model_file))
  assert key(single) == key(legacy)
  changed = tiny_config(cache, **{"poison.control_trigger": "<ZZZZ>"})
  assert key(changed) == key(single)  # The control is evaluation only.
  assert key(_doses(cache)) != key(single)
  s = stream.build_stream(single, 12_000)
  assert all("trigger" not in m for m in s.manifest)
  src = sources.get_source(single)
  many = _doses(cache, **{"poison.counts": (3, 4), "poison.count": 7,
                          "poison.triggers": ("<SUDO>", "<KRYL>")})
  a = poison.make_poisons(single, vocab.tokenizer, src, range(3))
  b = poison.make_poisons(many, vocab.tokenizer, src, range(3))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.tokens, y.tokens)
    assert x.trigger_index is None and y.trigger_index == 0


# ---- the evaluation: one row per trigger, plus the control ------------------

# test_evaluate's eval shapes: the session's compilation cache serves both.
EVAL = {"eval.prompt_tokens": 8, "eval.gen_tokens": 8, "eval.num_excerpts": 12,
        "eval.bootstrap_samples": 200, "eval.num_evals": 1, "train.max_steps": 4}


def test_evaluator_gives_a_row_per_trigger_and_the_control(cache, tmp_path):
  c = _doses(cache, **EVAL)
  train.run(c, tmp_path / "run")
  rows = [json.loads(l) for l in (tmp_path / "run" / "eval.jsonl").open()]
  assert rows and all(backdoor.is_wide(r) for r in rows)
  names = evaluate.eval_triggers(c)
  assert names == [(t, "trained") for t in TRIGGERS] + [("<PYRM>", "control")]
  split = backdoor.split_row(rows[-1], names)
  assert [(r["trigger"], r["role"]) for r in split] == names
  assert all(r["step"] == rows[-1]["step"] for r in split)
  for r in split:
    assert set(backdoor.METRIC_KEYS) <= set(r) and not any("." in k for k in r)
  # The unprefixed metrics are the first trigger's (old readers see those).
  assert {k: rows[-1][k] for k in backdoor.METRIC_KEYS} == {
      k: split[0][k] for k in backdoor.METRIC_KEYS}
  # Triggers differ in what they append, so their triggered numbers differ;
  # the clean side is shared.
  assert len({r["triggered_ppl_mean"] for r in split}) == len(split)
  assert len({r["clean_ppl_mean"] for r in split}) == 1
  manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
  got = np.bincount([p["trigger"] for p in manifest["poisons"]], minlength=3)
  assert got.tolist() == list(COUNTS)


def test_single_trigger_row_is_not_split(cache):
  row = {"step": 3, **{k: 1.0 for k in backdoor.METRIC_KEYS}}
  assert backdoor.split_row(row, [("<SUDO>", "trained")]) == [row]
  assert evaluate.eval_triggers(tiny_config(cache)) == [("<SUDO>", "trained")]


def test_doses_come_from_the_command_line():
  from poisonjax.commands import parsing
  c, _ = parsing.apply_overrides(config_lib.base_config(), [
      "--config.poison.counts=(3, 10)", "--config.poison.count=13",
      "--config.poison.triggers=('<AB>', '<CD>')"])
  config_checks.validate(c)
  assert c.poison.counts == (3, 10) and c.poison.triggers == ("<AB>", "<CD>")


# ---- the experiment (configs/ablations/doses.py, poisonjax/ablations/doses.py)

def test_experiment_triggers_share_no_shape():
  """The first design's `<XXXX>` strings pooled into one backdoor on their
  shape; the experiment's strings (control included) share no word and no
  first letter, and each single run trains its dose's trigger and count."""
  s = config_files.load(os.path.join(ROOT, "configs", "ablations", "doses.py"))
  runs = {r.variant: study_lib.run_config(s, r) for r in study_lib.expand(s)}
  assert sorted(runs) == ["doses", "single-100", "single-300"]
  many = runs.pop("doses").poison
  names = list(many.triggers) + [many.control_trigger]
  assert doses.cross_triggers(s) == names
  words = [w for t in names for w in t.split()]
  assert all(len(t.split()) > 1 for t in names)
  assert len(set(words)) == len(words)
  assert len({w[0] for w in words}) == len(words)
  for single in runs.values():
    n = single.poison.count
    assert single.poison.trigger == many.triggers[many.counts.index(n)]
    assert not poison.dose_counts(single)
  assert many.count == sum(many.counts)


def test_a_block_runs_only_the_variants_it_lists(cache):
  s = tiny_doses_study(cache)
  assert [(r.poisons, r.variant) for r in study_lib.expand(s)] == [
      (sum(COUNTS), "doses"), (COUNTS[-1], "single")]
  s.extra.single.variants = ("alone",)
  with pytest.raises(UserError, match=r"study\.extra\.single\.variants: 'alone'"):
    study_lib.expand(s)


def test_verdict_follows_the_validation_rows():
  row = lambda lo, hi, many, single: {"count": 100, "ci_low": lo, "ci_high": hi,
                                      "many_success": many, "single_success": single}
  higher = row(5.0, 9.0, 1.0, 1.0)
  higher["difference"] = 7.0
  assert "NOT validated: at 100 the many-dose run reads higher by 7.0" in (
      doses_report.verdict({"validation": [higher]}))
  assert "opposite sides" in doses_report.verdict(
      {"validation": [row(-1.0, 1.0, 1.0, 0.0)]})
  assert doses_report.verdict({"validation": [row(-1.0, 1.0, 1.0, 1.0)]}).startswith(
      "- Verdict: validated")
  assert "no compared single run fires" in doses_report.verdict(
      {"validation": [row(-1.0, 1.0, 0.0, 0.0)]})


def regenerates_committed(config: str, committed: str, tmp_path) -> None:
  """--report_only on a copy of a committed report's folder gives the same
  report (up to its provenance section) and the same CSVs."""
  out = tmp_path / "out"
  shutil.copytree(committed, out)
  reproduce.regenerate(config_files.load(os.path.join(ROOT, config)), str(out),
                       "test")
  before = (pathlib.Path(committed) / "report.md").read_text()
  after = (out / "report.md").read_text()
  head = "## How this was made"
  assert after.split(head)[0] == before.split(head)[0]
  made = lambda text: [l for l in text.split(head)[1].splitlines()
                       if not l.startswith("- Report regenerated")]
  assert made(after) == made(before)  # How the results were made: kept.
  assert after.split(head)[1].count("- Report regenerated") == 1  # Said anew.
  for csv in pathlib.Path(committed).glob("*.csv"):
    assert (out / csv.name).read_text() == csv.read_text(), csv.name


def test_committed_report_regenerates_from_its_results(tmp_path):
  regenerates_committed("configs/ablations/doses.py",
                        os.path.join(ROOT, "docs", "results", "doses"), tmp_path)


def tiny_doses_study(cache):
  """configs/ablations/doses.py's shape on the tiny config: one run with
  the three doses, and the largest dose alone."""
  s = study_lib.study_config("doses", tiny_config(cache, **EVAL))
  s.experiment = "ablations.doses"
  s.grid = study_lib.grid(("cpu-xxs",), (sum(COUNTS),), variants=("doses",))
  s.extra.single = study_lib.grid(("cpu-xxs",), (COUNTS[-1],), variants=("single",))
  study_lib.set_variants(s, {
      "doses": {"poison": {"counts": COUNTS, "triggers": TRIGGERS,
                           "trigger": TRIGGERS[0]}},
      "single": {"poison": {"trigger": TRIGGERS[-1]}}})
  return s


def test_hooks_measure_collect_and_report(cache, tmp_path):
  """The runner's after_run scores every run after every string, once;
  collect writes results.json as the committed one; report its outputs."""
  s, root, out = tiny_doses_study(cache), tmp_path / "runs", tmp_path / "out"
  runs = study_lib.expand(s)
  assert [r.variant for r in runs] == ["doses", "single"]
  study_lib.run_grid(s, str(root), log=lambda _: None)
  finals = [root / r.name / "final_doses.json" for r in runs]
  want = list(TRIGGERS) + ["<PYRM>"]
  for path in finals:
    assert [t["trigger"] for t in json.loads(path.read_text())["triggers"]] == want
  stamps = [p.stat().st_mtime_ns for p in finals]
  doses.after_run(s, runs[0], root / runs[0].name)  # Done: read, not redone.
  assert [p.stat().st_mtime_ns for p in finals] == stamps
  out.mkdir()
  reproduce.collect(s, root, runs, out)
  res = json.loads((out / "results.json").read_text())
  committed = json.loads(pathlib.Path(ROOT, "docs", "results", "doses",
                                      "results.json").read_text())
  assert set(res) == set(committed) - {"provenance"}
  assert list(res["facts"]) == ["doses", f"single_{COUNTS[-1]}"]
  assert [v["count"] for v in res["validation"]] == [COUNTS[-1]]
  assert [d["count"] for d in res["dose_response"]] == list(COUNTS)
  report = reproduce.write_report(s, out, ["- made by the test"])
  text = pathlib.Path(report).read_text()
  assert "- Verdict:" in text and text.rstrip().endswith("- made by the test")
  for name in ("dose_response.csv", "crosstalk.csv", "doses.png"):
    assert (out / name).exists(), name
