"""Orbax checkpoints of the train state: async saves, careful restores.

A checkpoint is the whole train state (step, params, optimizer state) and
nothing else: the data stream is indexed by step, so the step is all the data
pipeline needs to resume. Restoring takes the abstract state with shardings
as the target, so every array comes back already laid out on the mesh.

Restoring never throws work away on a guess. A checkpoint is set aside (to
WORKDIR/damaged_checkpoints) only when it is verifiably incomplete or
corrupt: orbax's commit record or array metadata missing or unreadable, its
files no longer the ones this class saw saved (WORKDIR/checkpoint_digests
holds each file's size and crc32c, every byte, computed in the background
once the save is durable; on gs:// the objects' own crc32c, nothing
re-read), or a restored state holding a NaN/Inf (training never saves one:
a non-finite step stops or is skipped). Anything else stops with one line
and moves nothing: a state that does not fit the config (shapes from
orbax's metadata), I/O errors that persist after a few retries, or a
failure the files cannot explain. Readers (run_reader.py) apply the same
checks and move nothing.
"""

from __future__ import annotations

import base64
import concurrent.futures
import functools
import hashlib
import json
import os
import sys
import time

import google_crc32c
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils.epath import Path
from jax.experimental import multihost_utils

from poisonjax import distributed, files, rundir
from poisonjax.errors import UserError

