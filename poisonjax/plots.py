"""Helpers every figure and table of a report uses.

The study's figures (study/figures.py, study/figures_fits.py), the
defences', fine-tuning's, the ablations', the demo's and experiments/ draw
and write with these: pyplot (Agg, imported when drawn), palette, panels,
save_png; read_csv and write_table for the CSV tables beside the figures.
"""

from __future__ import annotations

import csv
import io

from poisonjax import files

_INT_COLS = {"poison_count", "seed", "params", "non_embedding_params",
             "eval_index", "step", "num_steps", "poisons_seen", "tokens_seen",
             "finished"}


def read_csv(path: str) -> list[dict]:
  """Rows of the collected CSV (local or gs://), numbers parsed ('' is None)."""
  rows = []
  with io.StringIO(files.as_path(path).read_text(), newline="") as f:
    for r in csv.DictReader(f):
      out = {}
      for k, v in r.items():
        if k in ("run", "size"):
          out[k] = v
        elif v == "" or v is None:
          out[k] = None
        elif k in _INT_COLS:
          out[k] = int(float(v))
        else:
          try:
            out[k] = float(v)
          except ValueError:
            out[k] = v
      rows.append(out)
  return rows


def write_table(rows: list[dict], path: str, columns: list[str]) -> None:
  buf = io.StringIO(newline="")
  w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
  w.writeheader()
  w.writerows(rows)
  files.write_text_atomic(path, buf.getvalue())


def save_png(fig, path: str, dpi: int) -> None:
  """Writes a matplotlib figure as PNG to a local or gs:// path."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  files.write_bytes_atomic(path, buf.getvalue())


def pyplot():
  """matplotlib.pyplot on the Agg backend (no display; imported when drawn)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def palette(names):
  """A viridis colour for each name, in order."""
  plt = pyplot()
  cmap = plt.get_cmap("viridis")
  k = max(len(names) - 1, 1)
  return {n: cmap(0.9 * i / k) for i, n in enumerate(names)}


def panels(counts):
  """A row of panels sharing y, one per entry of counts: (fig, [axes])."""
  plt = pyplot()
  n = max(len(counts), 1)
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), sharey=True, squeeze=False)
  return fig, list(axes[0])
