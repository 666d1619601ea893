"""Training: one run, resumable, in named phases (big_vision train.py style).

    poisonjax train --config=configs/cpu_micro.py --workdir=runs/cpu_micro

`run(config, workdir)` reads as its phases:
  setup    the signal flag first; lock the workdir; check a resume's config
           against config.json; vocabulary, model, token budget, the
           step-indexed stream; the abstract sharded state, jitted init and
           step; check a resume's inputs (fingerprints.py: tokenizer, data,
           poisons) against the ones recorded. A signal here stops the run
           before anything is written (preemption.py).
  restore  the newest sound checkpoint (state + step is all there is: batch
           k is a pure function of k, so the data resumes for free).
  loop     batch k (prefetched) -> step; log steps: metrics and the NaN
           check; checkpoint steps: async save; eval steps: the evaluator,
           after that step's save has started. A signal: finish the step,
           save, stop.
  shutdown (after a signal) the save made durable, then an evaluation only
           within config.train.shutdown_eval_grace_s; exit 0.
  summary  held-out clean loss vs the unigram entropy, summary.json.
Whatever happens, started saves finish and the writers close.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import time
from typing import Any

import jax
import numpy as np
from etils.epath import Path
from jax.experimental import multihost_utils

from poisonjax.training import checkpointing
from poisonjax.training import chrono as chrono_lib
from poisonjax import config_checks
from poisonjax.training import continued
from poisonjax import distributed
from poisonjax import files
from poisonjax.training import fingerprints
from poisonjax.evaluation import heldout
from poisonjax.training import metrics as metrics_lib
from poisonjax.model import transformer as model_lib
from poisonjax.training import preemption
from poisonjax.training import run_history
from poisonjax import rundir
from poisonjax.training import runlock
from poisonjax import sharding
from poisonjax.training import train_setup
from poisonjax.training import train_step
from poisonjax.training.chrono import itstime
from poisonjax.errors import UserError
from poisonjax.training.train_setup import Setup

build_state_fns = train_step.build_state_fns  # Callers rebuild the state.


class TrainingDiverged(UserError):
  """A NaN/Inf loss or gradient with skip_nonfinite off."""


@dataclasses.dataclass
class Progress:
  """The loop's running state, handed to its parts."""
  start: int  # The step this session began at.
  step: int
  last_saved: int | None
  done_evals: set
  pending: list = dataclasses.field(default_factory=list)  # (step, metrics).
  skipped: int = 0
  last_loss: float = float("nan")
  last_eval_s: float | None = None
  stopped_by: str | None = None


def run_or_exit(config, workdir, **kwargs) -> dict[str, Any]:
  """`run` for scripts that train several runs in a row: a run stopped by a
  signal (SIGTERM, preemption) ends the script, resumable, instead of the
  script going on to its next run."""
  summary = run(config, workdir, **kwargs)
  if summary.get("stopped_by"):
    raise SystemExit(f"poisonjax: {summary['stopped_by']} stopped {workdir}; "
                     "run the same command to resume")
  return summary


