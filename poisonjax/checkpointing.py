"""Orbax checkpoints of the train state: async saves, careful restores.

A checkpoint is the whole train state (step, params, optimizer state) and
nothing else: the data stream is indexed by step, so the step is all the data
pipeline needs to resume. Restoring takes the abstract state with shardings
as the target, so every array comes back already laid out on the mesh.

Restoring never throws work away on a guess. A checkpoint is set aside (to
WORKDIR/damaged_checkpoints) only when it is verifiably incomplete or
corrupt: orbax's commit record or array metadata missing or unreadable, or
its files no longer the ones this class saw saved (WORKDIR/checkpoint_digests
holds each file's size, and a hash of the small ones, taken once the save
was durable). Anything else stops with one line and moves nothing: a state
that does not fit the config (shapes from orbax's metadata), I/O errors that
persist after a few retries, or a failure the files cannot explain.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils.epath import Path

from poisonjax import files
from poisonjax.errors import UserError

DIGEST_DIR = "checkpoint_digests"
DAMAGED_DIR = "damaged_checkpoints"
RETRIES = 3  # Tries of a read that fails with OSError...
BACKOFF_S = 1.0  # ...waiting 1 s, 2 s, ... in between.
_HASHED_MAX_BYTES = 1 << 20  # Metadata/manifests are hashed, data sized.

_CPU_HANDLER_SET = False


def _plain_array_saves_on_cpu() -> None:
  """On CPU, saves each replicated array once instead of replica-parallel.

  Replica-parallel saving slices every replicated array per device and
  compiles one slice op per (shape, device): about 20 s of compiles on the
  first save with 8 fake CPU devices, for no gain on one host.
  """
  global _CPU_HANDLER_SET
  if _CPU_HANDLER_SET or jax.default_backend() != "cpu":
    return
  from absl import logging
  level = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # Quiet the "overriding" warning.
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
        override=True)
  finally:
    logging.set_verbosity(level)
  _CPU_HANDLER_SET = True


class Checkpoints:
  """The run's CheckpointManager under WORKDIR/checkpoints."""

  def __init__(self, workdir, config):
    _plain_array_saves_on_cpu()
    self.workdir = files.absolute(workdir)  # gs:// goes to orbax as it is.
    self.directory = self.workdir / "checkpoints"
    t = config.train
    options = ocp.CheckpointManagerOptions(
        max_to_keep=t.keep_checkpoints,
        keep_period=t.keep_period or None,
        enable_async_checkpointing=True,
        cleanup_tmp_directories=True,  # Saves cut short: never finalized.
        create=True)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers=ocp.StandardCheckpointHandler())
    self._unsealed: set[int] = set()  # Saved this session, no digest yet.

  # -- Saving ----------------------------------------------------------------

  def save(self, step: int, state) -> None:
    """Starts an async save of `state` at `step` (once per step)."""
    if step in self.manager.all_steps():
      return
    self.wait()  # Orbax would wait for the previous save anyway.
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._unsealed.add(step)

  def wait(self) -> None:
    """Blocks until every started save is durable, then records digests."""
    self.manager.wait_until_finished()
    self._seal()

  def close(self) -> None:
    self.wait()
    self.manager.close()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """The multi-host preemption sync point (False on a single process)."""
    return jax.process_count() > 1 and self.manager.reached_preemption(step)

  def _seal(self) -> None:
    if jax.process_index() == 0:
      digests = self.workdir / DIGEST_DIR
      kept = set(self.manager.all_steps())
      for step in sorted(self._unsealed & kept):
        files.write_json(digests / f"{step}.json", digest(self.step_dir(step)))
      for old in digests.glob("*.json") if digests.exists() else ():
        if old.stem.isdigit() and int(old.stem) not in kept:
          old.unlink(missing_ok=True)  # Deleted by max_to_keep.
    self._unsealed.clear()

  # -- Restoring -------------------------------------------------------------

  def step_dir(self, step: int) -> Path:
    return self.directory / str(step)

  def restore_newest(self, abstract_state):
    """(state, step) from the newest sound checkpoint, or (None, 0)."""
    step = self._agreed_step(abstract_state)
    if step is None:
      return None, 0
    try:
      state = _retry(lambda: self.manager.restore(
          step, args=ocp.args.StandardRestore(abstract_state)),
          f"checkpoint step {step}")
    except UserError:
      raise
    except Exception as e:  # Files complete, shapes fit: not ours to judge.
      raise UserError(
          f"checkpoint step {step} in {self.directory} failed to restore "
          f"({type(e).__name__}: {_first_line(e)}) though its files look "
          "complete; nothing was moved; if it is damaged, move it out of "
          "checkpoints/ and rerun") from e
    return state, step

  def _agreed_step(self, abstract_state) -> int | None:
    """Process 0 picks the step (setting damaged ones aside); all agree."""
    if jax.process_count() == 1:
      return self.pick_step(abstract_state)
    from jax.experimental import multihost_utils
    error, code = None, -1
    if jax.process_index() == 0:
      try:
        step = self.pick_step(abstract_state)
        code = -1 if step is None else step
      except UserError as e:
        error, code = e, -2
    code = int(multihost_utils.broadcast_one_to_all(np.int32(code)))
    if error is not None:
      raise error
    if code == -2:
      raise UserError("process 0 refused to restore a checkpoint (its log "
                      "says why); fix that and rerun")
    self.manager.reload()
    return None if code == -1 else code

  def pick_step(self, abstract_state) -> int | None:
    """The newest step that is complete and fits `abstract_state`.

    Steps verifiably damaged are set aside with a one-line warning; a step
    that does not fit raises UserError (nothing moved).
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      reason = _retry(lambda: self.damage(step), f"checkpoint step {step}")
      if reason is None:
        _retry(lambda: self.check_fits(step, abstract_state),
               f"checkpoint step {step}")
        return step
      dest = self._set_aside(step)
      print(f"poisonjax: warning: checkpoint step {step} is damaged ({reason});"
            f" moved to {dest}; falling back to the previous one",
            file=sys.stderr, flush=True)
    return None

  def damage(self, step: int) -> str | None:
    """Why checkpoint `step` is verifiably incomplete or corrupt, or None."""
    d = self.step_dir(step)
    record = _json_or_none(d / "_CHECKPOINT_METADATA")
    if not record or not record.get("commit_timestamp_nsecs"):
      return "no readable orbax commit record (_CHECKPOINT_METADATA)"
    if _json_or_none(d / "default" / "_METADATA") is None:
      return "no readable array metadata (default/_METADATA)"
    saved = self.workdir / DIGEST_DIR / f"{step}.json"
    if saved.exists():
      differs = compare_digest(files.read_json(saved), digest(d))
      if differs:
        return f"files differ from the saved ones: {differs}"
    return None

  def check_fits(self, step: int, abstract_state) -> None:
    """UserError (one line) if the saved arrays are not `abstract_state`'s."""
    saved = _shapes(self.manager.item_metadata(step))
    want = _shapes(abstract_state)
    diffs = [f"{k}: {saved.get(k, 'absent')} saved, {want.get(k, 'absent')} now"
             for k in sorted(set(saved) | set(want)) if saved.get(k) != want.get(k)]
    if diffs:
      more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
      raise UserError(
          f"checkpoint step {step} in {self.directory} does not fit this "
          f"config ({'; '.join(diffs[:3])}{more}); nothing was moved; resume "
          "with the config the run was trained with, or use a new --workdir")

  def _set_aside(self, step: int) -> Path:
    dest = self.workdir / DAMAGED_DIR / str(step)
    n = 1
    while dest.exists():
      dest, n = self.workdir / DAMAGED_DIR / f"{step}.{n}", n + 1
    dest.parent.mkdir(exist_ok=True)
    files.move_tree(self.step_dir(step), dest)
    (self.workdir / DIGEST_DIR / f"{step}.json").unlink(missing_ok=True)
    self.manager.reload()
    return dest


