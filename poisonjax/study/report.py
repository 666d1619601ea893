"""A study's report.md, figures and tables, from its results.csv alone.

`generate` reads the collected CSV, draws the descriptive figures
(figures.py) and the fits' figures (figures_fits.py), fits the
size exponent beta of N50 (analysis_size), N50 per size under a common
slope (analysis_parallel), N50 per size and data amount (analysis) and count
versus share (count_vs_share), writes their numbers
as size_exponent.json, n50.csv and count_vs_share.json, and writes report.md
from those same numbers: beta, N50 per size and the targets first
(report_size), then regime, provenance (lines the caller passes), N50, the
model comparison, the final-results table, the figures with their computed
sentences, and the caveats. A study with variants
(study.variants) gets those sections for its first variant and a 'By
variant' comparison of all (report_variants). Nothing needs the runs'
directories, so a committed results.csv regenerates its report.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from poisonjax import files
from poisonjax import plots
from poisonjax.study import analysis
from poisonjax.study import analysis_parallel
from poisonjax.study import analysis_size
from poisonjax.study import count_vs_share
from poisonjax.study import figures
from poisonjax.study import figures_fits
from poisonjax.study import report_arms
from poisonjax.study import report_sections as sections
from poisonjax.study import report_size
from poisonjax.study import report_variants

_N50_COLS = ["size", "data_multiplier", "params", "n_runs", "n_success",
             "counts", "seeds", "kind", "n50_lo", "n50_hi", "n50", "slope",
             "ci_lo", "ci_hi", "n_boot", "firth_n50", "firth_lo", "firth_hi",
             "firth_slope"]


def study_regime(study, last_rows: list[dict]) -> dict:
  """The regime beyond the runs' own numbers: steps per group (from the
  runs' last rows) and what the study config says (none without one)."""
  reg = {}
  spans = []
  for key in {(r["size"], r["data_multiplier"]) for r in last_rows}:
    steps = [r["num_steps"] for r in last_rows
             if (r["size"], r["data_multiplier"]) == key and r["num_steps"]]
    if steps:
      spans.append(max(steps) / min(steps) - 1)
  if spans and max(spans) > 0:
    reg["steps_by_group_span"] = max(spans)
  if study is None:
    return reg
  from poisonjax.study import grids  # pylint: disable=g-import-not-at-top
  from poisonjax.study.plan import poison_tokens_per_doc  # pylint: disable=g-import-not-at-top
  study = ml_collections.ConfigDict(study)
  mults = sorted({r["data_multiplier"] for r in last_rows})
  reg["clean_tokens_per_param"] = [study.base.train.tokens_per_param * m for m in mults]
  reg["num_excerpts"] = int(study.base.eval.num_excerpts)
  runs = grids.expand(study)
  if runs:
    reg["tokens_per_poison"] = poison_tokens_per_doc(
        study, grids.run_config(study, runs[0]))
  return reg


def _n50_table(rows: list[dict]) -> list[dict]:
  out = []
  for r in rows:
    est, ci, f = r["estimate"], r["interval"] or {}, r.get("firth")
    out.append({**{k: r[k] for k in ("size", "data_multiplier", "params",
                                      "n_runs", "n_success")},
                "counts": " ".join(map(str, r["counts"])),
                "seeds": " ".join(map(str, r["seeds"])),
                "kind": est.kind if est else "too_few_runs",
                "n50_lo": est.lo if est else "", "n50_hi": est.hi if est else "",
                "n50": est.point if est and est.point is not None else "",
                "slope": est.slope if est else "", "ci_lo": ci.get("lo", ""),
                "ci_hi": ci.get("hi", ""), "n_boot": ci.get("n_boot", ""),
                "firth_n50": f.n50 if f else "", "firth_lo": f.lo if f else "",
                "firth_hi": f.hi if f else "", "firth_slope": f.slope if f else ""})
  return out


def _final_results(finals: list[dict]) -> list[str]:
  lines = ["## Final results", "",
           "| size | params | data | poisons | seeds | increase mean (min..max) "
           "| seeds > thr | success share | clean ppl | triggered ppl |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in sorted(finals, key=lambda r: (r["data_multiplier"] != 1.0, r["params"],
                                         r["data_multiplier"], r["poison_count"])):
    lines.append(
        f"| {r['size']} | {r['params']:,} | {r['data_multiplier']:g}x | "
        f"{r['poison_count']} | {r['n_seeds']} | {r['increase_mean']:.1f} "
        f"({r['increase_min']:.1f}..{r['increase_max']:.1f}) | "
        f"{r['n_success']}/{r['n_seeds']} | {r['success_share_mean']:.2f} | "
        f"{r['clean_ppl_mean']:.1f} | {r['triggered_ppl_mean']:.1f} |"
        + ("" if r["all_finished"] else " (unfinished)"))
  return lines + [""]


def _figures(paths: dict, sentences: dict) -> list[str]:
  lines = ["## Figures", ""]
  for name in figures.FIGURES:
    lines += [f"![{name}]({files.as_path(paths[name]['png']).name})", "",
              sentences[name], ""]
  return lines


def _fits(rows, threshold, n_boot, seed):
  runs, dropped = analysis.final_runs(rows)
  th = analysis.thresholds(runs, threshold, n_boot, seed)
  comp = (count_vs_share.compare(runs, threshold, n_boot, seed) if len(runs)
          else {"fitted": False, "reason": "no finished run with poisons",
                "n_runs": 0, "n_success": 0})
  if len(runs):
    comp["arms"] = count_vs_share.arms(runs, threshold, n_boot, seed)
  return runs, dropped, th, comp


