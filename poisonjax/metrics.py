"""Where training numbers go: metrics.jsonl, TensorBoard, one progress line.

Also the peak-FLOP/s table that turns tokens/s into MFU. MFU on CPU is
NOMINAL: the CPU figure below is a round per-device guess (about one AVX2
core's fp32 FMA peak), good for comparing runs on one machine, not for
comparing hardware.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import jax

# Dense bf16 peak FLOP/s per device (chip), by substrings of device_kind.
PEAK_FLOPS = (
    ("v6", 918e12),  # TPU v6e (Trillium)
    ("v5p", 459e12),
    ("v5 lite", 197e12),  # TPU v5e reports "TPU v5 lite"
    ("v5e", 197e12),
    ("v4", 275e12),
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
)
CPU_NOMINAL_PEAK_FLOPS = 1e11  # Nominal: see the module docstring.


def peak_flops_per_device(config=None) -> float:
  """config.train.peak_flops if set, else a lookup by the device kind."""
  if config is not None and config.train.peak_flops > 0:
    return float(config.train.peak_flops)
  kind = jax.devices()[0].device_kind.lower()
  for key, flops in PEAK_FLOPS:
    if key in kind:
      return flops
  return CPU_NOMINAL_PEAK_FLOPS


def read_jsonl(path) -> list[dict]:
  path = Path(path)
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:  # A line cut short by a kill; ignore it.
      pass
  return rows


def append_jsonl(path, row: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  s = int(seconds)
  if s >= 3600:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 60}m{s % 60:02d}s"


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
    append_jsonl(self.path, row)
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
