"""The report's comparison of a study's variants (study.variants), if any.

A study with variants (e.g. poison placements) is reported twice: report.py
fits and describes its first variant (the reference, e.g. uniform) in the
usual sections, and `section` here compares every variant: N50 per variant,
size and data amount (analysis.thresholds on each variant's runs alone), and
the final increase against the poison count (a table, by_variant.png and its
data by_variant.csv; the N50 rows in n50_by_variant.csv). Rows without a
variant column (a study without variants) are one unnamed variant, and the
report is then the one it was before variants existed.
"""

from __future__ import annotations

import ml_collections

from poisonjax import plots
from poisonjax.study import analysis
from poisonjax.study import figures
from poisonjax.study import report_sections as sections
from poisonjax.study import variants as variants_lib

_FINAL_COLS = ["variant"] + figures.FINAL_COLS
_N50_COLS = ["variant", "size", "data_multiplier", "params", "n_runs",
             "n_success", "counts", "kind", "n50", "n50_lo", "n50_hi",
             "ci_lo", "ci_hi"]


def variant_of(row: dict) -> str:
  v = row.get("variant")
  return variants_lib.NONE if v is None else str(v)


def split(rows: list[dict], study) -> dict[str, list[dict]]:
  """The rows of each variant: the study's order, then any others sorted."""
  present = {variant_of(r) for r in rows}
  known = variants_lib.names(ml_collections.ConfigDict(study)) if study else []
  order = [n for n in known if n in present] + sorted(present - set(known))
  return {n: [r for r in rows if variant_of(r) == n] for n in order}


def has_variants(by_variant: dict) -> bool:
  return list(by_variant) != [variants_lib.NONE]


def _overrides_text(study, name: str) -> str:
  overrides = dict(variants_lib.ordered(ml_collections.ConfigDict(study))
                   ).get(name) if study else None
  if overrides is None:
    return "(not in the study config)"
  leaves = list(variants_lib.leaves(overrides))
  return ", ".join(f"{k}={v!r}" for k, v in leaves) or "no overrides"


def _fits(by_variant: dict, threshold: float, n_boot: int, seed: int) -> list[dict]:
  out = []
  for name, rows in by_variant.items():
    runs, _ = analysis.final_runs(rows)
    out += [{"variant": name, **r}
            for r in analysis.thresholds(runs, threshold, n_boot, seed)]
  return out


def _n50_lines(th: list[dict]) -> list[str]:
  lines = ["| variant | data | size | runs (successes) | counts | N50 | "
           "95% interval | fit |", "|---|---|---|---|---|---|---|---|"]
  for r in th:
    est = r["estimate"]
    n50 = analysis.format_n50(est) if est else "not fitted (< 2 runs)"
    ci = analysis.format_interval(r["interval"], r["counts"]) if est else ""
    fit = sections.fit_words(r) if est else ""
    lines.append(f"| {r['variant']} | {r['data_multiplier']:g}x | {r['size']} | "
                 f"{r['n_runs']} ({r['n_success']}) | "
                 f"{', '.join(map(str, r['counts']))} | {n50} | {ci} | {fit} |")
  return lines


def _final_table(by_variant: dict, threshold: float) -> list[dict]:
  """figures.final_table per variant; a point's variants next to each other."""
  rank = {n: i for i, n in enumerate(by_variant)}
  out = [{"variant": name, **r} for name, rows in by_variant.items()
         for r in figures.final_table(rows, threshold)]
  return sorted(out, key=lambda r: (r["data_multiplier"] != 1.0, r["params"],
                                    r["data_multiplier"], r["poison_count"],
                                    rank[r["variant"]]))


def _final_lines(table: list[dict]) -> list[str]:
  lines = ["| size | data | poisons | variant | seeds | increase mean (min..max) "
           "| seeds > thr | success share |", "|---|---|---|---|---|---|---|---|"]
  for r in table:
    lines.append(
        f"| {r['size']} | {r['data_multiplier']:g}x | {r['poison_count']} | "
        f"{r['variant']} | {r['n_seeds']} | {r['increase_mean']:.1f} "
        f"({r['increase_min']:.1f}..{r['increase_max']:.1f}) | "
        f"{r['n_success']}/{r['n_seeds']} | {r['success_share_mean']:.2f} |"
        + ("" if r["all_finished"] else " (unfinished)"))
  return lines


def _figure(table: list[dict], threshold: float, path: str) -> None:
  """Final increase vs poison count, a line per variant, a panel per group."""
  plt = plots.pyplot()
  groups = sorted({(r["data_multiplier"] != 1.0, r["params"], r["data_multiplier"],
                    r["size"]) for r in table})
  names = list(dict.fromkeys(r["variant"] for r in table))
  colors = plots.palette(names)
  fig, axes = plots.panels(groups)
  for ax, (_, _, mult, size) in zip(axes, groups):
    for name in names:
      pts = sorted((r for r in table if (r["size"], r["data_multiplier"],
                                         r["variant"]) == (size, mult, name)),
                   key=lambda r: r["poison_count"])
      if pts:
        figures.spread_errorbar(ax, pts, "poison_count", colors[name], name)
    ax.axhline(threshold, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    counts = sorted({r["poison_count"] for r in table})
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.minorticks_off()
    ax.set_title(f"{size}, {mult:g}x data")
    ax.set_xlabel("poison count")
  axes[0].set_ylabel("final perplexity increase")
  axes[-1].legend(fontsize=8, title="variant")
  fig.suptitle("Final increase per variant (bars: min..max over seeds)",
               fontsize=10)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=110)
  plt.close(fig)


def section(by_variant: dict, study, threshold: float, out, n_boot: int,
            seed: int) -> tuple[list[str], dict]:
  """The 'By variant' lines and {"by_variant": {png, csv, n50_csv}}, written
  in out."""
  th = _fits(by_variant, threshold, n_boot, seed)
  table = _final_table(by_variant, threshold)
  paths = {"by_variant": {"png": str(out / "by_variant.png"),
                          "csv": str(out / "by_variant.csv"),
                          "n50_csv": str(out / "n50_by_variant.csv")}}
  plots.write_table(table, paths["by_variant"]["csv"], _FINAL_COLS)
  plots.write_table([_n50_row(r) for r in th], paths["by_variant"]["n50_csv"],
                    _N50_COLS)
  _figure(table, threshold, paths["by_variant"]["png"])
  lines = ["## By variant", "",
           "Each variant's runs fitted and summarised alone, as above "
           f"(success: final increase > {threshold:g}). The variants "
           "(study.variants, run names `..._var=NAME`):", ""]
  lines += [f"- `{n}`: {_overrides_text(study, n)}" for n in by_variant]
  lines += ["", "### N50 per variant", ""] + _n50_lines(th)
  lines += ["", "### Final increase per variant", ""] + _final_lines(table)
  lines += ["", "![by_variant](by_variant.png)", ""]
  return lines, paths


def _n50_row(r: dict) -> dict:
  est, ci = r["estimate"], r["interval"] or {}
  return {**{k: r[k] for k in ("variant", "size", "data_multiplier", "params",
                                "n_runs", "n_success")},
          "counts": " ".join(map(str, r["counts"])),
          "kind": est.kind if est else "too_few_runs",
          "n50": est.point if est and est.point is not None else "",
          "n50_lo": est.lo if est else "", "n50_hi": est.hi if est else "",
          "ci_lo": ci.get("lo", ""), "ci_hi": ci.get("hi", "")}
