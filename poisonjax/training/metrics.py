"""Where training numbers go: metrics.jsonl, TensorBoard, one progress line.

Peak FLOP/s (for MFU) live in hardware.py, JSONL files in files.py.
"""

from __future__ import annotations

import sys

from absl import logging
import jax
from etils.epath import Path

from poisonjax import files
from poisonjax import rundir
from poisonjax.units import format_duration


class MetricLogger:
  """Writes one row per log step to metrics.jsonl, TensorBoard and stdout.

  Only process 0 writes files; the others log through absl only. A resumed
  run replays the steps after its checkpoint: opened with `resume_step`, the
  logger first drops the rows past that step (written by the session that
  was cut short), so metrics.jsonl holds each step once.
  """

  def __init__(self, workdir: Path, total_steps: int, total_poisons: int,
               resume_step: int = 0, tensorboard: bool = True):
    self.main = jax.process_index() == 0
    self.path = files.as_path(workdir) / rundir.METRICS
    self.total_steps = total_steps
    self.total_poisons = total_poisons
    if self.main:
      self.drop_rows_after(resume_step)
    # TensorBoard files go through TensorFlow's file system (gs:// too).
    # Without them, neither clu's writers nor TensorFlow are imported: a
    # machine without TensorFlow (a bare GPU image) trains with
    # train.tensorboard=False.
    self.writer = None
    if self.main and tensorboard:
      from clu import metric_writers
      self.writer = metric_writers.create_default_writer(str(files.as_path(workdir)))

  def drop_rows_after(self, step: int) -> int:
    """Removes the rows with a step past `step`; returns how many."""
    rows = files.read_jsonl(self.path)
    kept = [r for r in rows if r.get("step", 0) <= step]
    if len(kept) < len(rows) or (self.path.exists() and not _ends_cleanly(self.path)):
      files.rewrite_jsonl(self.path, kept)
    return len(rows) - len(kept)

  def write(self, row: dict) -> None:
    step = row["step"]
    scalars = {k: v for k, v in row.items()
               if k != "step" and isinstance(v, (int, float))}
    if self.writer is not None:
      self.writer.write_scalars(step, scalars)
    if not self.main:
      logging.info("step %d: %s", step, scalars)
      return
    files.append_jsonl(self.path, row)
    print(self.progress_line(row), flush=True)
    sys.stdout.flush()

  def progress_line(self, row: dict) -> str:
    """`step 20/40 loss 6.06 ... | 16,072 tok/s MFU 0.49% | ETA 0m01s | ...`."""
    sps = row.get("steps_per_s") or float("nan")
    eta = (self.total_steps - row["step"]) / sps
    return (f"step {row['step']}/{self.total_steps} loss {row['loss']:.4f} "
            f"lr {row['lr']:.2e} gnorm {row['grad_norm']:.3f} | "
            f"{row['tokens_per_s']:,.0f} tok/s MFU {100 * row['mfu']:.2f}% | "
            f"ETA {format_duration(eta)} | poisons seen "
            f"{row['poisons_seen']}/{self.total_poisons}")

  def close(self) -> None:
    if self.writer is not None:
      self.writer.flush()
      self.writer.close()


def _ends_cleanly(path: Path) -> bool:
  """False if the file ends in a half-written line (a kill mid-append)."""
  data = path.read_bytes()
  return not data or data.endswith(b"\n")
