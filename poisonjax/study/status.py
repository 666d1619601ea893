"""Where a grid stands: each run finished, training, interrupted or pending.

A study on a pod or on several CPU workers runs for hours to days, in
pieces; `poisonjax study status` answers "how far, and how long still"
from the run directories alone (summary.json, lock.json, checkpoints,
metrics.jsonl), so it is safe to call while workers train.

The time left is each unfinished run's steps after its last checkpoint at
its size's logged training speed (metrics.jsonl; a size not yet run is
scaled by FLOPs per step from the largest one measured). Speeds logged by
W workers sharing a machine are per worker, so W of them finish in about
1/W of it; evaluations are not counted.
"""

from __future__ import annotations

import numpy as np

from poisonjax import files, rundir, units

from poisonjax.training import runlock
from poisonjax.study import results
from poisonjax.study.plan import plan as plan_study
from poisonjax.study.runner import lock_timeout_s

STATES = ("finished", "training", "interrupted", "pending")


def _metrics_tail(workdir) -> tuple[int, float | None]:
  """The last logged step, and the training speed (steps/s, evaluations
  excluded) over the last five logged rows (None if none logged it)."""
  path = files.as_path(workdir) / rundir.METRICS
  rows = files.read_jsonl(path)[-5:] if path.exists() else []
  rates = [r["steps_per_s"] for r in rows if r.get("steps_per_s")]
  return (int(rows[-1]["step"]) if rows else 0,
          float(np.median(rates)) if rates else None)


def _saved_step(workdir) -> int:
  steps = rundir.checkpoint_steps(str(workdir))
  return steps[-1] if steps else 0


def run_state(workdir, steps: int, timeout_s: float) -> dict:
  """One run's state, its saved step (where a restart resumes), its last
  logged step and speed, and who trains it (if anyone)."""
  workdir = files.as_path(workdir)
  if not workdir.exists():
    return {"state": "pending", "saved": 0, "logged": 0, "speed": None, "holder": ""}
  logged, speed = _metrics_tail(workdir)
  if results.is_finished(workdir):
    return {"state": "finished", "saved": steps, "logged": steps, "speed": speed,
            "holder": ""}
  holder = runlock.live_holder(workdir, timeout_s)
  return {"state": "training" if holder else "interrupted",
          "saved": _saved_step(workdir), "logged": logged, "speed": speed,
          "holder": runlock.describe(holder) if holder else ""}


def seconds_per_step(rows: list[dict]) -> dict[str, float]:
  """Per size, seconds per training step: the median over the runs of that
  size that logged speed. A size with none is scaled by FLOPs per step from
  the largest measured size (the closest in efficiency)."""
  measured: dict[str, list[float]] = {}
  for r in rows:
    if r["speed"]:
      measured.setdefault(r["size"], []).append(1.0 / r["speed"])
  per_step = {size: float(np.median(v)) for size, v in measured.items()}
  flops_per_step = {r["size"]: r["flops"] / max(r["steps"], 1) for r in rows}
  if per_step:
    ref = max(per_step, key=flops_per_step.get)
    for size, f in flops_per_step.items():
      per_step.setdefault(size, per_step[ref] * f / flops_per_step[ref])
  return per_step


def status(study, root) -> dict:
  """{"runs": [plan row + state], "counts": {state: n}, "done_share",
  "flop_rate", "eta_s"} for the study's runs under root."""
  rows, timeout_s = [], lock_timeout_s(study)
  for row in plan_study(study)["runs"]:
    st = run_state(files.as_path(root) / row["run"], row["steps"], timeout_s)
    rows.append({**row, **st, "remaining_flops":
                 row["flops"] * (1.0 - st["saved"] / max(row["steps"], 1))})
  total = sum(r["flops"] for r in rows) or 1.0
  remaining = sum(r["remaining_flops"] for r in rows)
  per_step = seconds_per_step(rows)
  eta = (sum((r["steps"] - r["saved"]) * per_step[r["size"]] for r in rows
             if r["state"] != "finished") if per_step else None)
  return {"runs": rows, "counts": {s: sum(r["state"] == s for r in rows) for s in STATES},
          "done_share": 1.0 - remaining / total, "seconds_per_step": per_step,
          "eta_s": eta}


def format_status(st: dict, all_runs: bool = False) -> str:
  """A table of the unfinished runs (all runs with all_runs) and a summary."""
  lines = [f"{'run':<40} {'state':<12} {'saved':>13} {'logged':>7}  holder"]
  for r in st["runs"]:
    if all_runs or r["state"] != "finished":
      lines.append(f"{r['run']:<40} {r['state']:<12} "
                   f"{r['saved']:>6}/{r['steps']:<6} {r['logged']:>7}  {r['holder']}")
  counts = ", ".join(f"{n} {s}" for s, n in st["counts"].items())
  lines.append(f"{len(st['runs'])} runs: {counts}; {100 * st['done_share']:.1f}% "
               "of the grid's FLOPs saved")
  if st["eta_s"] is None:
    lines.append("time left: unknown until a run logs its speed")
  else:
    speeds = ", ".join(f"{size} {1 / t:.2f}" for size, t in st["seconds_per_step"].items())
    lines.append(f"time left: {units.format_duration(st['eta_s'])} of training, one run "
                 f"at a time at the logged steps/s ({speeds}; evaluations not "
                 "counted); W workers at those speeds: about 1/W of it")
  return "\n".join(lines)
