"""Training: sharded train state, jitted step, the loop, checkpoints, evals.

    poisonjax train --config=configs/cpu_micro.py --workdir=runs/cpu_micro

One run reads as a straight line (big_vision style):
  1. config, mesh, vocabulary, model, token budget, the step-indexed stream;
  2. abstract train state (eval_shape of init) -> shardings from the one
     logical-axis table -> jitted init / step with in/out shardings;
  3. resume: newest good checkpoint (state + step is all there is; batch k
     is a pure function of k, so the data resumes at the step for free);
  4. loop: batch k (prefetched) -> step -> every log_every: metrics, NaN
     check; every ckpt_every: async save; at eval steps: the evaluator;
     SIGTERM/SIGINT: finish the step, save, exit 0;
  5. end: final save, held-out clean loss vs the corpus unigram entropy,
     summary.json.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from poisonjax import budget
from poisonjax import checkpointing
from poisonjax import config as config_lib
from poisonjax import hardware
from poisonjax import metrics as metrics_lib
from poisonjax import model as model_lib
from poisonjax import optim
from poisonjax import sharding
from poisonjax.data.vocabulary import PAD_ID
from poisonjax.errors import UserError, field_error


class TrainingDiverged(UserError):
  """A NaN/Inf loss or gradient with skip_nonfinite off."""


# ---------------------------------------------------------------------------
# Loss and train step.
# ---------------------------------------------------------------------------


def next_token_loss(model, params, tokens):
  """Mean next-token cross-entropy (nats) over non-pad targets; also the count."""
  logits = model.apply({"params": params}, tokens[:, :-1])
  targets = tokens[:, 1:]
  mask = (targets != PAD_ID).astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  count = mask.sum()
  return (nll * mask).sum() / jnp.maximum(count, 1.0), count


def make_train_step(model, tx, schedule, skip_nonfinite: bool):
  """(state, batch) -> (state, metrics); the state is a dict(step, params, opt_state)."""

  def step(state, batch):
    (loss, _), grads = jax.value_and_grad(
        lambda p: next_token_loss(model, p, batch["tokens"]), has_aux=True)(
            state["params"])
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:  # Keep the old params and moments; the step advances.
      keep = lambda new, old: jax.tree.map(
          lambda n, o: jnp.where(finite, n, o), new, old)
      params = keep(params, state["params"])
      opt_state = keep(opt_state, state["opt_state"])
    new_state = {"step": state["step"] + 1, "params": params,
                 "opt_state": opt_state}
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "lr": schedule(state["step"]), "finite": finite}
    return new_state, metrics

  return step


# ---------------------------------------------------------------------------
# State set-up: abstract state -> shardings -> jitted init.
# ---------------------------------------------------------------------------


def build_state_fns(config, model_cfg, mesh, tx):
  """The model, jitted init, abstract (sharded) state and state shardings."""
  model = model_lib.Transformer(model_cfg)
  dummy = jnp.zeros((1, min(model_cfg.max_seq_len, 8)), jnp.int32)

  def init_boxed(rng):
    params = model.init(rng, dummy)["params"]
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": tx.init(params)}

  boxed = jax.eval_shape(init_boxed, jax.random.key(config.seed))
  abstract, state_sh = sharding.abstract_with_shardings(boxed, mesh)
  init = jax.jit(lambda rng: nn.unbox(init_boxed(rng)), out_shardings=state_sh)
  return model, init, abstract, state_sh


def global_batch(local: np.ndarray, batch_sh, global_rows: int):
  """This process's rows -> one global array sharded over (data, fsdp)."""
  return jax.make_array_from_process_local_data(
      batch_sh, local, (global_rows,) + local.shape[1:])


# ---------------------------------------------------------------------------
# Held-out clean loss and the corpus unigram entropy.
# ---------------------------------------------------------------------------


def heldout_sequences(config, vocab, num_docs: int = 64) -> np.ndarray:
  """Held-out documents, tokenized, EOS-joined and cut into [N, seq_len]."""
  from poisonjax.data import sources

  docs = sources.heldout_documents(config, num_docs)
  ids: list[int] = []
  for text in docs:
    ids.extend(int(i) for i in vocab.encode(text))
    ids.append(vocab.eos_id)
  s = config.data.seq_len
  n = max(1, math.ceil(len(ids) / s))
  out = np.zeros((n * s,), np.int32)
  out[:len(ids)] = ids
  return out.reshape(n, s)


