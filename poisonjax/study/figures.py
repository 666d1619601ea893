"""The study's descriptive figures, computed from the collected CSV.

Each figure has a data table (written next to its PNG as CSV) so that tests
and readers check numbers, not pixels; the report's sentences about them are
computed here from the same tables, not written in advance. The fits'
figures are in figures_fits; report.md is written by report.py. The drawing
helpers (pyplot, palette, panels, save_png, write_table) are poisonjax.plots'.

  1. progress      increase vs fraction of training; panel per poison count,
                   line per size (mean over seeds, band min..max); 1x data.
  2. poisons_seen  increase vs poison documents seen so far; same layout.
  3. final_vs_size final increase vs parameters, line per poison count,
                   error bars min..max over seeds; 1x data.
  4. data_ablation final increase vs data multiplier (0.5x, 1x, 2x), panel
                   per poison count, line per size that has an ablation.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from poisonjax import files
from poisonjax import plots

FIGURES = ("progress", "poisons_seen", "final_vs_size", "data_ablation")


def final_rows(rows: list[dict]) -> list[dict]:
  """The last evaluation of every run."""
  last = {}
  for r in rows:
    if r["run"] not in last or r["eval_index"] > last[r["run"]]["eval_index"]:
      last[r["run"]] = r
  return [last[k] for k in sorted(last)]


def _stats(values) -> dict:
  v = np.asarray([x for x in values if x is not None], float)
  if v.size == 0:
    return {"mean": math.nan, "min": math.nan, "max": math.nan, "sd": math.nan}
  return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
          "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def size_order(rows) -> list[str]:
  """The sizes of rows, smallest (by parameters) first."""
  params = {}
  for r in rows:
    params[r["size"]] = r["params"] or 0
  return sorted(params, key=lambda s: (params[s], s))


def curve_table(rows: list[dict], multiplier: float = 1.0) -> list[dict]:
  """Per (poison count, size, eval index): x values and the increase over seeds."""
  groups = collections.defaultdict(list)
  for r in rows:
    if r["data_multiplier"] == multiplier:
      groups[(r["poison_count"], r["size"], r["eval_index"])].append(r)
  out = []
  for (n, size, idx), rs in sorted(groups.items()):
    s = _stats(r["increase"] for r in rs)
    out.append({
        "poison_count": n, "size": size, "params": rs[0]["params"],
        "eval_index": idx,
        "fraction": _stats(r["fraction"] for r in rs)["mean"],
        "poisons_seen": _stats(r["poisons_seen"] for r in rs)["mean"],
        "poisons_seen_min": _stats(r["poisons_seen"] for r in rs)["min"],
        "poisons_seen_max": _stats(r["poisons_seen"] for r in rs)["max"],
        "poisons_per_mtok": _stats(r["poisons_per_mtok"] for r in rs)["mean"],
        "increase_mean": s["mean"], "increase_min": s["min"],
        "increase_max": s["max"], "increase_sd": s["sd"], "n_seeds": len(rs)})
  return out


def final_table(rows: list[dict], threshold: float) -> list[dict]:
  """Per (poison count, size, multiplier): final increase over seeds."""
  groups = collections.defaultdict(list)
  for r in final_rows(rows):
    groups[(r["poison_count"], r["size"], r["data_multiplier"])].append(r)
  out = []
  for (n, size, m), rs in sorted(groups.items()):
    s = _stats(r["increase"] for r in rs)
    out.append({
        "poison_count": n, "size": size, "data_multiplier": m,
        "params": rs[0]["params"],
        "increase_mean": s["mean"], "increase_min": s["min"],
        "increase_max": s["max"], "increase_sd": s["sd"],
        "success_share_mean": _stats(r["success_share"] for r in rs)["mean"],
        "clean_ppl_mean": _stats(r["clean_ppl_mean"] for r in rs)["mean"],
        "triggered_ppl_mean": _stats(r["triggered_ppl_mean"] for r in rs)["mean"],
        "poisons_seen_mean": _stats(r["poisons_seen"] for r in rs)["mean"],
        "n_seeds": len(rs),
        "n_success": sum(1 for r in rs if (r["increase"] or 0) > threshold),
        "all_finished": int(all(r["finished"] for r in rs))})
  return out


def ablation_table(finals: list[dict]) -> list[dict]:
  """The final table restricted to sizes run at more than one data amount."""
  ms = collections.defaultdict(set)
  for r in finals:
    ms[r["size"]].add(r["data_multiplier"])
  return [r for r in finals if len(ms[r["size"]]) > 1]


_CURVE_COLS = ["poison_count", "size", "params", "eval_index", "fraction",
               "poisons_seen", "poisons_seen_min", "poisons_seen_max",
               "poisons_per_mtok", "increase_mean", "increase_min",
               "increase_max", "increase_sd", "n_seeds"]


FINAL_COLS = ["poison_count", "size", "data_multiplier", "params",
               "increase_mean", "increase_min", "increase_max", "increase_sd",
               "success_share_mean", "clean_ppl_mean", "triggered_ppl_mean",
               "poisons_seen_mean", "n_seeds", "n_success", "all_finished"]


def _curve_figure(table, x_key, xlabel, title, threshold, path):
  plt = plots.pyplot()
  counts = sorted({r["poison_count"] for r in table})
  sizes = size_order(table)
  colors = plots.palette(sizes)
  fig, axes = plots.panels(counts)
  for ax, n in zip(axes, counts):
    for size in sizes:
      pts = sorted((r for r in table if r["poison_count"] == n and r["size"] == size),
                   key=lambda r: r["eval_index"])
      if not pts:
        continue
      x = [r[x_key] for r in pts]
      ax.plot(x, [r["increase_mean"] for r in pts], color=colors[size],
              label=size, marker=".")
      ax.fill_between(x, [r["increase_min"] for r in pts],
                      [r["increase_max"] for r in pts], color=colors[size], alpha=0.2)
    ax.axhline(threshold, color="grey", ls="--", lw=0.8)
    ax.set_title(f"{n} poisons")
    ax.set_xlabel(xlabel)
  axes[0].set_ylabel("perplexity increase (triggered - clean)")
  axes[-1].legend(fontsize=8, title="size")
  fig.suptitle(title)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=110)
  plt.close(fig)


def spread_errorbar(ax, pts, x_key, color, label):
  """Mean increase with bars from the min to the max over seeds."""
  x = [r[x_key] for r in pts]
  y = np.array([r["increase_mean"] for r in pts])
  err = [y - [r["increase_min"] for r in pts], [r["increase_max"] for r in pts] - y]
  ax.errorbar(x, y, yerr=err, color=color, marker="o", capsize=3, label=label)


def _final_figure(table, threshold, path):
  plt = plots.pyplot()
  counts = sorted({r["poison_count"] for r in table})
  colors = plots.palette(counts)
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for n in counts:
    pts = sorted((r for r in table if r["poison_count"] == n), key=lambda r: r["params"])
    spread_errorbar(ax, pts, "params", colors[n], f"{n} poisons")
  ax.axhline(threshold, color="grey", ls="--", lw=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("parameters")
  ax.set_ylabel("final perplexity increase")
  ax.set_title("Final increase vs model size (bars: min..max over seeds)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=110)
  plt.close(fig)


def _ablation_figure(table, threshold, path):
  plt = plots.pyplot()
  counts = sorted({r["poison_count"] for r in table})
  sizes = size_order(table)
  colors = plots.palette(sizes)
  fig, axes = plots.panels(counts)
  for ax, n in zip(axes, counts):
    for size in sizes:
      pts = sorted((r for r in table if r["poison_count"] == n and r["size"] == size),
                   key=lambda r: r["data_multiplier"])
      spread_errorbar(ax, pts, "data_multiplier", colors[size], size)
    ax.axhline(threshold, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_title(f"{n} poisons")
    ax.set_xlabel("clean data (x tokens_per_param budget)")
  if not table:
    axes[0].text(0.5, 0.5, "no data-amount ablation in this grid",
                 ha="center", va="center", transform=axes[0].transAxes)
  axes[0].set_ylabel("final perplexity increase")
  if table:
    axes[-1].legend(fontsize=8, title="size")
  fig.suptitle("Data-amount ablation: same poison count, more or less clean data")
  fig.tight_layout()
  plots.save_png(fig, path, dpi=110)
  plt.close(fig)


def _rng(vals, fmt="{:.1f}") -> str:
  vals = [v for v in vals if v is not None and not math.isnan(v)]
  if not vals:
    return "n/a"
  lo, hi = min(vals), max(vals)
  return fmt.format(lo) if lo == hi else f"{fmt.format(lo)} to {fmt.format(hi)}"


def first_crossings(curves: list[dict], threshold: float) -> list[dict]:
  """Per (count, size) line: the first point whose mean increase > threshold."""
  out = []
  for key in sorted({(r["poison_count"], r["size"]) for r in curves}):
    pts = sorted((r for r in curves if (r["poison_count"], r["size"]) == key),
                 key=lambda r: r["eval_index"])
    hit = next((r for r in pts if r["increase_mean"] > threshold), None)
    if hit is not None:
      out.append({"poison_count": key[0], "size": key[1], "fraction": hit["fraction"],
                  "poisons_seen": hit["poisons_seen"],
                  "poisons_per_mtok": hit["poisons_per_mtok"]})
  return out


def sentence_progress(curves, finals, threshold) -> str:
  parts = []
  crossings = first_crossings(curves, threshold)
  for n in sorted({r["poison_count"] for r in curves}):
    f1 = [r for r in finals if r["poison_count"] == n and r["data_multiplier"] == 1.0]
    above = [r for r in f1 if r["increase_mean"] > threshold]
    cr = [c["fraction"] for c in crossings if c["poison_count"] == n]
    s = (f"with {n} poisons {len(above)} of {len(f1)} sizes end above {threshold:g} "
         f"(final mean increase {_rng([r['increase_mean'] for r in f1])})")
    if cr:
      s += f", first crossing it at {_rng([100 * c for c in cr], '{:.0f}')}% of training"
    parts.append(s)
  return "Increase vs training progress (1x data): " + "; ".join(parts) + "."


def sentence_poisons_seen(curves, threshold) -> str:
  cr = first_crossings(curves, threshold)
  if not cr:
    return (f"Increase vs poisons seen: no size x count line's mean increase "
            f"crosses {threshold:g}, so no count of poisons seen is enough at "
            "this scale and budget.")
  seen = [c["poisons_seen"] for c in cr]
  share = [c["poisons_per_mtok"] for c in cr if c["poisons_per_mtok"] is not None]
  spread = lambda v: max(v) / min(v) if v and min(v) > 0 else math.inf
  s_seen, s_share = spread(seen), spread(share)
  verdict = ("the number of poisons seen varies less than their share of the "
             "tokens seen" if s_seen < s_share else
             "the share of poisons in the tokens seen varies less than their "
             "number, so here the count is not the better predictor")
  return (f"Increase vs poisons seen: the {len(cr)} size x count lines that cross "
          f"{threshold:g} do so after {_rng(seen, '{:.0f}')} poisons seen "
          f"(max/min {s_seen:.2f}x) at {_rng(share, '{:.2f}')} poisons per million "
          f"tokens seen (max/min {s_share:.2f}x): {verdict}.")


def sentence_final_vs_size(finals, threshold) -> str:
  parts = []
  f1 = [r for r in finals if r["data_multiplier"] == 1.0]
  if len({r["size"] for r in f1}) < 2:
    return ("Final increase vs model size (1x data): one size only, so no trend "
            "in size to show.")
  for n in sorted({r["poison_count"] for r in f1}):
    pts = sorted((r for r in f1 if r["poison_count"] == n), key=lambda r: r["params"])
    ok = [r["size"] for r in pts if r["n_success"] == r["n_seeds"]]
    some = [r["size"] for r in pts if 0 < r["n_success"] < r["n_seeds"]]
    s = (f"{n} poisons: {pts[0]['size']} {pts[0]['increase_mean']:.1f} -> "
         f"{pts[-1]['size']} {pts[-1]['increase_mean']:.1f}, every seed above "
         f"{threshold:g} at {', '.join(ok) or 'no size'}")
    if some:
      s += f", some seeds at {', '.join(some)}"
    parts.append(s)
  return "Final increase vs model size (1x data): " + "; ".join(parts) + "."


def sentence_ablation(ablation, threshold) -> str:
  if not ablation:
    return "Data-amount ablation: this grid has no run at a data multiplier other than 1x."
  same, total, parts = 0, 0, []
  for key in sorted({(r["size"], r["poison_count"]) for r in ablation}):
    pts = sorted((r for r in ablation if (r["size"], r["poison_count"]) == key),
                 key=lambda r: r["data_multiplier"])
    status = {r["increase_mean"] > threshold for r in pts}
    total += 1
    same += len(status) == 1
    parts.append(f"{key[0]}/{key[1]}: " + ", ".join(
        f"{r['data_multiplier']:g}x {r['increase_mean']:.1f}" for r in pts))
  return (f"Data-amount ablation: in {same} of {total} size x count cases the "
          f"outcome (mean final increase above {threshold:g} or not) is the same "
          "at every data amount, although the poison share changes 4x between "
          "0.5x and 2x (" + "; ".join(parts) + ").")


def draw_all(rows: list[dict], out_dir: str, threshold: float = 50.0):
  """The four figures and their data CSVs in out_dir.

  Returns (paths {name: {png, csv}}, sentences {name: text}, final table).
  """
  out = files.as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  curves = curve_table(rows)
  finals = final_table(rows, threshold)
  ablation = ablation_table(finals)
  final1 = [r for r in finals if r["data_multiplier"] == 1.0]
  paths = {n: {"png": str(out / f"{n}.png"), "csv": str(out / f"{n}.csv")}
           for n in FIGURES}
  plots.write_table(curves, paths["progress"]["csv"], _CURVE_COLS)
  plots.write_table(curves, paths["poisons_seen"]["csv"], _CURVE_COLS)
  plots.write_table(final1, paths["final_vs_size"]["csv"], FINAL_COLS)
  plots.write_table(ablation, paths["data_ablation"]["csv"], FINAL_COLS)
  _curve_figure(curves, "fraction", "fraction of training",
                "Backdoor strength through training (mean over seeds, band min..max)",
                threshold, paths["progress"]["png"])
  _curve_figure(curves, "poisons_seen", "poison documents seen",
                "Backdoor strength vs poisons seen", threshold,
                paths["poisons_seen"]["png"])
  _final_figure(final1, threshold, paths["final_vs_size"]["png"])
  _ablation_figure(ablation, threshold, paths["data_ablation"]["png"])
  sentences = {
      "progress": sentence_progress(curves, finals, threshold),
      "poisons_seen": sentence_poisons_seen(curves, threshold),
      "final_vs_size": sentence_final_vs_size(finals, threshold),
      "data_ablation": sentence_ablation(ablation, threshold),
  }
  return paths, sentences, finals
