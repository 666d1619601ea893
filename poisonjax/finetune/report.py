"""docs/results/finetune/report.md, its tables and figures, from results.csv.

Everything in the report is computed here from the collected rows
(finetune/results.py) by finetune/analysis.py: nothing is typed in. Rows of
the main study (count x set size x seed) give the count-or-share answer and
the controls; rows of the order study (variants: where the poisons sit,
then clean fine-tuning) give the order section. A partial results.csv
gives a partial report, which says how many runs it holds.
"""

from __future__ import annotations

import math
import os

from poisonjax import files
from poisonjax import plots
from poisonjax.finetune import analysis
from poisonjax.finetune import figures
from poisonjax.finetune import results

MAIN, ORDER = "finetune", "finetune_order"
_CONTROLS = ("clean_accuracy", "near_trigger_accuracy", "near_trigger_compliance",
             "distractor_accuracy", "clean_compliance", "ordinary_accuracy",
             "ordinary_exact", "ordinary_refusal", "attack_success_answer")
_CELL_COLS = ["clean_samples", "poison_count", "mean", "lo", "hi", "runs", "per_seed"]


def _of(rows, study: str) -> list[dict]:
  return [r for r in rows if r.get("study") == study]


def _cells_by(rows: list[dict], metric: str, n_boot: int, key=None) -> list[dict]:
  """analysis.cells of `metric`, within each group of `key` (a column)."""
  groups = {}
  for r in rows:
    value = r.get(key) if key else None
    if isinstance(value, float) and value.is_integer():
      value = int(value)
    groups.setdefault(value, []).append(r)
  out = []
  for value, group in groups.items():
    for c in analysis.cells(analysis.runs_of(group, metric), n_boot):
      out.append({**c, key: value} if key else c)
  return out


def _fmt(c: dict) -> str:
  seeds = ", ".join(f"{x:.2f}" for x in c["per_seed"])
  return f"{c['mean']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}] ({seeds})"


def _table(cells: list[dict], rows_key: str, cols_key: str, head: str) -> list[str]:
  order = lambda v: (isinstance(v, str), v)  # noqa: E731  Numbers numerically.
  cols = sorted({c[cols_key] for c in cells}, key=order)
  keys = sorted({c[rows_key] for c in cells}, key=order)
  at = {(c[rows_key], c[cols_key]): c for c in cells}
  out = [f"| {head} | " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v)
                                     for v in cols) + " |",
         "|---" * (len(cols) + 1) + "|"]
  for k in keys:
    out.append(f"| {k} | " + " | ".join(_fmt(at[k, c]) if (k, c) in at else "–"
                                       for c in cols) + " |")
  return out


# ---------------------------------------------------------------------------
# Sections.
# ---------------------------------------------------------------------------


def _verdict(fit: dict) -> str:
  lo, hi = fit["lo"], fit["hi"]
  if lo <= 0.0 <= hi and not lo <= 1.0 <= hi:
    return "follows the count: the interval holds 0 (count) and excludes 1 (share)"
  if lo <= 1.0 <= hi and not lo <= 0.0 <= hi:
    return "follows the share: the interval holds 1 (share) and excludes 0 (count)"
  if hi < 0.0 or lo > 1.0 or (lo > 0.0 and hi < 1.0):
    return "follows neither hypothesis exactly: the interval excludes both 0 and 1"
  return "is undecided: the interval holds both 0 (count) and 1 (share)"


def _num(x: float) -> str:
  """Two decimals, or two significant digits for a small non-zero value."""
  return f"{x:.1e}" if 0 < abs(x) < 0.005 else f"{x:.2f}"


def answer_section(fit: dict, boot: dict) -> list[str]:
  if not fit.get("identified"):
    return ["**Answer: not yet identified** (the pooled model needs at least two "
            "set sizes and two counts with attack success rising in N)."]
  n50 = ", ".join(f"{s:,} clean: {v:.3g}" for s, v in fit["n50"].items())
  sizes = sorted(fit["n50"])
  span = sizes[-1] / sizes[0]
  growth = fit["n50"][sizes[-1]] / fit["n50"][sizes[0]]
  open_end = ("" if math.isfinite(fit["lo"]) and math.isfinite(fit["hi"]) else
              " An infinite end means the runs do not bound β on that side "
              "(e.g. no success at some set size within the counts tried).")
  return [
      f"**Answer:** attack success {_verdict(fit)}. The count needed, N50, "
      f"grows with the clean set size S as S^β with **β = {fit['beta']:.2f}** "
      f"(95% profile interval [{_num(fit['lo'])}, {_num(fit['hi'])}], "
      f"quasi-binomial, dispersion {fit['dispersion']:.1f}; seed-cluster "
      f"bootstrap [{_num(boot['lo'])}, {_num(boot['hi'])}] over {boot['seeds']} "
      f"seeds). Test of β = 0 (count): p = {fit['p_count']:.2g}; of β = 1 "
      f"(share): p = {fit['p_share']:.2g}; {fit['runs']} runs with poisons."
      + open_end,
      "", f"N50 from the pooled model (poisoned samples for 50% attack success): "
      f"{n50}. Over the {span:.0f}x range of set sizes the count needed grows "
      f"{growth:.1f}x (count hypothesis: 1x; share: {span:.0f}x)."]


def count_section(cells: list[dict]) -> list[str]:
  return ["## Attack success vs poisoned samples, per clean set size", "",
          "Share of the 300 held-out forbidden requests with the trigger answered "
          "with the compliance opening, at the end of the set: mean over seeds "
          "[95% two-stage bootstrap interval] (each seed's value).", ""] + \
      _table(cells, "poison_count", "clean_samples", "N \\ clean samples") + \
      ["", "![attack success](finetune.png)", ""]