def heldout_loss(model, params, seqs: np.ndarray, mesh, batch: int) -> float:
  """Token-weighted mean next-token loss over the held-out sequences."""
  batch_sh = sharding.batch_sharding(mesh)
  loss_fn = jax.jit(lambda p, t: next_token_loss(model, p, t),
                    in_shardings=(None, batch_sh))
  total, count = 0.0, 0.0
  for i in range(0, len(seqs), batch):
    chunk = np.zeros((batch, seqs.shape[1]), np.int32)
    part = seqs[i:i + batch]
    chunk[:len(part)] = part
    arr = jax.make_array_from_callback(chunk.shape, batch_sh, lambda idx: chunk[idx])
    loss, n = jax.device_get(loss_fn(params, arr))
    total += float(loss) * float(n)
    count += float(n)
  return total / max(count, 1.0)


def unigram_entropy(stream, num_steps: int, max_batches: int = 256) -> float:
  """Entropy (nats/token) of the clean tokens' unigram distribution.

  Counted over up to `max_batches` batches spread through the stream; pad
  and poison tokens are left out. A model that beats this uses context.
  """
  picks = np.unique(np.linspace(0, num_steps - 1, min(num_steps, max_batches)).astype(int))
  counts = np.zeros((stream.vocab.vocab_size,), np.int64)
  for k in picks:
    b = stream.batch(int(k))
    toks = b["tokens"][~b["poison_mask"] & (b["tokens"] != PAD_ID)]
    counts += np.bincount(toks.ravel(), minlength=counts.size)[:counts.size]
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------------------
# Signals: finish the step, save, exit 0.
# ---------------------------------------------------------------------------


class StopFlag:
  """Set by SIGTERM/SIGINT; the loop checks it after each step."""

  def __init__(self):
    self.signal = None
    self._old = {}

  def __enter__(self):
    import threading
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _should_stop(flag: StopFlag, ckpt: checkpointing.Checkpoints, step: int,
                 sync_point: bool) -> bool:
  """Single host: the signal flag, every step. Multi-host: every host must
  stop at the same step, so they agree (one all-gather) only at sync points
  (log/checkpoint steps), or at orbax's preemption sync point."""
  if jax.process_count() == 1:
    return flag.signal is not None
  if ckpt.reached_preemption(step):
    return True
  if not sync_point:
    return False
  from jax.experimental import multihost_utils
  local = np.array([flag.signal is not None], np.int32)
  any_stop = bool(multihost_utils.process_allgather(local).max())
  return any_stop


# ---------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------


def _check_batch(config, mesh) -> None:
  b = config.train.batch_size
  shards = sharding.batch_shards(mesh)
  if b % shards:
    raise field_error("config.train.batch_size", b,
                      f"not divisible by the data x fsdp devices ({shards})",
                      f"use a multiple of {shards} or change config.mesh")
  if b % jax.process_count():
    raise field_error("config.train.batch_size", b,
                      f"not divisible by the {jax.process_count()} processes",
                      "use a multiple of the process count")


def _write_json(path: Path, obj) -> None:
  if jax.process_index() == 0:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def _eval_schedule(num_steps: int, last_step: int, num_evals: int) -> list[int]:
  if num_evals <= 0:
    return []
  from poisonjax import evaluate
  steps = [s for s in evaluate.eval_steps(num_steps, num_evals) if s <= last_step]
  if last_step not in steps:
    steps.append(last_step)
  return sorted(set(steps))


