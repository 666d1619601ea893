"""Where training numbers go: metrics.jsonl, TensorBoard, one progress line.

Peak FLOP/s (for MFU) live in hardware.py, JSONL files in files.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax

from poisonjax import files
from poisonjax.units import format_duration

# Transitional aliases for train.py until it calls files/hardware directly.
read_jsonl = files.read_jsonl
append_jsonl = files.append_jsonl


class MetricLogger:
  """Writes one row per log step to metrics.jsonl, TensorBoard and stdout.

  Only process 0 writes files; the others log through absl only.
  """

  def __init__(self, workdir: Path, total_steps: int, total_poisons: int):
    from clu import metric_writers

    self.main = jax.process_index() == 0
    self.path = Path(workdir) / "metrics.jsonl"
    self.total_steps = total_steps
    self.total_poisons = total_poisons
    self.writer = metric_writers.create_default_writer(
        str(workdir), just_logging=not self.main)

  def write(self, row: dict) -> None:
    step = row["step"]
    scalars = {k: v for k, v in row.items()
               if k != "step" and isinstance(v, (int, float))}
    self.writer.write_scalars(step, scalars)
    if not self.main:
      return
    files.append_jsonl(self.path, row)
    eta = (self.total_steps - step) / row["steps_per_s"] if row.get("steps_per_s") else float("nan")
    print(f"step {step}/{self.total_steps} loss {row['loss']:.4f} "
          f"lr {row['lr']:.2e} gnorm {row['grad_norm']:.3f} | "
          f"{row['tokens_per_s']:,.0f} tok/s MFU {100 * row['mfu']:.2f}% | "
          f"ETA {format_duration(eta)} | poisons seen "
          f"{row['poisons_seen']}/{self.total_poisons}", flush=True)
    sys.stdout.flush()

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()