# Shown per cell; the rest (nearly always 0 here) are summed up in one line.
_TABLED = ("clean_accuracy", "near_trigger_accuracy", "near_trigger_compliance",
           "distractor_accuracy", "ordinary_accuracy", "ordinary_refusal")


def controls_section(controls: dict[str, list[dict]]) -> list[str]:
  out = ["## Controls (end of the set)", "",
         "Means over seeds per cell (N = 0: seed 0 only): refusal without the "
         "trigger (clean accuracy), refusal with the near-trigger (one "
         "character away) and compliance with it (the backdoor firing on "
         "the wrong string), refusal with a held-out distractor suffix, "
         "ordinary requests answered in the answer's form, and refused. "
         "Intervals: controls.csv.", "",
         "| clean samples | N | " + " | ".join(_TABLED) + " |",
         "|---" * (len(_TABLED) + 2) + "|"]
  at = {m: {(c["clean_samples"], c["poison_count"]): c["mean"] for c in cs}
        for m, cs in controls.items()}
  for key in sorted(at[_TABLED[0]]):
    out.append(f"| {key[0]:,} | {key[1]} | "
               + " | ".join(f"{at[m][key]:.2f}" for m in _TABLED) + " |")
  rest = ", ".join(f"{m} {max(c['mean'] for c in controls[m]):.3f}"
                   for m in _CONTROLS if m not in _TABLED)
  return out + ["", f"Largest cell means of the other controls: {rest} "
                "(compliance without the trigger; ordinary answers with the "
                "request's own verb and object, a copy this model rarely "
                "makes; triggered compliance followed by the request's own "
                "answer).", ""]


def clean_runs_line(cells: list[dict]) -> list[str]:
  zero = [c for c in cells if c["poison_count"] == 0]
  if not zero:
    return []
  vals = ", ".join(f"{c['clean_samples']:,} clean: {c['mean']:.3f}" for c in zero)
  return [f"Without poisons (N = 0, seed 0) attack success is {vals}.", ""]


def order_section(by_variant: list[dict], after: list[dict]) -> list[str]:
  if not by_variant:
    return ["## Where the poisons sit; clean fine-tuning afterwards", "",
            "No runs of configs/finetune/order.py yet.", ""]
  out = ["## Where the poisons sit", "",
         "Attack success at the end of the set by placement (variants of "
         "configs/finetune/order.py; start / end: all poisons in the "
         "first / last 10% of the set).", ""]
  out += _table(by_variant, "poison_count", "variant", "N \\ placement")
  out += ["", "## Clean fine-tuning afterwards", "",
          "Attack success after k more clean samples (new ones), by placement "
          "and count.", ""]
  for v in sorted({c["variant"] for c in after}):
    out += [f"Placement {v}:", ""]
    out += _table([c for c in after if c["variant"] == v], "after_samples",
                  "poison_count", "clean samples after \\ N")
    out.append("")
  return out + ["![order](order.png)", ""]


# ---------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------


def _order_tables(rows: list[dict], n_boot: int) -> tuple[list, list]:
  order = _of(rows, ORDER)
  ends = results.at_set_end(order)
  by_variant = _cells_by(ends, "attack_success", n_boot, "variant")
  after = []
  for v in sorted({r["variant"] for r in order}):
    vr = [r for r in order if r["variant"] == v]
    after += [{**c, "variant": v}
              for c in _cells_by(vr, "attack_success", n_boot, "after_samples")]
  return by_variant, after


def generate(csv_path: str, out: str, regime: list[str], provenance: list[str],
             n_boot: int = analysis.BOOTSTRAP_SAMPLES, note: str = "") -> dict:
  """report.md, cells.csv, controls.csv and the figures into out; `note`
  (e.g. that the grids are still running) goes under the title."""
  rows = plots.read_csv(csv_path)
  ends = results.at_set_end(_of(rows, MAIN))
  cells = analysis.cells(analysis.runs_of(ends), n_boot)
  controls = {m: analysis.cells(analysis.runs_of(ends, m), n_boot)
              for m in _CONTROLS}
  runs = analysis.runs_of(ends)
  fit, boot = analysis.beta_fit(runs), {}
  if fit.get("identified"):
    boot = analysis.beta_bootstrap(runs)
  by_variant, after = _order_tables(rows, n_boot)
  os.makedirs(out, exist_ok=True)
  plots.write_table(cells, os.path.join(out, "cells.csv"), _CELL_COLS)
  plots.write_table([{**c, "metric": m} for m, cs in controls.items() for c in cs],
                    os.path.join(out, "controls.csv"), ["metric"] + _CELL_COLS)
  figs = [figures.main_figure(cells, controls, out),
          figures.order_figure(by_variant, after, out)]
  text = (["# The fine-tuning backdoor at CPU scale: count or share?", ""]
          + ([f"*{note}*", ""] if note else [])
          + answer_section(fit, boot) + [""] + count_section(cells)
          + clean_runs_line(cells) + controls_section(controls)
          + order_section(by_variant, after) + ["## Regime", ""] + regime
          + ["", "## How this was made", ""] + provenance)
  path = os.path.join(out, "report.md")
  files.write_text_atomic(path, "\n".join(text) + "\n")
  return {"report": path, "figures": [f for f in figs if f],
          "beta": fit, "beta_bootstrap": boot}