def generate(csv_path: str, out_dir: str, *,
             threshold: float = analysis.SUCCESS_INCREASE, study=None,
             provenance: list[str] | None = None, title: str | None = None,
             n_boot: int = analysis.BOOTSTRAP_SAMPLES,
             seed: int = analysis.BOOTSTRAP_SEED) -> dict:
  """Writes the figures, their tables and report.md into out_dir (see above).

  Returns {"figures": {name: {png, csv}}, "report": path, "thresholds":
  analysis.thresholds' rows, "comparison": count_vs_share.compare's dict}.
  """
  out = files.as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  all_rows = plots.read_csv(csv_path)
  by_variant = report_variants.split(all_rows, study)
  reference = next(iter(by_variant), None)
  rows = by_variant[reference] if reference is not None else all_rows
  paths, sentences, finals = figures.draw_all(rows, str(out), threshold)
  runs, dropped, th, comp = _fits(rows, threshold, n_boot, seed)
  fit_paths = {"n50": {"png": str(out / "n50.png"), "csv": str(out / "n50.csv")},
               "count_vs_share": {"png": str(out / "count_vs_share.png"),
                                  "csv": str(out / "count_vs_share.json")}}
  plots.write_table(_n50_table(th), fit_paths["n50"]["csv"], _N50_COLS)
  files.write_json(fit_paths["count_vs_share"]["csv"], as_json(comp))
  size = analysis_size.size_exponent(runs, threshold, n_boot, seed)
  parallel = analysis_parallel.per_size(runs, threshold, n_boot, seed)
  targets = analysis_size.targets(size, parallel, th)
  files.write_json(str(out / "size_exponent.json"), as_json(
      {**size, "common_slope": parallel, "targets": targets}))
  fit_paths["n50_vs_size"] = {"png": str(out / "n50_vs_size.png"),
                              "csv": str(out / "size_exponent.json")}
  figures_fits.size_figure(size, parallel, fit_paths["n50_vs_size"]["png"])
  fitted = [r for r in th if r["estimate"] is not None]
  figures_fits.n50_figure(runs, fitted, threshold, fit_paths["n50"]["png"])
  figures_fits.compare_figure(runs, comp, fit_paths["count_vs_share"]["png"])
  reg = study_regime(study, figures.final_rows(rows))
  name = title or (f"Poisoning study {ml_collections.ConfigDict(study).name}"
                   if study is not None else "Poisoning study")
  lines = [f"# {name}: results", ""] + report_size.opening(size, parallel, th, targets)
  lines += ["![n50_vs_size](n50_vs_size.png)", ""]
  lines += [f"Success: final perplexity increase > {threshold:g}. Every number "
            "in this report is computed from results.csv by "
            "poisonjax/study/report.py (fits: poisonjax/study/analysis.py, "
            "analysis_size.py, analysis_parallel.py, analysis_firth.py and "
            "count_vs_share.py); "
            "nothing is written by hand.", ""]
  if report_variants.has_variants(by_variant):
    lines += [f"This study has {len(by_variant)} variants ({', '.join(by_variant)}): "
              f"the sections up to 'By variant' are variant `{reference}`'s "
              "runs alone; 'By variant' compares them all.", ""]
  lines += sections.regime(runs, dropped, reg) if len(runs) else []
  if provenance:
    lines += ["## How this was made", ""] + list(provenance) + [""]
  lines += sections.thresholds(th, threshold)
  lines += ["![n50](n50.png)", ""]
  lines += sections.comparison(comp, threshold) + report_arms.section(comp.get("arms"))
  lines += ["![count_vs_share](count_vs_share.png)", ""]
  lines += _final_results(finals) + _figures(paths, sentences)
  if report_variants.has_variants(by_variant):
    more, made = report_variants.section(by_variant, study, threshold, out,
                                         n_boot, seed)
    lines += more
    fit_paths.update(made)
  lines += _previous(out, threshold, n_boot, seed, study, th, comp, reg)
  if len(runs):
    lines += sections.caveats(runs, dropped, th, comp, reg, finals)
  files.write_text_atomic(out / "report.md", "\n".join(lines))
  return {"figures": {**paths, **fit_paths}, "report": str(out / "report.md"),
          "thresholds": th, "comparison": comp, "regime": reg,
          "size_exponent": size, "common_slope": parallel, "targets": targets}


def _previous(out, threshold, n_boot, seed, study, th, comp, reg) -> list[str]:
  """The same fits on OUT/previous/results.csv (an earlier run), if kept."""
  prev_dir = out / "previous"
  if not (prev_dir / "results.csv").exists():
    return []
  rows = plots.read_csv(str(prev_dir / "results.csv"))
  _, _, prev_th, prev_comp = _fits(rows, threshold, n_boot, seed)
  prev_reg = study_regime(None, figures.final_rows(rows))
  prov = prev_dir / "provenance.json"
  lines = files.read_json(str(prov))["lines"] if prov.exists() else None
  return sections.previous(prev_th, prev_comp, prev_reg, th, comp, reg, lines)


def as_json(obj):
  """numpy scalars and arrays to plain Python, for write_json."""
  if isinstance(obj, dict):
    return {k: as_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [as_json(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  return obj