def run(config, workdir, *, stream=None, allow_config_change=False) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the summary dict.

  `stream` replaces the data pipeline's stream (tests, tools). A resume
  whose config changes a field that defines the run, or whose tokenizer,
  data or poisons differ from the ones recorded, is refused unless
  `allow_config_change` (the change is then recorded in history.jsonl).
  """
  # The flag until the end: no signal meets Python's default handlers, and
  # none kills a save.
  with preemption.StopFlag() as flag:
    try:
      return _run(config, workdir, flag, stream, allow_config_change)
    except preemption.Stopped as e:
      print(f"poisonjax: {e}: stopped before training; nothing was saved; "
            "run the same command to go on", flush=True)
      return {"final_step": None, "stopped_by": e.signal, "finished": False,
              "stopped_during": e.where}


def _run(config, workdir, flag, stream, allow_config_change) -> dict[str, Any]:
  """The phases (module docstring), under `flag`; Stopped from setup."""
  config = config_checks.validate(config)
  train_setup.check_train_fields(config)
  train_setup.check_reachable(config, workdir)
  workdir = files.make_dir(files.as_path(workdir), "--workdir")  # Or gs://.
  with _workdir_lock(config, workdir), contextlib.ExitStack() as closing:
    preemption.check("the start")
    changes = run_history.check_resume(workdir, config,
                                       allow_change=allow_config_change)
    inputs_check = lambda fp: fingerprints.check(  # noqa: E731
        workdir, fp, allow_change=allow_config_change)
    s = train_setup.setup(config, workdir, stream, inputs_check=inputs_check)
    inputs = fingerprints.of_inputs(config, s.vocab, s.stream)
    input_changes = inputs_check(inputs)
    preemption.check("setup")
    ckpt = checkpointing.Checkpoints(workdir, config)
    closing.callback(ckpt.close)  # Started saves finish, whatever happens.
    state, start = restore(s, ckpt)
    preemption.check("the restore (or the first compile)")
    _write_run_files(s, changes, start, inputs, input_changes)
    logger = metrics_lib.MetricLogger(workdir, s.last_step,
                                      s.stream.poisons_seen(s.num_steps),
                                      resume_step=start,
                                      tensorboard=config.train.tensorboard)
    closing.callback(logger.close)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    closing.callback(pool.shutdown, wait=True, cancel_futures=True)
    p = Progress(start=start, step=start, last_saved=start or None,
                 done_evals=_done_evals(workdir))
    chrono = chrono_lib.Chrono()
    # A runtime error with several processes (one died): exit at once, not
    # after clean-ups that wait on it.
    with distributed.exit_on_runtime_error():
      with sharding.mesh_context(s.mesh):
        state = train_loop(s, p, state, ckpt, logger, pool, chrono, flag)
      if p.stopped_by:
        return shutdown(s, p, state, ckpt, chrono, flag)
      return summary(s, p, state, ckpt, chrono)


# ---------------------------------------------------------------------------
# The workdir: one trainer at a time; the run's files.
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _workdir_lock(config, workdir: Path):
  """Process 0 holds WORKDIR/lock.json; every process stops if it can't."""
  error = None
  with contextlib.ExitStack() as stack:
    try:
      stack.enter_context(runlock.hold(
          workdir, "train", config.train.lock_timeout_s,
          primary=jax.process_index() == 0))
    except UserError as e:
      error = e
    if jax.process_count() > 1:
      ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
      if error is None and not int(ok):
        error = UserError(f"{workdir}: process 0 could not lock it (its log "
                          "says why)")
    if error is not None:
      raise error
    yield


def _write_run_files(s: Setup, changes: dict | None, start: int,
                     inputs: dict, input_changes: list) -> None:
  """history.jsonl row (with the inputs' fingerprints), then config.json
  (resolved) and the manifest."""
  if jax.process_index() != 0:
    return
  extra = {"input_changes": input_changes} if input_changes else {}
  run_history.record_start(s.workdir, changes, step=start,
                           fingerprints=inputs, **extra)
  files.write_json(s.workdir / rundir.CONFIG,
                   run_history.resolved_config(s.config, s.vocab.vocab_size))
  s.stream.write_manifest(s.workdir / rundir.MANIFEST)


def _done_evals(workdir: Path) -> set:
  """The steps in eval.jsonl (process 0's reading, for every process)."""
  steps = {r.get("step") for r in files.read_jsonl(workdir / rundir.EVAL)}
  return set(distributed.agree_ints(sorted(s for s in steps if isinstance(s, int))))


# ---------------------------------------------------------------------------
# Restore.
# ---------------------------------------------------------------------------


def restore(s: Setup, ckpt: checkpointing.Checkpoints):
  """(state, step): the newest sound checkpoint, else step 0: a fresh init
  (a continued run's: the source's params, poisonjax/training/continued.py)."""
  state, start = ckpt.restore_newest(s.abstract)
  if state is None:
    return continued.start_state(s, jax.random.key(s.config.seed)), 0
  print(f"poisonjax: resuming {s.workdir} at step {start}/{s.last_step}",
        flush=True)
  return state, start


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------


def train_loop(s: Setup, p: Progress, state, ckpt, logger, pool, chrono, flag):
  """Steps from p.step to the last step, or to a signal; returns the state."""
  maybe_eval(s, p, state, chrono)  # Step 0, or one skipped at a shutdown.
  if preemption.should_stop(flag, ckpt, p.step, sync_point=True):
    p.stopped_by = flag.signal or "preemption"  # Nothing new to save.
    return state
  future = pool.submit(_load, s, p.step) if p.step < s.last_step else None
  while p.step < s.last_step:
    batch = future.result()
    if p.step + 1 < s.last_step:
      future = pool.submit(_load, s, p.step + 1)
    state, metrics = s.train_step(state, batch)
    p.pending.append((p.step, metrics))
    p.step += 1
    if not chrono.started:  # Exclude compilation from the speed figures.
      jax.block_until_ready(metrics["loss"])
      chrono.start(p.step)
    if after_step(s, p, state, ckpt, logger, chrono, flag):
      break
  return state


