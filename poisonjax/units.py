"""How numbers are written for people: durations and compact magnitudes."""

from __future__ import annotations

import math


def format_duration(seconds: float) -> str:
  """`7m05s` under an hour, `2h03m` from one hour on; `?` if not finite."""
  if not math.isfinite(seconds):
    return "?"
  s = max(0, int(round(seconds)))
  if s >= 3600:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 60}m{s % 60:02d}s"


def human(x: float) -> str:
  """Compact number: 1.23k, 602M, 4.1B, 12T; 1.5e+22 beyond a thousand T."""
  x = float(x)
  if x == 0:
    return "0"
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= scale:
      v = x / scale
      return f"{v:.3g}{unit}" if abs(v) < 1000 else f"{x:.2e}"
  return f"{x:.3g}"
