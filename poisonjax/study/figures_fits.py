"""Figures of the study's fits (poisonjax.study.analysis*), with their data.

  n50             P(success | N) per size, panel per data amount: the runs as
                  points (0/1, jittered), the fitted logistic where one exists,
                  N50 (dot; bar where the data give a range) and its bootstrap
                  95% interval (thin line; arrows where it is open).
  count_vs_share  final increase (log) against poisons seen and against the
                  poisons' share of tokens seen, colour per size, marker per
                  data amount, the fitted line per size; AIC in the titles.
  n50_vs_size     N50 per size at 1x data (common-slope estimate, profile
                  95% bars) against parameters, log-log, with the pooled
                  power law N50 ~ size^beta and the lines beta = 0 and 1.
"""

from __future__ import annotations

import math

import numpy as np

from poisonjax import plots
from poisonjax.study import analysis
from poisonjax.study import count_vs_share
from poisonjax.study import figures

FIGURES = ("n50", "count_vs_share", "n50_vs_size")
_MARKERS = "os^Dv<>ph"


def _n50_marks(ax, row, color, y):
  """N50 (point or range) and its 95% interval at height y."""
  est, ci = row["estimate"], row["interval"]
  lo_n, hi_n = min(row["counts"]), max(row["counts"])
  lo = ci["lo"] if ci["lo"] >= lo_n else lo_n / 2
  hi = ci["hi"] if ci["hi"] <= hi_n else hi_n * 2
  ax.plot([lo, hi], [y, y], color=color, lw=1)
  if ci["lo"] < lo_n:
    ax.plot([lo], [y], marker="<", color=color)
  if ci["hi"] > hi_n:
    ax.plot([hi], [y], marker=">", color=color)
  if est.point is not None:
    ax.plot([est.point], [y], marker="o", color=color, ms=7)
  else:
    ax.plot([max(est.lo, lo_n / 2), min(est.hi, hi_n * 2)], [y, y], color=color, lw=4)


def _limit_step(ax, est, grid, color, size):
  """Where no ML fit exists: the limit the likelihood approaches, dashed (0
  below the range, 1 above it; all at 0 or all at 1 when one-sided)."""
  lo = est.lo if est.lo > 0 else grid[0]
  hi = est.hi if est.hi < math.inf else grid[-1]
  y_lo = 1.0 if est.kind == "all_success" else 0.0
  y_hi = 0.0 if est.kind == "no_success" else 1.0
  ax.plot([grid[0], lo, hi, grid[-1]], [y_lo, y_lo, y_hi, y_hi], color=color,
          ls="--", lw=1, label=f"{size} (no fit: limit)")


