"""Accelerator peak FLOP/s: the one table, and which chip this process runs on.

The figures are vendor peaks for dense bf16 matmuls per chip (TPU: per chip,
GPU: the SXM part without sparsity). They turn tokens/s into MFU (train.py)
and FLOPs into chip-hours (study plan).

A CPU has no vendor figure worth using: a CPU device's peak is MEASURED
once per process (`measure_cpu_flops`, a float32 matmul on every thread) and
split evenly over the process's CPU devices (which share the same cores), so
MFU on a laptop is the share of what its matmul actually reaches.
`CPU_NOMINAL_PEAK_FLOPS` remains only as the table entry for device kind
"cpu" (plans that must not run a measurement).
"""

from __future__ import annotations

import functools
import math
import re
import time

# Peak dense bf16 FLOP/s per chip, by canonical chip name.
CHIP_PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6e": 918e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
}
CPU_NOMINAL_PEAK_FLOPS = 1e11  # Nominal: see the module docstring.

# jax's device_kind -> canonical name, first match wins. TPU v5e reports
# "TPU v5 lite" and v5p plain "TPU v5"; v6e reports "TPU v6 lite".
_KIND_PATTERNS = (
    (r"^tpu v6( lite|e)$", "TPU v6e"),
    (r"^tpu v5( lite|e)$", "TPU v5e"),
    (r"^tpu v5p?$", "TPU v5p"),
    (r"^tpu v4$", "TPU v4"),
    (r"\bh200\b", "H200"),
    (r"\bh100\b", "H100"),
    (r"\ba100\b", "A100"),
)


def chip_name(device_kind: str) -> str | None:
  """The canonical chip name of a jax device_kind, or None if not in the table."""
  kind = " ".join(device_kind.lower().split())
  for pattern, name in _KIND_PATTERNS:
    if re.search(pattern, kind):
      return name
  return None


def peak_flops_for_kind(device_kind: str, platform: str = "") -> float:
  """Peak FLOP/s of one device of this kind; the nominal figure for a CPU.

  NaN for an accelerator not in the table (MFU unknown): set
  config.train.peak_flops for it.
  """
  name = chip_name(device_kind)
  if name is not None:
    return CHIP_PEAK_FLOPS[name]
  if platform == "cpu" or device_kind.lower() == "cpu":
    return CPU_NOMINAL_PEAK_FLOPS
  _warn_unknown(device_kind)
  return math.nan


def peak_flops_per_device(config=None) -> float:
  """config.train.peak_flops if set (> 0), else this host's device's peak.

  A CPU device: this machine's measured matmul FLOP/s (once per process)
  over the number of local CPU devices.
  """
  if config is not None and config.train.peak_flops > 0:
    return float(config.train.peak_flops)
  import jax

  device = jax.devices()[0]
  if device.platform == "cpu":
    return measured_cpu_flops() / jax.local_device_count()
  return peak_flops_for_kind(device.device_kind, device.platform)


@functools.lru_cache(maxsize=None)
def measured_cpu_flops() -> float:
  """measure_cpu_flops() at 2048^2, once per process (about a second)."""
  return measure_cpu_flops(n=2048, reps=5)


@functools.lru_cache(maxsize=None)
def _warn_unknown(device_kind: str) -> None:
  from absl import logging

  logging.warning("device kind %r has no peak FLOP/s in poisonjax.hardware; "
                  "MFU is reported as nan; set config.train.peak_flops",
                  device_kind)


def measure_cpu_flops(n: int = 1024, reps: int = 5) -> float:
  """Peak-ish float32 FLOP/s of this machine: best time of a jitted matmul."""
  import jax
  import jax.numpy as jnp

  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best
