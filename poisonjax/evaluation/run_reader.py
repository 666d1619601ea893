"""Reading a finished (or running) run's directory: its config and checkpoints.

For readers only (`poisonjax eval`, the demo's report, a reference scorer):
training's own save/restore/fallback lives in checkpointing.py. Every
problem a user can fix is one UserError line naming the flag or field.

Layout read here: WORKDIR/config.json (the run's config) and
WORKDIR/checkpoints/<step>/default (orbax's PyTree of the train state
{step, params, opt_state}); only the params are read.

A checkpoint is read only if training would restore it (the checks of
checkpointing.step_damage, and finite params); a reader moves nothing: the
newest sound one is taken, a damaged one skipped with a warning line.
"""

from __future__ import annotations

import contextlib
import sys

import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from poisonjax.training import checkpointing
from poisonjax import files
from poisonjax.model import transformer as model_lib
from poisonjax.training import run_history
from poisonjax import rundir
from poisonjax import sharding
from poisonjax.data import vocabulary
from poisonjax.errors import UserError

_PICK_TRIES = 5  # Newest checkpoints pruned under a reader before it gives up.


class _Damaged(Exception):
  """A checkpoint training would set aside (the message says why)."""


class _Vanished(Exception):
  """A checkpoint deleted (pruned by a running trainer) while being read."""


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run wrote to WORKDIR/config.json."""
  files.check_reachable(workdir, "--workdir")
  path = files.as_path(workdir) / rundir.CONFIG
  if not path.is_file():
    raise UserError(f"--workdir={workdir}: no config.json there; pass the "
                    "workdir of a run started with `poisonjax train`")
  return ml_collections.ConfigDict(run_history.read_config(path))


def pick_step(workdir: str, step: int | None) -> int:
  """`step` if it has a checkpoint, the newest one if `step` is None."""
  steps = rundir.checkpoint_steps(workdir)
  if not steps:
    raise UserError(f"--workdir={workdir}: no checkpoint in "
                    f"{files.as_path(workdir) / rundir.CHECKPOINTS}; train first "
                    "(poisonjax train) or pass a run's workdir")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise UserError(f"--step={step}: no checkpoint at that step in {workdir}; "
                    f"available: {', '.join(map(str, steps))}")
  return step


def _item_path(workdir: str, step: int):
  # Orbax wants absolute local paths; gs:// ones go to it as they are.
  return files.absolute(workdir) / rundir.CHECKPOINTS / str(step) / rundir.CHECKPOINT_ITEM


def _load_failure(workdir: str, step: int, e: Exception) -> UserError:
  reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
  return UserError(f"--workdir={workdir}: checkpoint step {step} does not "
                   f"load as this run's params ({type(e).__name__}: {reason}); "
                   "pick another --step or check config.json")


def restore_params(workdir: str, model_cfg: model_lib.ModelConfig,
                   step: int | None = None, mesh=None):
  """(params, step) from a run's checkpoint (`step`, or the newest sound one).

  Reads only the params of the saved train state (orbax partial restore),
  laid out on `mesh` by the logical-axis rules (default: this host's mesh
  with all devices on the batch axes). Without `step` the checkpoint is
  picked and read together: one pruned by a running trainer meanwhile is
  replaced by the newest again, a damaged one skipped (warning line).
  """
  mesh = mesh if mesh is not None else sharding.data_parallel_mesh()
  params, _ = sharding.abstract_with_shardings(
      model_lib.abstract_params(model_cfg), mesh)
  target = {"params": params}
  if step is not None:
    pick_step(workdir, step)
    try:
      return _read_sound(workdir, step, target), step
    except _Vanished:
      raise UserError(f"--step={step}: checkpoint step {step} in {workdir} "
                      "was deleted while it was read (pruned by a running "
                      "trainer?); pick another --step") from None
    except _Damaged as e:
      raise UserError(f"--workdir={workdir}: checkpoint step {step} is "
                      f"damaged ({e}); pick another --step") from None
  return _read_newest(workdir, target)


def _read_newest(workdir: str, target):
  """(params, step) of the newest sound checkpoint (see restore_params)."""
  skipped, vanished = [], 0
  while True:
    steps = [s for s in rundir.checkpoint_steps(workdir) if s not in skipped]
    if not steps:
      pick_step(workdir, None)  # None at all: its one-line error.
      raise UserError(f"--workdir={workdir}: no sound checkpoint (steps "
                      f"{', '.join(map(str, skipped))} are damaged); train "
                      "again (poisonjax train resumes from the last good one)")
    step = steps[-1]
    try:
      return _read_sound(workdir, step, target), step
    except _Vanished:
      vanished += 1
      if vanished >= _PICK_TRIES:
        raise UserError(f"--workdir={workdir}: its newest checkpoint was "
                        f"deleted while read {vanished} times in a row; retry "
                        "once the trainer has saved") from None
    except _Damaged as e:
      skipped.append(step)
      print(f"poisonjax: warning: checkpoint step {step} in {workdir} is "
            f"damaged ({e}); skipped (left in place)", file=sys.stderr,
            flush=True)


def _read_sound(workdir: str, step: int, target):
  """The params of checkpoint `step`; _Damaged/_Vanished say why not."""
  step_dir = files.as_path(workdir) / rundir.CHECKPOINTS / str(step)
  try:
    reason = checkpointing.step_damage(workdir, step)
  except FileNotFoundError:
    reason = None
  if not step_dir.exists():
    raise _Vanished()
  if reason:
    raise _Damaged(reason)
  args = ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True)
  try:
    with _quiet_orbax(), ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
      params = ckptr.restore(_item_path(workdir, step), args=args)["params"]
  except Exception as e:  # Orbax raises many types for a damaged/alien dir.
    if not step_dir.exists():
      raise _Vanished() from None
    raise _load_failure(workdir, step, e) from None
  bad = checkpointing.nonfinite_leaves({"params": params})
  if bad:
    raise _Damaged(checkpointing.describe_nonfinite(bad))
  return params


@contextlib.contextmanager
def _quiet_orbax():
  """A failed read is said in one line: orbax's logged traceback is muted,
  and so are the tracebacks its abandoned reads raise later, when their
  callbacks find orbax's event loop closed (sys.unraisablehook)."""
  level = logging.get_verbosity()
  logging.set_verbosity(logging.FATAL)
  try:
    yield
  except Exception:
    _mute_closed_loop_callbacks()
    raise
  finally:
    logging.set_verbosity(level)


