"""Running a grid here: one run after another, each in ROOT/<run name>.

Finished runs (summary.json present) are skipped and an interrupted one is
resumed by train.run from its own checkpoints, so killing `study run` at any
moment and starting it again redoes nothing that was saved. The grid root
is locked (poisonjax.training.runlock) while a grid runs in it.

Workers (worker=True): several processes share one root, each taking the
next run nobody has claimed (ROOT/.claims/<run name>/lock.json, held while
it trains). On a small CPU machine two single-threaded workers pinned to a
core each outrun one two-threaded process (measured: 1.13x at cpu-xxs,
1.31x at cpu-s); see `poisonjax study reproduce --worker`. A worker
refuses a root held by a plain `study run`, and a plain run skips runs a
worker holds. A run that continues another (grids.sources) waits, skipped,
until that one has finished. Runs named in `skip` (their results kept
from an earlier collection: `study reproduce --keep_collected`) count as
done and are not trained again.
"""

from __future__ import annotations

import contextlib
import os
import time

from poisonjax import files
from poisonjax.training import runlock
from poisonjax import units
from poisonjax.errors import UserError
from poisonjax.study import experiment
from poisonjax.study import grids
from poisonjax.study import results
# The function, by its module: the package's name `plan` is the function.
from poisonjax.study.plan import plan as plan_study

# Seconds without a heartbeat after which another host's lock counts as dead.
DEFAULT_LOCK_TIMEOUT_S = 600.0


def enable_compilation_cache() -> str:
  """Persistent XLA cache shared by the grid's runs (and later invocations).

  Runs of one size compile the same evaluator (and, at equal step counts,
  the same train step); on CPU compiling is most of a small run's time.
  Respects a cache directory the user already configured.
  """
  import jax

  path = jax.config.jax_compilation_cache_dir
  if not path:
    base = os.environ.get("POISONJAX_CACHE") or os.path.expanduser("~/.cache/poisonjax")
    path = os.path.join(base, "jax_compilation_cache")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path


def lock_timeout_s(study) -> float:
  train = study.base.train
  return float(train.lock_timeout_s) if "lock_timeout_s" in train else DEFAULT_LOCK_TIMEOUT_S


def run_grid(study, root, only: str = "", log=print,
             worker: bool = False, skip=frozenset()) -> list[dict]:
  """Runs the grid's runs (those matching `only`) in root; one dict per run.

  Raises UserError if another live `study run` holds root. worker: share
  root with other workers (see the module docstring). skip: names of runs
  done elsewhere, not trained here.
  """
  runs = grids.select(grids.expand(study), only)
  root = files.as_path(root)
  root.mkdir(parents=True, exist_ok=True)
  from poisonjax import distributed  # JAX: not on `study plan|status`'s path.
  primary = distributed.is_primary()  # With several processes: process 0.
  timeout_s = lock_timeout_s(study)
  if worker:
    holder = runlock.live_holder(root, timeout_s)
    if holder:
      raise UserError(runlock.refusal(root, "study worker", holder))
    lock = contextlib.nullcontext()
  else:
    lock = runlock.hold(root, "study run", timeout_s=timeout_s, primary=primary)
  with lock:
    enable_compilation_cache()
    if primary:
      files.write_text_atomic(root / "study.json", study.to_json(indent=2))
    prepare = experiment.hook(study, "prepare")
    if prepare is not None:  # What the runs start from, before them.
      prepare(study, root, log)
    return _run_all(study, root, runs, log, timeout_s, frozenset(skip))


def _claim(root, run_name: str, timeout_s: float):
  """Takes ROOT/.claims/RUN for the run's training: a runlock.Lock (None on
  processes other than 0), or False if a live process holds it."""
  from poisonjax import distributed  # JAX: not on `study plan|status`'s path.
  lock = None
  if distributed.is_primary():
    try:
      lock = runlock.acquire(root / ".claims" / run_name, "study worker", timeout_s)
    except UserError:
      lock = False
  return lock if distributed.agree(lock is not False) else False


def _finished(workdir) -> bool:
  """Process 0's view (it writes summary.json), shared by every process."""
  from poisonjax import distributed
  return distributed.agree(results.is_finished(workdir))


def _run_all(study, root, runs: list[grids.Run], log, timeout_s: float,
             skip: frozenset) -> list[dict]:
  from poisonjax.training import train

  costs = {r["run"]: r["flops"] for r in plan_study(study)["runs"]}
  after_run = experiment.hook(study, "after_run")
  t0, done_cost, out = time.time(), 0.0, []
  remaining_cost = sum(costs[r.name] for r in runs)
  fmt = units.format_duration
  for i, run in enumerate(runs, 1):
    workdir, tag = root / run.name, f"[study] run {i}/{len(runs)} {run.name}"
    remaining_cost -= costs[run.name]
    if run.name in skip:
      log(f"{tag}: results kept from an earlier collection, skipped")
      out.append({"run": run.name, "status": "kept"})
      continue
    if _finished(workdir):
      log(f"{tag}: finished before, skipped")
      if after_run is not None:  # Finishes what an interrupted rerun left.
        after_run(study, run, workdir, log)
      out.append({"run": run.name, "status": "skipped"})
      continue
    waiting = [r.name for r in grids.sources(study, run)
               if not _finished(root / r.name)]
    if waiting:  # Only with --only or workers: expand puts sources first.
      log(f"{tag}: waits for {', '.join(waiting)} to finish, skipped")
      out.append({"run": run.name, "status": "waiting"})
      continue
    claim = _claim(root, run.name, timeout_s)
    if claim is False or _finished(workdir):  # (Finished meanwhile by a worker.)
      if claim:
        claim.release()
      log(f"{tag}: {'another worker holds it' if claim is False else 'finished'}"
          ", skipped")
      out.append({"run": run.name, "status": "held" if claim is False else "skipped"})
      continue
    log(f"{tag}: starting (elapsed {fmt(time.time() - t0)})")
    t_run = time.time()
    try:
      summary = train.run(grids.run_config(study, run, root), str(workdir))
    finally:
      if claim:
        claim.release()
    if not _finished(workdir):  # Stopped by a signal: stop here too.
      log(f"{tag}: stopped ({summary.get('stopped_by', 'unfinished')}); run "
          "the same command to resume")
      out.append({"run": run.name, "status": "stopped", "summary": summary})
      return out
    if after_run is not None:
      after_run(study, run, workdir, log)
    done_cost += costs[run.name]
    elapsed = time.time() - t0
    eta = elapsed / done_cost * remaining_cost if done_cost else 0.0
    log(f"{tag}: done in {fmt(time.time() - t_run)}; elapsed {fmt(elapsed)}, "
        f"ETA {fmt(eta)}")
    out.append({"run": run.name, "status": "ran", "summary": summary})
  return out
