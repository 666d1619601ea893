"""The study's fits and report: N50 with its bootstrap interval, count vs
share as a model comparison, and report.md written from those numbers."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize
from scipy import special

from poisonjax import files
from poisonjax import plots
from poisonjax.study import analysis
from poisonjax.study import analysis_size
from poisonjax.study import count_vs_share
from poisonjax.study import grids
from poisonjax.study import report
from poisonjax.study import report_sections
from poisonjax.study import report_size
from poisonjax.study import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _logistic_draws(rng, counts, reps, n50, slope):
  n = np.repeat(np.asarray(counts, float), reps)
  y = rng.random(len(n)) < special.expit(slope * (np.log(n) - math.log(n50)))
  return n, y.astype(float)


def test_logistic_fit_is_the_likelihood_maximum():
  rng = np.random.default_rng(3)
  n, y = _logistic_draws(rng, np.geomspace(4, 400, 7), 15, 40.0, 2.0)
  X = np.c_[np.ones_like(n), np.log(n), rng.normal(size=len(n))]
  fit = analysis.fit_logistic(X, y)
  nll = lambda b: float(np.sum(np.logaddexp(0, X @ b) - y * (X @ b)))
  ref = optimize.minimize(nll, np.zeros(3), method="Nelder-Mead",
                          options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 20000})
  assert fit.loglik == pytest.approx(-ref.fun, abs=1e-6)
  np.testing.assert_allclose(fit.beta, ref.x, atol=1e-3)


def test_n50_and_its_bootstrap_interval_cover_the_truth():
  rng = np.random.default_rng(0)
  true_n50 = 40.0
  counts = np.geomspace(4, 400, 9)
  n, y = _logistic_draws(rng, counts, 20, true_n50, 2.5)
  est = analysis.n50(n, y)
  assert est.kind == "fit" and est.point is not None
  ci = analysis.bootstrap_n50(n, y, 400, np.random.default_rng(1))
  assert ci["n_boot"] == 400 and sum(ci["kinds"].values()) == 400
  assert ci["lo"] <= est.point <= ci["hi"]
  assert ci["lo"] <= true_n50 <= ci["hi"]
  # Informative: strictly inside the counts tested, and the point is a number.
  assert counts.min() < ci["lo"] and ci["hi"] < counts.max()
  assert analysis.format_n50(est) == f"{est.point:.3g}"


def test_bounds_when_the_data_do_not_pin_n50_down():
  n = np.array([10, 10, 30, 30, 100, 100], float)
  none = analysis.n50(n, np.zeros(6))
  assert (none.kind, analysis.format_n50(none)) == ("no_success", "> 100")
  every = analysis.n50(n, np.ones(6))
  assert (every.kind, analysis.format_n50(every)) == ("all_success", "< 10")
  sep = analysis.n50(n, np.array([0, 0, 0, 0, 1, 1], float))
  assert (sep.kind, sep.point, analysis.format_n50(sep)) == ("separated", None, "30 to 100")
  # Mixed only at 30, failures below, successes above: the limit is a step at 30.
  step = analysis.n50(n, np.array([0, 0, 0, 1, 1, 1], float))
  assert (step.kind, step.point) == ("separated", 30.0)
  ci = analysis.bootstrap_n50(n, np.ones(6), 100, np.random.default_rng(0))
  assert analysis.format_interval(ci, [10, 30, 100]).startswith("[< 10, ")
  ci = analysis.bootstrap_n50(n, np.zeros(6), 100, np.random.default_rng(0))
  assert analysis.format_interval(ci, [10, 30, 100]).endswith(", > 100]")


def _synthetic_runs(rng, driver: str, sizes=(1e5, 3e5, 1e6, 3e6),
                    mults=(0.5, 1.0, 2.0, 4.0, 8.0), n_seeds: int = 2) -> analysis.Runs:
  """Sizes x data amounts x counts x seeds; the log increase follows count or
  share (the poison documents' share of the tokens seen) plus noise. The
  bootstraps resample seeds, so an interval needs several of them."""
  rows = []
  for params in sizes:
    for mult in mults:
      for n in (5, 15, 50, 150):
        for seed in range(n_seeds):
          tokens = 20 * params * mult
          x = n if driver == "count" else n / tokens * 1e6
          inc = math.exp(1.2 * math.log(x) - (0.5 if driver == "count" else -1.0)
                         + rng.normal(0, 0.5))
          rows.append((f"s{params:g}", params, mult, seed, n, tokens, inc))
  cols = list(zip(*rows))
  return analysis.Runs(np.array(cols[0], object), np.array(cols[0], object),
                       np.array(cols[1]), np.array(cols[2]),
                       np.array(cols[3]), np.array(cols[4], float),
                       np.array(cols[5]), np.array(cols[6]))


@pytest.mark.parametrize("driver", ["count", "share"])
def test_model_comparison_picks_the_generating_predictor(driver):
  runs = _synthetic_runs(np.random.default_rng(7), driver, n_seeds=8)
  c = count_vs_share.compare(runs, threshold=50.0, n_boot=100, seed=0)
  assert c["n_clusters"] == 8
  assert c["fitted"] and c["contrast_sd"] > 0.5
  for resp in count_vs_share.RESPONSES:
    r = c["responses"][resp]
    assert r["better"] == driver, (resp, r)
    m = c["models"]
    assert r["delta_aic"] == pytest.approx(m[f"{resp}/share"]["aic"] - m[f"{resp}/count"]["aic"])
    agree = r["boot_count_better"] if driver == "count" else 1 - r["boot_count_better"]
    assert agree >= 0.9
  # The generating model has no size term: its size slope's interval holds 0.
  lo, hi = c["models"][f"log_increase/{driver}"]["size_slope_boot"]
  assert lo <= 0 <= hi


def test_separation_is_flagged_and_gets_no_slope():
  """A step between counts (no failure above a success) separates the runs:
  no ML fit, flagged, and the report gives no slope nor a verdict for it."""
  x = np.log(np.repeat([10.0, 30.0, 100.0], 4))
  X = np.c_[np.ones(12), x, np.tile([0.0, 1.0], 6)]
  step = (x > np.log(50)).astype(float)
  assert analysis.separates(X, step)
  assert analysis.separates(X, np.r_[step[:8], 0, 1, 1, 1])  # Quasi: a tie at 100.
  mixed = step.copy()
  mixed[[3, 9]] = 1 - mixed[[3, 9]]  # A success at 10, a failure at 100.
  assert not analysis.separates(X, mixed)
  step_at_20 = lambda r: dataclasses.replace(r, increase=np.where(r.poisons > 20, 500.0, 1.0))
  rng = np.random.default_rng(2)
  # Two data amounts: a step in count is not one in share.
  c = count_vs_share.compare(step_at_20(_synthetic_runs(rng, "count", (1e5, 1e6), (1.0, 4.0))),
                               50.0, 40, 0)
  assert [c["models"][k]["separated"] for k in ("success/count", "success/share",
                                                 "log_increase/count")] == [True, False, False]
  text = "\n".join(report_sections.comparison(c, 50.0))
  assert "| success | count |" in text and "not identified (separated) | - | - |" in text
  assert "- Success: the count model separates the runs" in text
  assert "- Success: **count**" in text and "- Log increase: **" in text
  # Amounts 1x and 1.5x, a step at 150 poisons: the step is a cut in count and
  # (with log size) in share alike, so both separate.
  step_at_100 = lambda r: dataclasses.replace(r, increase=np.where(r.poisons > 100, 500.0, 1.0))
  c = count_vs_share.compare(step_at_100(_synthetic_runs(rng, "count", (1e5, 1e6), (1.0, 1.5))),
                               50.0, 40, 0)
  assert c["models"]["success/count"]["separated"] and c["models"]["success/share"]["separated"]
  lines = report_sections.comparison(c, 50.0)
  assert any("these runs cannot rank them on success" in l for l in lines)
  assert not any(l.startswith(("- Success: **", "- Success, ")) for l in lines)
  assert any(l.startswith("- Log increase: **") for l in lines)


def test_count_and_share_are_not_compared_where_they_coincide():
  """One data amount: with log size in both models, log share is log count
  shifted, the two fits are one model, and no verdict may be drawn."""
  runs = _synthetic_runs(np.random.default_rng(4), "count", (1e5, 1e6), (1.0,), n_seeds=3)
  c = count_vs_share.compare(runs, 50.0, 20, 0)
  assert not c["fitted"] and c["contrast_sd"] < count_vs_share.COLLINEAR_SD
  text = "\n".join(report_sections.comparison(c, 50.0))
  assert "Not fitted: count and share coincide here" in text
  assert "describes the runs better" not in text
  # Two amounts: the same runs become comparable.
  two = _synthetic_runs(np.random.default_rng(4), "count", (1e5, 1e6), (1.0, 4.0), n_seeds=3)
  assert count_vs_share.compare(two, 50.0, 20, 0)["fitted"]


def _csv_rows(runs: analysis.Runs) -> list[dict]:
  rows = []
  for i in range(len(runs)):
    name = grids.run_name(runs.size[i], int(runs.poisons[i]), int(runs.seed[i]),
                          float(runs.data_multiplier[i]))
    base = {"run": name, "size": runs.size[i], "poison_count": int(runs.poisons[i]),
            "seed": int(runs.seed[i]), "data_multiplier": float(runs.data_multiplier[i]),
            "params": int(runs.params[i]), "num_steps": 100, "finished": 1,
            "clean_ppl_mean": 20.0, "success_share": 0.5}
    rows.append({**base, "eval_index": 0, "step": 0, "fraction": 0.0,
                 "tokens_seen": 0, "poisons_seen": 0, "increase": 0.0,
                 "triggered_ppl_mean": 20.0})
    rows.append({**base, "eval_index": 1, "step": 100, "fraction": 1.0,
                 "tokens_seen": int(runs.tokens[i]), "poisons_seen": int(runs.poisons[i]),
                 "poisons_per_mtok": runs.poisons[i] / runs.tokens[i] * 1e6,
                 "increase": float(runs.increase[i]),
                 "triggered_ppl_mean": 20.0 + float(runs.increase[i])})
  return rows


def test_report_numbers_are_the_fits(tmp_path):
  runs = _synthetic_runs(np.random.default_rng(11), "count", (1e5, 1e6), (1.0, 4.0))
  csv_path = str(tmp_path / "results.csv")
  results.write_csv(_csv_rows(runs), csv_path)
  made = report.generate(csv_path, str(tmp_path / "out"), threshold=50.0,
                         provenance=["- made by the test"], n_boot=60, seed=5)
  text = open(made["report"]).read()
  # Refit from the CSV: the same numbers the report shows.
  again, _ = analysis.final_runs(plots.read_csv(csv_path))
  th = analysis.thresholds(again, 50.0, 60, 5)
  comp = count_vs_share.compare(again, 50.0, 60, 5)
  size = analysis_size.size_exponent(again, 50.0, 60, 5)
  # The report opens with beta and its seed-clustered interval.
  assert size["fitted"] and text.splitlines()[2] == report_size.headline(size)[0]
  assert text.splitlines()[2].startswith(f"**beta = {size['beta']:.2f}, seed-clustered")
  for row in th:
    cells = (f"| {row['data_multiplier']:g}x | {row['size']} | {row['params']:,} | "
             f"{row['n_runs']} ({row['n_success']}) |")
    section = text[text.index("## Poison threshold N50"):]
    line = next(l for l in section.splitlines() if l.startswith(cells))
    assert f"| {analysis.format_n50(row['estimate'])} |" in line
    assert f"| {analysis.format_interval(row['interval'], row['counts'])} |" in line
  for key, m in comp["models"].items():
    resp, pred = key.split("/")
    slope = "not identified (separated)" if m["separated"] else f"{m['size_slope']:.3f}"
    assert (f"| {resp.replace('_', ' ')} | {pred} | {m['loglik']:.2f} | {m['k']} "
            f"| {m['aic']:.2f} | {slope} |") in text
  for resp, r in comp["responses"].items():
    assert f"= {r['delta_aic']:.2f} (Akaike weight of count {r['count_weight']:.3f})" in text
    assert f"in {100 * r['boot_count_better']:.1f}% of 60 bootstrap" in text
  saved = json.load(open(tmp_path / "out" / "count_vs_share.json"))
  for resp, r in comp["responses"].items():
    assert saved["responses"][resp]["delta_aic"] == pytest.approx(r["delta_aic"])
  n50_csv = plots.read_csv(str(tmp_path / "out" / "n50.csv"))
  assert [r["n50_lo"] for r in n50_csv] == pytest.approx([r["estimate"].lo for r in th])
  for name in ("## Regime", "## How this was made", "- made by the test",
               "## Caveats", "![n50](n50.png)", "![count_vs_share](count_vs_share.png)"):
    assert name in text
  share = again.poisons / again.tokens * 1e6
  assert (f"{share.min():.3g} to {share.max():.3g} poison documents per million"
          in text)
  assert re.search(r"seeds: 0, 1;", text)


def test_report_only_regenerates_from_results_csv(tmp_path):
  """No runs, no training: the report comes from OUT/results.csv, and the
  old report's provenance is kept."""
  runs = _synthetic_runs(np.random.default_rng(2), "share", (1e5, 1e6), (1.0,))
  out = tmp_path / "out"
  out.mkdir()
  results.write_csv(_csv_rows(runs), str(out / "results.csv"))
  (out / "report.md").write_text("# old\n\n## How this was made\n\n- Machine: "
                                 "the old one\n- Wall time: 1.00 h\n\n## Final results\n")
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  res = subprocess.run(
      [sys.executable, "-m", "poisonjax.cli", "study", "reproduce", "--report_only",
       "--config=configs/paper/cpu_nano.py", f"--root={tmp_path / 'none'}",
       f"--out={out}", "--bootstrap=20"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
  text = (out / "report.md").read_text()
  assert "- Machine: the old one" in text and "(no training)" in text
  assert "20 bootstrap resamples" in text
  assert not (tmp_path / "none").exists()
  assert json.loads((out / "provenance.json").read_text())["lines"][0] == (
      "- Machine: the old one")


def test_report_compares_with_previous_results(tmp_path):
  """OUT/previous/results.csv is fitted the same way and shown side by side."""
  now = _synthetic_runs(np.random.default_rng(3), "count", (1e5, 1e6), (1.0, 4.0))
  before = _synthetic_runs(np.random.default_rng(4), "share", (1e5, 1e6), (1.0, 4.0))
  out = tmp_path / "out"
  (out / "previous").mkdir(parents=True)
  results.write_csv(_csv_rows(now), str(out / "results.csv"))
  results.write_csv(_csv_rows(before), str(out / "previous" / "results.csv"))
  files.write_json(str(out / "previous" / "provenance.json"),
                   {"lines": ["- Machine: the old one"]})
  text = open(report.generate(str(out / "results.csv"), str(out), threshold=50.0,
                              n_boot=40, seed=1)["report"]).read()
  section = text[text.index("## Changes since the previous run"):]
  assert "- Machine: the old one" in section
  old, _ = analysis.final_runs(plots.read_csv(str(out / "previous" / "results.csv")))
  new, _ = analysis.final_runs(plots.read_csv(str(out / "results.csv")))
  for o, n in zip(analysis.thresholds(old, 50.0, 40, 1), analysis.thresholds(new, 50.0, 40, 1)):
    if o["estimate"] is None or n["estimate"] is None:
      continue
    assert (f"| {n['data_multiplier']:g}x | {n['size']} | "
            f"{analysis.format_n50(o['estimate'])} | "
            f"{analysis.format_interval(o['interval'], o['counts'])} | "
            f"{analysis.format_n50(n['estimate'])} |") in section
  prev = count_vs_share.compare(old, 50.0, 40, 1)["responses"]["success"]
  assert f"before, {prev['better']} better by dAIC {prev['delta_aic']:.2f}" in section


def test_count_vs_share_figure_draws_one_size(tmp_path):
  """A partial study with one size at several data amounts: the fit has no
  size term, and the figure is still drawn (it used to index past it)."""
  from poisonjax.study import figures_fits
  runs = _synthetic_runs(np.random.default_rng(3), "count", sizes=(1e5,),
                         mults=(1.0, 4.0), n_seeds=3)
  c = count_vs_share.compare(runs, threshold=50.0, n_boot=20, seed=0)
  assert len(c["models"]["log_increase/count"]["beta"]) == 2
  figures_fits.compare_figure(runs, c, str(tmp_path / "cvs.png"))
  assert (tmp_path / "cvs.png").stat().st_size > 0


def test_final_vs_size_sentence_names_the_trend_only_with_two_sizes():
  from poisonjax.study import figures
  row = lambda size, params, n, mean, ok: {
      "size": size, "params": params, "poison_count": n, "data_multiplier": 1.0,
      "increase_mean": mean, "n_success": ok, "n_seeds": 2}
  one = [row("a", 1e5, 30, 2.0, 0), row("a", 1e5, 100, 400.0, 2)]
  assert "one size only" in figures.sentence_final_vs_size(one, 50.0)
  two = one + [row("b", 1e6, 30, 90.0, 1), row("b", 1e6, 100, 600.0, 2)]
  text = figures.sentence_final_vs_size(two, 50.0)
  assert "30 poisons: a 2.0 -> b 90.0, every seed above 50 at no size, some seeds at b" in text


def test_a_verdict_is_never_decisive_on_fewer_than_five_seeds():
  r = {"better": "count", "delta_aic": 12.0, "count_weight": 0.998,
       "boot_count_better": 1.0, "boot_delta_aic": [8.0, 15.0]}
  assert report_sections.verdict("success", r, 100, 8).endswith("Evidence: decisive.")
  few = report_sections.verdict("success", r, 100, 3)
  assert "Evidence: clear but not decisive (decisive needs 5 or more seeds" in few