RETRIES = 3  # Tries of a read that fails with OSError...
BACKOFF_S = 1.0  # ...waiting 1 s, 2 s, ... in between.
_BLOCK = 16 << 20  # Bytes per read when computing a crc32c.

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
    self.directory = self.workdir / rundir.CHECKPOINTS
    distributed.primary_first(
        lambda: _remove_unfinished_saves(self.directory), "the checkpoint folder")
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
    self._sealer = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix="checkpoint-digest")
    self._sealing: list[concurrent.futures.Future] = []

  # -- Saving ----------------------------------------------------------------

  def save(self, step: int, state) -> None:
    """Starts an async save of `state` at `step` (once per step)."""
    if step in self.manager.all_steps():
      return
    self.wait()  # Orbax would wait for the previous save anyway.
    if jax.process_index() == 0:  # A digest left by an earlier save of it.
      (self.workdir / rundir.CHECKPOINT_DIGESTS / f"{step}.json").unlink(missing_ok=True)
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._unsealed.add(step)

  def wait(self) -> None:
    """Blocks until every started save is durable; their digests are then
    computed in the background (close() waits for them)."""
    self.manager.wait_until_finished()
    if self._unsealed and jax.process_index() == 0:
      kept = set(self.manager.all_steps())
      self._sealing.append(self._sealer.submit(
          _seal, self.workdir, self.directory, sorted(self._unsealed & kept), kept))
    self._unsealed.clear()

  def close(self) -> None:
    self.wait()
    self.manager.close()
    for future in self._sealing:
      future.result()
    self._sealer.shutdown()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """The multi-host preemption sync point (False on a single process)."""
    return jax.process_count() > 1 and self.manager.reached_preemption(step)

  # -- Restoring -------------------------------------------------------------

  def step_dir(self, step: int) -> Path:
    return self.directory / str(step)

  def restore_newest(self, abstract_state):
    """(state, step) from the newest sound checkpoint, or (None, 0).

    A restored state holding a NaN/Inf is damage too: set aside, and the
    previous checkpoint tried.
    """
    while True:
      step = self._agreed_step(abstract_state)
      if step is None:
        return None, 0
      state = self._restore(step, abstract_state)
      bad = nonfinite_leaves(state)
      if not bad:
        return state, step
      del state
      if jax.process_index() == 0:  # The others wait in _agreed_step.
        self._set_aside_with_warning(step, describe_nonfinite(bad))

  def _restore(self, step: int, abstract_state):
    try:
      return _retry(lambda: self.manager.restore(
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

  def _agreed_step(self, abstract_state) -> int | None:
    """Process 0 picks the step (setting damaged ones aside); all agree."""
    if jax.process_count() == 1:
      return self.pick_step(abstract_state)
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
      self._set_aside_with_warning(step, reason)
    return None

  def damage(self, step: int) -> str | None:
    """Why checkpoint `step` is verifiably incomplete or corrupt, or None."""
    return step_damage(self.workdir, step)

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

  def _set_aside_with_warning(self, step: int, reason: str) -> None:
    dest = self._set_aside(step)
    print(f"poisonjax: warning: checkpoint step {step} is damaged ({reason});"
          f" moved to {dest}; falling back to the previous one",
          file=sys.stderr, flush=True)

  def _set_aside(self, step: int) -> Path:
    dest = self.workdir / rundir.DAMAGED_CHECKPOINTS / str(step)
    n = 1
    while dest.exists():
      dest, n = self.workdir / rundir.DAMAGED_CHECKPOINTS / f"{step}.{n}", n + 1
    dest.parent.mkdir(exist_ok=True)
    files.move_tree(self.step_dir(step), dest)
    (self.workdir / rundir.CHECKPOINT_DIGESTS / f"{step}.json").unlink(missing_ok=True)
    self.manager.reload()
    return dest


def _remove_unfinished_saves(directory: Path) -> None:
  """Deletes saves cut short (no commit record) before any process lists the
  folder. Orbax would do it too, but in the background while every process
  lists it: on gs://, where a folder is only its objects' common prefix, a
  listing that meets the only checkpoint half deleted fails with
  FileNotFoundError (seen after a preemption in the launch rehearsal)."""
  if not distributed.is_primary() or not directory.exists():
    return
  for unfinished in ocp.utils.tmp_checkpoints(directory):
    path = unfinished.get()
    print(f"poisonjax: deleting {path}: a save cut short (never committed)",
          file=sys.stderr, flush=True)
    path.rmtree(missing_ok=True)


def _seal(workdir: Path, directory: Path, steps: list[int], kept: set) -> None:
  """Writes the digests of `steps`; drops those of steps no longer kept.

  Runs in the background: a step pruned (max_to_keep) while it is read
  gets no digest; one that cannot be read is said in a warning line (its
  restore then checks its structure only).
  """
  digests = workdir / rundir.CHECKPOINT_DIGESTS
  for step in steps:
    try:
      files.write_json(digests / f"{step}.json", digest(directory / str(step)))
    except FileNotFoundError:
      continue
    except Exception as e:  # pylint: disable=broad-except
      print(f"poisonjax: warning: no digest recorded for checkpoint step "
            f"{step} ({type(e).__name__}: {_first_line(e)}); a restore checks "
            "its structure only", file=sys.stderr, flush=True)
  for old in digests.glob("*.json") if digests.exists() else ():
    if old.stem.isdigit() and int(old.stem) not in kept:
      old.unlink(missing_ok=True)  # Deleted by max_to_keep.


def step_damage(workdir, step: int) -> str | None:
  """Why WORKDIR/checkpoints/STEP is verifiably incomplete or corrupt, or None.

  Orbax's commit record and array metadata must be readable, and every
  file must still match the digest recorded once the save was durable.
  """
  workdir = files.as_path(workdir)
  d = workdir / rundir.CHECKPOINTS / str(step)
  record = _json_or_none(d / "_CHECKPOINT_METADATA")
  if not isinstance(record, dict) or not record.get("commit_timestamp_nsecs"):
    return "no readable orbax commit record (_CHECKPOINT_METADATA)"
  if _json_or_none(d / rundir.CHECKPOINT_ITEM / "_METADATA") is None:
    return "no readable array metadata (default/_METADATA)"
  saved = workdir / rundir.CHECKPOINT_DIGESTS / f"{step}.json"
  if saved.exists():
    want = _json_or_none(saved)
    if not isinstance(want, dict):
      return None  # A digest cut short is no evidence against the step.
    differs = compare_digest(want, digest(d, like=want))
    if differs:
      return f"files differ from the saved ones: {differs}"
  return None


def nonfinite_leaves(tree) -> list[str]:
  """The names ('params/embed/embedding') of float arrays holding a NaN/Inf.

  One jitted reduction over the (possibly sharded, multi-process) arrays
  into a replicated vector: every process reads the same answer locally.
  """
  named = [(_leaf_name(path), leaf)
           for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
           if jnp.issubdtype(leaf.dtype, jnp.inexact)]
  if not named:
    return []
  mesh = getattr(getattr(named[0][1], "sharding", None), "mesh", None)
  replicated = (None if mesh is None else
                jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  finite = jax.jit(_all_finite, out_shardings=replicated)([l for _, l in named])
  ok = np.asarray(finite.addressable_data(0))
  return [name for (name, _), good in zip(named, ok) if not good]


def _all_finite(leaves):
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def describe_nonfinite(names: list[str]) -> str:
  """The reason a damage warning gives for non-finite arrays."""
  more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
  return f"non-finite values (NaN/Inf) in {', '.join(names[:3])}{more}"


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


def digest(step_dir, like: dict | None = None) -> dict[str, list]:
  """{relative path: [size, "crc32c:<8 hex>"]} of every file of a step.

  Local files are read whole; objects on gs:// give the crc32c their store
  keeps (one listing, nothing re-read). With `like` (a digest saved by an
  older version: [size, sha256 of a small file or None]) each file is
  hashed as `like` records it, so old digests still verify.
  """
  step_dir = files.as_path(step_dir)
  kinds = {name: entry[1] for name, entry in (like or {}).items()}
  if not files.is_local(step_dir) and all(
      str(k).startswith("crc32c:") for k in kinds.values()):
    return _object_digest(step_dir)
  out = {}
  for path in files.list_files(step_dir):
    name = str(path.relative_to(step_dir))
    kind = kinds.get(name) if like else "crc32c:"  # Extra files: sized only.
    out[name] = [path.stat().length, _file_hash(path, kind)]
  return out


def _file_hash(path: Path, kind: str | None) -> str | None:
  """The hash `kind` names: crc32c ("crc32c:..."), sha256 (hex), None."""
  if kind is None:
    return None
  if not str(kind).startswith("crc32c:"):
    return hashlib.sha256(path.read_bytes()).hexdigest()
  crc = 0
  with path.open("rb") as f:
    for block in iter(lambda: f.read(_BLOCK), b""):
      crc = google_crc32c.extend(crc, block)
  return f"crc32c:{crc:08x}"


@functools.lru_cache(maxsize=4)
def _storage_client(emulator_host: str | None):
  """One client per endpoint: the client reads STORAGE_EMULATOR_HOST once,
  when made, so a client made for another endpoint is never reused."""
  del emulator_host  # The cache key only.
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  return storage.Client()


def _object_digest(step_dir: Path) -> dict[str, list]:
  """A step on gs://: each object's size and stored crc32c, from one listing."""
  client = _storage_client(os.environ.get("STORAGE_EMULATOR_HOST"))
  bucket, _, prefix = str(step_dir).split("://", 1)[1].partition("/")
  prefix = prefix.rstrip("/") + "/"
  out = {}
  for blob in client.list_blobs(bucket, prefix=prefix):
    if blob.name.endswith("/"):  # A folder placeholder.
      continue
    crc = int.from_bytes(base64.b64decode(blob.crc32c), "big")
    out[blob.name[len(prefix):]] = [int(blob.size), f"crc32c:{crc:08x}"]
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
      was, size = saved[name][0], now[name][0]
      diffs.append(f"{name} changed (size {was} -> {size})" if was != size
                   else f"{name} changed (same size {size}, other content)")
  return ", ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")


def _leaf_name(path) -> str:
  """'params/embed/embedding' for a tree path."""
  def name(key) -> str:
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return "/".join(name(k) for k in path)


def _shapes(tree) -> dict[str, tuple]:
  """{'a/b/0/c': (shape, dtype name)} for the array leaves of `tree`."""
  return {_leaf_name(path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
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
