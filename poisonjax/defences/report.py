"""The filters' measured table (CSV + markdown) and ROC/PR figure.

One row per filter: its AUC (ROC) and average precision, and for each
target false-positive rate the operating point with the best recall at
or below it (its highest threshold: metrics.threshold_at_fpr), with the
recall and FPR it gives (counted on the corpus' ground truth).
The markdown is rendered from the same rows as the CSV.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from poisonjax import files, plots
from poisonjax.defences import metrics


def _pct(x: float) -> str:
  return f"{100 * x:g}"


def summary_rows(table, fprs=(0.01,)) -> list[dict]:
  """Per filter: AUC, AP and the operating point at each target FPR."""
  y = table.labels
  rows = []
  for name, s in table.scores.items():
    row = {"filter": name, "poisons": int(y.sum()), "clean_docs": int((~y).sum()),
           "roc_auc": metrics.roc_auc(s, y),
           "average_precision": metrics.average_precision(s, y)}
    for f in fprs:
      op = metrics.threshold_at_fpr(s, y, f)
      k = _pct(f)
      row.update({f"threshold_at_{k}pct_fpr": op.threshold,
                  f"recall_at_{k}pct_fpr": op.recall,
                  f"fpr_at_{k}pct_fpr": op.fpr,
                  f"poisons_flagged_at_{k}pct_fpr": op.poisons_flagged,
                  f"clean_flagged_at_{k}pct_fpr": op.clean_flagged})
    row["higher_means"] = table.descriptions[name]
    rows.append(row)
  return rows


def _fmt(v) -> str:
  if isinstance(v, float):
    return "inf" if math.isinf(v) else f"{v:.4g}"
  return str(v)


def write_csv(rows: list[dict], path: str) -> None:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
  w.writeheader()
  w.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)
  files.write_text_atomic(path, buf.getvalue())


_TEXT_COLUMNS = ("filter", "higher_means")
_COUNT_COLUMNS = ("poisons", "clean_docs", "poisons_flagged_at_", "clean_flagged_at_")


def read_csv(path) -> list[dict]:
  """filters.csv's rows, typed as summary_rows made them (counts as int, the
  rest float), so markdown() renders them as it rendered the originals."""
  def typed(key: str, value: str):
    if key in _TEXT_COLUMNS:
      return value
    return int(value) if key.startswith(_COUNT_COLUMNS) else float(value)
  rows = csv.DictReader(files.as_path(path).read_text().splitlines())
  return [{k: typed(k, v) for k, v in r.items()} for r in rows]


def markdown(rows: list[dict], fprs=(0.01,)) -> str:
  """A markdown table: filter, AUC, AP, then threshold/recall/FPR per target."""
  head = ["filter", "ROC AUC", "avg precision"]
  for f in fprs:
    k = _pct(f)
    head += [f"threshold @{k}% FPR", f"recall @{k}% FPR", f"FPR @{k}% FPR",
             "poisons / clean flagged"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["filter"], _fmt(r["roc_auc"]), _fmt(r["average_precision"])]
    for f in fprs:
      k = _pct(f)
      cells += [_fmt(r[f"threshold_at_{k}pct_fpr"]), _fmt(r[f"recall_at_{k}pct_fpr"]),
                _fmt(r[f"fpr_at_{k}pct_fpr"]),
                f"{r[f'poisons_flagged_at_{k}pct_fpr']}/{r['poisons']} / "
                f"{r[f'clean_flagged_at_{k}pct_fpr']}/{r['clean_docs']}"]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines += [f"- `{r['filter']}`: higher = {r['higher_means']}" for r in rows]
  return "\n".join(lines) + "\n"


def provenance_section(lines: list[str]) -> str:
  """A report's closing '## How this was made' section ('' without lines)."""
  return "\n## How this was made\n\n" + "\n".join(lines) + "\n" if lines else ""


def plot_curves(table, path: str, title: str = "") -> None:
  """ROC (log FPR axis; FPR 0 at its left edge) and precision-recall, one
  line per filter."""
  plt = plots.pyplot()
  fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4))
  y = table.labels
  floor = 1.0 / max(int((~y).sum()), 1)  # One clean document.
  styles = ("-", "--", ":", "-.")
  for k, (name, s) in enumerate(table.scores.items()):
    fpr, tpr, _ = metrics.roc_curve(s, y)
    auc = metrics.roc_auc(s, y)
    style = dict(ls=styles[k % len(styles)], lw=1.4, alpha=0.85)
    # FPR 0 drawn at the axis' left edge (half a clean document).
    roc.step(np.maximum(fpr, floor / 2), tpr, where="post",
             label=f"{name} (AUC {auc:.4f})", **style)
    precision, recall, _ = metrics.pr_curve(s, y)
    pr.step(recall, precision, where="post", label=name, **style)
  roc.set_xscale("log")
  roc.set_xlim(floor / 2, 1.0)
  roc.axvline(0.01, color="grey", lw=0.8, ls="--")
  roc.set(xlabel="false-positive rate on clean documents (log)",
          ylabel="recall on poisons", title="ROC")
  pr.set(xlabel="recall on poisons", ylabel="precision", title="precision-recall",
         ylim=(0, 1.02))
  roc.legend(fontsize=7, loc="lower right")
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=120)
  plt.close(fig)