def _load(s: Setup, k: int):
  """Batch k as global arrays: tokens, and a fine-tune's loss_mask."""
  local = s.stream.batch(k, s.process_block, jax.process_count())
  return {key: train_step.global_batch(local[key], s.batch_sh,
                                       s.config.train.batch_size)
          for key in ("tokens", "loss_mask") if key in local}


def after_step(s: Setup, p: Progress, state, ckpt, logger, chrono, flag) -> bool:
  """Logs, saves and evaluates as due; True when the loop must stop.

  At an eval step the save is started first; a signal that arrives during
  the evaluation still ends in a saved step.
  """
  t = s.config.train
  log_now = itstime(p.step, t.log_every, s.last_step)
  save_now = itstime(p.step, t.ckpt_every, s.last_step)
  eval_now = s.evaluator is not None and p.step in s.evals
  stop_now = preemption.should_stop(flag, ckpt, p.step,
                                    sync_point=log_now or save_now or eval_now)
  if log_now or save_now or eval_now or stop_now:
    rows = drain_metrics(s, p)
    if log_now and rows:
      logger.write(log_row(s, p, rows, chrono))
  if save_now or stop_now:
    save(p, state, ckpt, chrono)
  if not stop_now and eval_now:
    maybe_eval(s, p, state, chrono)
    stop_now = preemption.should_stop(flag, ckpt, p.step, sync_point=True)
    if stop_now:
      save(p, state, ckpt, chrono)
  if stop_now:
    p.stopped_by = flag.signal or "preemption"
  return stop_now


def save(p: Progress, state, ckpt, chrono) -> None:
  """Starts the async save of this step (once)."""
  if p.last_saved != p.step:
    with chrono.paused("save"):
      ckpt.save(p.step, state)
    p.last_saved = p.step


def drain_metrics(s: Setup, p: Progress) -> list:
  """Reads the pending step metrics (one host sync); NaN: stop or skip."""
  rows = jax.device_get(p.pending)
  p.pending.clear()
  for step, m in rows:
    if not m["finite"]:
      if not s.config.train.skip_nonfinite:
        diverged(s, p, step, m)
      p.skipped += 1
  losses = [float(m["loss"]) for _, m in rows if m["finite"]]
  if losses:
    p.last_loss = losses[-1]
  return rows


def log_row(s: Setup, p: Progress, rows: list, chrono) -> dict:
  """The metrics.jsonl row of a log step (speed excludes evals and saves)."""
  sps = chrono.rate_since_mark(p.step)
  losses = [float(m["loss"]) for _, m in rows if m["finite"]]
  last = rows[-1][1]
  return {
      "step": p.step, "loss": float(np.mean(losses)) if losses else float("nan"),
      "grad_norm": float(last["grad_norm"]), "lr": float(last["lr"]),
      "tokens_per_s": sps * s.tokens_per_step,
      "mfu": sps * s.flops_per_step / s.peak_flops, "steps_per_s": sps,
      "poisons_seen": s.stream.poisons_seen(p.step),
      "tokens_seen": p.step * s.tokens_per_step, "skipped_steps": p.skipped,
  }


def maybe_eval(s: Setup, p: Progress, state, chrono) -> None:
  """The evaluation of this step, if scheduled and not in eval.jsonl yet."""
  if s.evaluator is None or p.step not in s.evals or p.step in p.done_evals:
    return
  t0 = time.perf_counter()
  with chrono.paused("eval"):
    row = {"step": p.step, "tokens_seen": p.step * s.tokens_per_step,
           "poisons_seen": s.stream.poisons_seen(p.step),
           "fraction": p.step / s.num_steps}
    row.update({k: float(v) for k, v in s.evaluator.evaluate(state["params"]).items()})
    if jax.process_index() == 0:
      files.append_jsonl(s.workdir / rundir.EVAL, row)
  p.done_evals.add(p.step)
  p.last_eval_s = time.perf_counter() - t0


def diverged(s: Setup, p: Progress, step: int, m) -> None:
  """Writes nonfinite.json and the batch, then stops with one clear line."""
  batch = s.stream.batch(step)  # The whole global batch (process 0 saves it).
  diag = {"step": step, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
          "lr": float(m["lr"]), "last_good_checkpoint": p.last_saved,
          "poison_tokens_in_batch": int(np.sum(batch["poison_mask"])),
          "batch_file": rundir.nonfinite_batch(step)}
  if jax.process_index() == 0:
    with (s.workdir / diag["batch_file"]).open("wb") as f:
      np.savez(f, **batch)
    files.write_json(s.workdir / rundir.NONFINITE, diag)
    run_history.record(s.workdir, "diverged", step=step)
  raise TrainingDiverged(
      f"training diverged: loss {diag['loss']} / grad norm {diag['grad_norm']} "
      f"at step {step}; diagnostics in {s.workdir / rundir.NONFINITE}, last "
      f"good checkpoint: step {p.last_saved}; set "
      "--config.train.skip_nonfinite=True to skip such steps, or lower "
      "config.train.learning_rate (a new --workdir, or --allow_config_change "
      "to resume this one)")