def _retry(fn, what: str):
  """fn(), retried on OSError with backoff; then one-line UserError."""
  for attempt in range(RETRIES):
    try:
      return fn()
    except OSError as e:
      if attempt == RETRIES - 1:
        raise UserError(
            f"{what}: reading failed {RETRIES} times ({type(e).__name__}: "
            f"{_first_line(e)}); nothing was moved; check the filesystem and "
            "rerun") from None
      time.sleep(BACKOFF_S * 2 ** attempt)
  raise AssertionError("unreachable")


def digest(step_dir: Path) -> dict[str, list]:
  """{relative path: [size, sha256 of a small file or None]} of a step."""
  out = {}
  step_dir = files.as_path(step_dir)
  for path in files.list_files(step_dir):
    size = path.stat().length
    sha = (hashlib.sha256(path.read_bytes()).hexdigest()
           if size <= _HASHED_MAX_BYTES else None)
    out[str(path.relative_to(step_dir))] = [size, sha]
  return out


def compare_digest(saved: dict, now: dict) -> str:
  """'' if `now` matches `saved`; else the first few differences."""
  diffs = []
  for name in sorted(set(saved) | set(now)):
    if name not in now:
      diffs.append(f"{name} missing")
    elif name not in saved:
      continue  # Extra files (e.g. written by a newer orbax): harmless.
    elif list(saved[name]) != list(now[name]):
      diffs.append(f"{name} changed (size {saved[name][0]} -> {now[name][0]})")
  return ", ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")


def _shapes(tree) -> dict[str, tuple]:
  """{'a/b/0/c': (shape, dtype name)} for the array leaves of `tree`."""
  def name(key) -> str:
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return {"/".join(name(k) for k in path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _json_or_none(path: Path):
  try:
    return json.loads(path.read_bytes())
  except FileNotFoundError:
    return None
  except (ValueError, UnicodeDecodeError):  # Includes JSONDecodeError.
    return None


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:160] if text else type(e).__name__