def n50_figure(runs: analysis.Runs, rows: list[dict], threshold: float, path: str):
  plt = plots.pyplot()
  mults = sorted({r["data_multiplier"] for r in rows})
  sizes = figures.size_order(rows)
  colors = plots.palette(sizes)
  fig, axes = plots.panels(mults)
  groups, y_all = runs.groups(), runs.success(threshold)
  jitter = np.random.default_rng(0)
  for ax, m in zip(axes, mults):
    here = [r for r in rows if r["data_multiplier"] == m]
    for i, row in enumerate(here):
      idx, color = groups[(row["size"], m)], colors[row["size"]]
      n, y = runs.poisons[idx], y_all[idx]
      ax.scatter(n * np.exp(jitter.normal(0, 0.04, len(n))),
                 y + jitter.uniform(-0.04, 0.04, len(y)), color=color, s=14,
                 alpha=0.7)
      if row["estimate"] is None:
        continue
      grid = np.geomspace(n.min() / 2, n.max() * 2, 200)
      p = analysis.curve(row["estimate"], grid, n, y)
      if p is not None:
        ax.plot(grid, p, color=color, label=row["size"])
      else:
        _limit_step(ax, row["estimate"], grid, color, row["size"])
      _n50_marks(ax, row, color, 0.5 + 0.05 * (i - (len(here) - 1) / 2))
    ax.axhline(0.5, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_title(f"{m:g}x data")
    ax.set_xlabel("poisons seen (N)")
    ax.legend(fontsize=7)
  axes[0].set_ylabel(f"P(final increase > {threshold:g})")
  fig.suptitle("Poison threshold: logistic fits in log N, N50 with bootstrap 95% interval")
  fig.tight_layout()
  plots.save_png(fig, path, dpi=110)
  plt.close(fig)


def _compare_panel(ax, runs, comparison, predictor, colors, markers):
  X = count_vs_share.design(runs, predictor)
  y = count_vs_share.response(runs, "log_increase", 0.0)
  x = np.exp(X[:, 1]) * (1e6 if predictor == "share" else 1)
  for size in colors:
    for m, marker in markers.items():
      sel = (runs.size == size) & (runs.data_multiplier == m)
      if sel.any():
        ax.scatter(x[sel], np.exp(y[sel]), color=colors[size], s=16,
                   marker=marker, alpha=0.8)
  model = comparison["models"][f"log_increase/{predictor}"]
  b = model["beta"]
  for size in colors:
    sel = runs.size == size
    if not sel.any():
      continue
    grid = np.geomspace(x[sel].min(), x[sel].max(), 50)
    lx = np.log(grid / (1e6 if predictor == "share" else 1))
    # One size: the design has no log-size column (count_vs_share.design).
    size_term = b[2] * math.log(runs.params[sel][0]) if len(b) > 2 else 0.0
    fit = b[0] + b[1] * lx + size_term
    ax.plot(grid, np.exp(fit), color=colors[size], lw=1)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("poisons seen" if predictor == "count" else
                "poisons per million tokens seen")
  ax.set_title(f"{predictor}: AIC {model['aic']:.1f} (log increase), "
               f"{comparison['models'][f'success/{predictor}']['aic']:.1f} (success)",
               fontsize=9)


def compare_figure(runs: analysis.Runs, comparison: dict, path: str):
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  if not comparison.get("fitted"):
    for ax in axes:
      ax.text(0.5, 0.5, f"not fitted: {comparison.get('reason')}", ha="center",
              va="center", transform=ax.transAxes)
  else:
    order = sorted(set(runs.size), key=lambda s: runs.params[runs.size == s][0])
    colors = plots.palette(order)
    mults = sorted({float(m) for m in runs.data_multiplier})
    markers = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(mults)}
    for ax, predictor in zip(axes, count_vs_share.PREDICTORS):
      _compare_panel(ax, runs, comparison, predictor, colors, markers)
    for size, c in colors.items():
      axes[1].plot([], [], color=c, label=size)
    for m, mk in markers.items():
      axes[1].scatter([], [], color="k", marker=mk, label=f"{m:g}x data")
    axes[1].legend(fontsize=7)
  axes[0].set_ylabel(f"final increase (floored at {count_vs_share.INCREASE_FLOOR:g})")
  fig.suptitle("Count vs share: final increase and the fitted lines per size")
  fig.tight_layout()
  plots.save_png(fig, path, dpi=110)
  plt.close(fig)


def size_figure(size: dict, parallel: dict, path: str):
  """N50 against size: the data for beta (see the module docstring)."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4.2))
  pooled = {r["size"]: r for r in size.get("by_size", [])}
  rows = [r for r in parallel.get("rows", []) if r["size"] in pooled]
  if not (size.get("fitted") and rows):
    ax.text(0.5, 0.5, "beta not estimated: " + str(size.get("reason", "no fit")),
            ha="center", va="center", transform=ax.transAxes)
  else:
    p = np.array([pooled[r["size"]]["params"] for r in rows], float)
    n = np.array([r["n50"] for r in rows])
    lo = np.array([min(r["profile"][0], v) for r, v in zip(rows, n)])
    hi = np.array([r["profile"][1] if math.isfinite(r["profile"][1]) else 10 * v
                   for r, v in zip(rows, n)])
    ax.errorbar(p, n, yerr=[n - lo, hi - n], fmt="o", capsize=3,
                label="common-slope N50, profile 95%")
    grid = np.geomspace(p.min() / 1.3, p.max() * 1.3, 50)
    a, b, c = size["theta"]
    ax.plot(grid, np.exp(-(a + c * np.log(grid)) / b), "k-",
            label=f"power law: beta {size['beta']:.2f}")
    ref = math.exp(np.mean(np.log(n)))
    mid = math.exp(np.mean(np.log(p)))
    ax.plot(grid, np.full_like(grid, ref), ":", color="grey", label="beta = 0 (count)")
    ax.plot(grid, ref * grid / mid, "--", color="grey", label="beta = 1 (share)")
    for r, x, y in zip(rows, p, n):
      ax.annotate(r["size"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
  ax.set_xlabel("parameters")
  ax.set_ylabel("N50 (poisons for 50% success)")
  ax.set_title("N50 against model size at 1x data", fontsize=10)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=110)
  plt.close(fig)