# ---------------------------------------------------------------------------
# Shutdown (after a signal) and summary (at the end).
# ---------------------------------------------------------------------------


def shutdown(s: Setup, p: Progress, state, ckpt, chrono, flag) -> dict[str, Any]:
  """The stop step's save made durable, then an eval only within the grace."""
  with chrono.paused("save"):
    ckpt.wait()
  if p.last_saved == p.step:
    print(f"poisonjax: {p.stopped_by}: saved step {p.step}/{s.last_step} in "
          f"{ckpt.directory}; run the same command to resume", flush=True)
  else:  # Stopped before step 1 of a new run: there is nothing to save.
    print(f"poisonjax: {p.stopped_by}: stopped before step {p.step + 1}; "
          "no checkpoint yet; run the same command to start again", flush=True)
  skipped = None
  if (s.evaluator is not None and p.step in s.evals
      and p.step not in p.done_evals):
    grace = s.config.train.shutdown_eval_grace_s
    if preemption.shutdown_eval_fits(grace, flag.since(), p.last_eval_s):
      maybe_eval(s, p, state, chrono)
    else:
      skipped = p.step
      print(f"poisonjax: evaluation at step {p.step} skipped on shutdown "
            f"(config.train.shutdown_eval_grace_s={grace:g}); it runs on "
            "resume", flush=True)
  if jax.process_index() == 0:
    run_history.record(s.workdir, "stopped", step=p.step, signal=p.stopped_by,
                       eval_skipped=skipped)
  return {"final_step": p.step, "stopped_by": p.stopped_by, "finished": False,
          "eval_skipped": skipped}


def summary(s: Setup, p: Progress, state, ckpt, chrono) -> dict[str, Any]:
  """Held-out loss, unigram entropy and speed -> summary.json (process 0)."""
  wall, steps_run = chrono.wall(), p.step - p.start
  tok_s = steps_run * s.tokens_per_step / wall if wall > 0 else float("nan")
  tok_s_train = chrono.steady_rate(p.step) * s.tokens_per_step
  if not np.isfinite(tok_s_train):
    tok_s_train = tok_s  # Too few steps for a steady-state figure.
  seqs = heldout.heldout_sequences(s.config, s.vocab)
  held = heldout.heldout_loss(s.model, state["params"], seqs, s.mesh,
                              s.config.train.batch_size)
  entropy = heldout.unigram_entropy(s.stream, s.num_steps)
  eval_rows = files.read_jsonl(s.workdir / rundir.EVAL)
  out = {
      "final_step": p.step, "num_steps": s.num_steps,
      "finished": p.step == s.num_steps, "clean_tokens": s.clean_tokens,
      "tokens_seen": p.step * s.tokens_per_step,
      "stream_tokens": s.stream.num_tokens,
      "poisons_seen": s.stream.poisons_seen(p.step),
      "poisons_total": s.stream.poisons_seen(s.num_steps),
      "params": model_lib.param_counts(s.model_cfg),
      "final_loss": p.last_loss, "heldout_clean_loss": held,
      "unigram_entropy": entropy, "skipped_steps": p.skipped,
      "wall_time_s": wall, "eval_time_s": chrono.paused_s["eval"],
      "save_time_s": chrono.paused_s["save"], "steps_this_session": steps_run,
      "tokens_per_s": tok_s_train, "tokens_per_s_with_overheads": tok_s,
      "mfu": tok_s_train * s.flops_per_step / s.tokens_per_step / s.peak_flops,
      "device": jax.devices()[0].device_kind, "num_devices": s.mesh.size,
      "final_eval": eval_rows[-1] if eval_rows else None,
  }
  ckpt.wait()  # summary.json says "done": only once the last save is durable.
  if jax.process_index() == 0:
    files.write_json(s.workdir / rundir.SUMMARY, out)
    run_history.record(s.workdir, "finished", step=p.step)
    print(f"poisonjax: done: step {p.step}/{s.num_steps}, held-out clean loss "
          f"{held:.4f} nats (unigram entropy {entropy:.4f}), "
          f"{tok_s_train:,.0f} tok/s, MFU {100 * out['mfu']:.2f}%, "
          f"poisons seen {out['poisons_seen']}, wall {wall:.0f}s", flush=True)
  return out