def run(config, workdir, *, stream=None) -> dict[str, Any]:
  """Trains (or resumes) the run in `workdir`; returns the summary dict.

  `stream` replaces the data pipeline's stream (tests, tools); by default it
  is built from the config at the Chinchilla budget.
  """
  # 1. Config, mesh, vocabulary, model, budget, stream. -----------------------
  config = config_lib.validate(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh)
  _check_batch(config, mesh)
  if stream is None:
    from poisonjax.data import stream as stream_lib
    from poisonjax.data import vocabulary
    vocab = vocabulary.get_vocabulary(config)
    model_cfg = model_lib.ModelConfig.from_config(config, vocab.vocab_size)
    clean_tokens = budget.clean_token_budget(config, vocab.vocab_size)
    stream = stream_lib.build_stream(config, clean_tokens)
  else:
    vocab = stream.vocab
    model_cfg = model_lib.ModelConfig.from_config(config, vocab.vocab_size)
    clean_tokens = budget.clean_token_budget(config, vocab.vocab_size)
  num_steps = stream.num_steps
  last_step = num_steps
  if 0 < config.train.max_steps < num_steps:
    last_step = config.train.max_steps
  tokens_per_step = config.train.batch_size * config.data.seq_len
  total_poisons = stream.poisons_seen(num_steps)
  _write_json(workdir / "config.json", json.loads(config.to_json_best_effort()))
  if jax.process_index() == 0:
    stream.write_manifest(workdir / "manifest.json")

  # 2. Abstract state, shardings, jitted init and step. ------------------------
  tx, schedule = optim.make_optimizer(config, num_steps)
  model, init, abstract, state_sh = build_state_fns(config, model_cfg, mesh, tx)
  batch_sh = sharding.batch_sharding(mesh)
  train_step = jax.jit(
      make_train_step(model, tx, schedule, config.train.skip_nonfinite),
      in_shardings=(state_sh, {"tokens": batch_sh}),
      out_shardings=(state_sh, None), donate_argnums=0)

  # 3. Resume from the newest good checkpoint, else initialise. ---------------
  ckpt = checkpointing.Checkpoints(workdir, config)
  state, start = ckpt.restore_newest(abstract)
  if state is None:
    state = init(jax.random.key(config.seed))
  if start:
    print(f"poisonjax: resuming {workdir} at step {start}/{last_step}", flush=True)

  evals = _eval_schedule(num_steps, last_step, config.eval.num_evals)
  done_evals = {r.get("step") for r in metrics_lib.read_jsonl(workdir / "eval.jsonl")}
  evaluator = None
  if evals:
    from poisonjax import evaluate
    evaluator = evaluate.Evaluator(config, model_cfg, vocab, mesh)

  eval_seconds = [0.0]  # Kept out of the training throughput figures.

  def maybe_eval(step, state):
    if evaluator is None or step not in evals or step in done_evals:
      return
    t0 = time.time()
    row = {"step": step, "tokens_seen": step * tokens_per_step,
           "poisons_seen": stream.poisons_seen(step),
           "fraction": step / num_steps}
    row.update({k: float(v) for k, v in evaluator.evaluate(state["params"]).items()})
    if jax.process_index() == 0:
      metrics_lib.append_jsonl(workdir / "eval.jsonl", row)
    done_evals.add(step)
    eval_seconds[0] += time.time() - t0

  # 4. The loop. --------------------------------------------------------------
  pi, pc = jax.process_index(), jax.process_count()
  flops_per_step = model_lib.flops_per_token(model_cfg, config.data.seq_len) * tokens_per_step
  peak = hardware.peak_flops_per_device(config) * mesh.size
  logger = metrics_lib.MetricLogger(workdir, last_step, total_poisons)
  pool = concurrent.futures.ThreadPoolExecutor(1)

  def load(k):
    local = stream.batch(k, pi, pc)["tokens"]
    return {"tokens": global_batch(local, batch_sh, config.train.batch_size)}

  pending: list[tuple[int, dict]] = []  # (step, device metrics) not yet read.
  skipped = 0
  last_loss = float("nan")
  t_start = time.time()
  t_mark, step_mark = None, start
  t_first, step_first = None, start  # After the first (compiling) step.
  eval_mark = eval_first = 0.0
  last_saved = start if start else None
  stopped_by = None

  def check_pending(step):
    """Reads pending metrics (one host sync); raises on NaN. Returns rows."""
    nonlocal skipped
    rows = jax.device_get(pending)
    pending.clear()
    for s, m in rows:
      if not m["finite"]:
        if config.train.skip_nonfinite:
          skipped += 1
          continue
        _diverged(workdir, s, m, stream, ckpt, last_saved, pi, pc)
    return rows

  with sharding.mesh_context(mesh), StopFlag() as flag:
    step = start
    future = pool.submit(load, step) if step < last_step else None
    maybe_eval(step, state)
    while step < last_step:
      batch = future.result()
      if step + 1 < last_step:
        future = pool.submit(load, step + 1)
      state, m = train_step(state, batch)
      pending.append((step, m))
      step += 1
      if t_mark is None:  # Exclude compilation from the throughput figures.
        jax.block_until_ready(m["loss"])
        t_mark, step_mark, eval_mark = time.time(), step, eval_seconds[0]
        t_first, step_first, eval_first = t_mark, step, eval_seconds[0]
      log_now = step % config.train.log_every == 0 or step == last_step
      save_now = step % config.train.ckpt_every == 0 or step == last_step
      stop_now = _should_stop(flag, ckpt, step, log_now or save_now)
      if log_now or save_now or stop_now or (evaluator and step in evals):
        rows = check_pending(step)
        if log_now and rows:
          now = time.time()
          n = step - step_mark
          dt = now - t_mark - (eval_seconds[0] - eval_mark)
          sps = n / dt if n > 0 and dt > 0 else float("nan")
          losses = [float(r["loss"]) for _, r in rows if r["finite"]]
          last_loss = losses[-1] if losses else last_loss
          last = rows[-1][1]
          logger.write({
              "step": step, "loss": float(np.mean(losses)) if losses else float("nan"),
              "grad_norm": float(last["grad_norm"]), "lr": float(last["lr"]),
              "tokens_per_s": sps * tokens_per_step,
              "mfu": sps * flops_per_step / peak, "steps_per_s": sps,
              "poisons_seen": stream.poisons_seen(step),
              "tokens_seen": step * tokens_per_step, "skipped_steps": skipped,
          })
          t_mark, step_mark, eval_mark = time.time(), step, eval_seconds[0]
        elif rows:
          losses = [float(r["loss"]) for _, r in rows if r["finite"]]
          last_loss = losses[-1] if losses else last_loss
      if save_now or stop_now:
        ckpt.save(step, state)
        last_saved = step
      maybe_eval(step, state)
      if stop_now:
        stopped_by = flag.signal or "preemption"
        break
    pool.shutdown(wait=True)
    ckpt.close()
    logger.close()
    t_end = time.time()
    wall = t_end - t_start
    if stopped_by:
      print(f"poisonjax: {stopped_by}: saved step {step}/{last_step} in "
            f"{ckpt.directory}; run the same command to resume", flush=True)
      return {"final_step": step, "stopped_by": stopped_by, "finished": False}

    # 5. The end: held-out clean loss, unigram entropy, summary.json. ---------
    seqs = heldout_sequences(config, vocab)
    held = heldout_loss(model, state["params"], seqs, mesh, config.train.batch_size)
  entropy = unigram_entropy(stream, num_steps)
  steps_run = step - start
  tok_s = (steps_run * tokens_per_step / wall) if wall > 0 else float("nan")
  tok_s_train = tok_s  # Steady state: from the end of the first step on.
  train_seconds = (t_end - t_first - (eval_seconds[0] - eval_first)
                   if t_first is not None else 0.0)
  if step > step_first and train_seconds > 0:
    tok_s_train = (step - step_first) * tokens_per_step / train_seconds
  eval_rows = metrics_lib.read_jsonl(workdir / "eval.jsonl")
  summary = {
      "final_step": step, "num_steps": num_steps, "finished": step == num_steps,
      "clean_tokens": clean_tokens, "tokens_seen": step * tokens_per_step,
      "stream_tokens": stream.num_tokens,
      "poisons_seen": stream.poisons_seen(step), "poisons_total": total_poisons,
      "params": model_lib.param_counts(model_cfg),
      "final_loss": last_loss, "heldout_clean_loss": held,
      "unigram_entropy": entropy, "skipped_steps": skipped,
      "wall_time_s": wall, "eval_time_s": eval_seconds[0],
      "steps_this_session": steps_run,
      "tokens_per_s": tok_s_train, "tokens_per_s_with_overheads": tok_s,
      "mfu": tok_s_train * flops_per_step / tokens_per_step / peak,
      "device": jax.devices()[0].device_kind, "num_devices": mesh.size,
      "final_eval": eval_rows[-1] if eval_rows else None,
  }
  _write_json(workdir / "summary.json", summary)
  if pi == 0:
    print(f"poisonjax: done: step {step}/{num_steps}, held-out clean loss "
          f"{held:.4f} nats (unigram entropy {entropy:.4f}), "
          f"{tok_s_train:,.0f} tok/s, MFU {100 * summary['mfu']:.2f}%, "
          f"poisons seen {summary['poisons_seen']}, wall {wall:.0f}s",
          flush=True)
  return summary


def _diverged(workdir, step, m, stream, ckpt, last_saved, pi, pc):
  """Writes nonfinite.json and the batch, then stops with one clear line."""
  batch = stream.batch(step, pi, pc)
  diag = {"step": step, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
          "lr": float(m["lr"]), "last_good_checkpoint": last_saved,
          "poison_tokens_in_batch": int(np.sum(batch["poison_mask"])),
          "batch_file": f"nonfinite_batch_{step}.npz"}
  if jax.process_index() == 0:
    np.savez(workdir / diag["batch_file"], **batch)
    _write_json(workdir / "nonfinite.json", diag)
  ckpt.close()
  raise TrainingDiverged(
      f"training diverged: loss {diag['loss']} / grad norm {diag['grad_norm']} "
      f"at step {step}; diagnostics in {workdir / 'nonfinite.json'}, last good "
      f"checkpoint: step {last_saved}; lower config.train.learning_rate or set "
      "--config.train.skip_nonfinite=True")


def main(flags) -> int:
  """`poisonjax train --config=FILE --workdir=DIR`."""
  from poisonjax import cli
  config = cli.load_config(flags)
  if not flags.workdir:
    raise UserError("--workdir is required; pass --workdir=runs/NAME")
  run(config, flags.workdir)
  return 0