def _mute_closed_loop_callbacks() -> None:
  """Drops "Event loop is closed" from late callbacks; others pass on."""
  previous = sys.unraisablehook
  if getattr(previous, "poisonjax_mute", False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
      previous(unraisable)

  hook.poisonjax_mute = True
  sys.unraisablehook = hook


def checkpoint_vocab_size(workdir: str, step: int) -> int:
  """Rows of the embedding in a checkpoint (its metadata; no array is read)."""
  try:
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
      meta = ckptr.metadata(_item_path(workdir, step)).item_metadata
    return int(meta["params"]["embed"]["embedding"].shape[0])
  except Exception as e:  # Missing/alien metadata: same message as a restore.
    raise _load_failure(workdir, step, e) from None


def load_scorer(workdir: str, vocab_size: int, mesh=None, *, vocab=None):
  """(model_cfg, params) of a reference model: its newest checkpoint.

  Its vocabulary size is read from the checkpoint itself (config.json may
  leave it to the tokenizer) and must equal this run's. With `vocab` (this
  run's Vocabulary or .model path) its tokenizer file must also be the same
  (vocabulary.fingerprint): two tokenizers of one size still differ.
  """
  ref_config = read_run_config(workdir)
  if vocab is not None:
    _check_same_tokenizer(workdir, ref_config, vocab)
  step = pick_step(workdir, None)
  ref_vocab = checkpoint_vocab_size(workdir, step)
  if ref_vocab != vocab_size:
    raise UserError(f"config.eval.scorer_workdir={workdir!r}: its vocabulary "
                    f"({ref_vocab}) differs from this run's ({vocab_size}); "
                    "use a reference with the same vocabulary")
  ref_cfg = model_lib.ModelConfig.from_config(ref_config, ref_vocab)
  params, _ = restore_params(workdir, ref_cfg, step, mesh=mesh)
  return ref_cfg, params


def _check_same_tokenizer(workdir: str, ref_config, vocab) -> None:

  field = f"config.eval.scorer_workdir={workdir!r}"
  try:
    ref = vocabulary.fingerprint(ref_config)
  except UserError as e:
    raise UserError(f"{field}: its tokenizer cannot be found ({e})") from None
  if ref != vocabulary.fingerprint(vocab):
    raise UserError(f"{field}: its tokenizer (sha256 {ref[:12]}) differs from "
                    f"this run's (sha256 {vocabulary.fingerprint(vocab)[:12]}); "
                    "use a reference trained with the same vocabulary")
