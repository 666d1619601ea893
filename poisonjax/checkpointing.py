"""Orbax checkpoints of the train state: async saves, newest-good restore.

A checkpoint is the whole train state (step, params, optimizer state) and
nothing else: the data stream is indexed by step, so the step is all the data
pipeline needs to resume. Restoring takes the abstract state with shardings
as the target, so every array comes back already laid out on the mesh.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp


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
    self.workdir = Path(workdir).absolute()
    self.directory = self.workdir / "checkpoints"
    t = config.train
    options = ocp.CheckpointManagerOptions(
        max_to_keep=t.keep_checkpoints,
        keep_period=t.keep_period or None,
        enable_async_checkpointing=True,
        create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore_newest(self, abstract_state):
    """(state, step) from the newest checkpoint that loads, or (None, 0).

    A checkpoint that fails to load is moved to WORKDIR/damaged_checkpoints
    (kept for diagnosis, out of orbax's way) with a one-line warning, and the
    previous one is tried.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.manager.restore(
            step, args=ocp.args.StandardRestore(abstract_state))
        return state, step
      except Exception as e:  # Any failure to read means: damaged.
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        print(f"poisonjax: warning: checkpoint step {step} is damaged "
              f"({type(e).__name__}: {reason}); falling back to the previous "
              "one", file=sys.stderr, flush=True)
        self._set_aside(step)
    return None, 0

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      dest = self.workdir / "damaged_checkpoints"
      dest.mkdir(exist_ok=True)
      src = self.directory / str(step)
      if src.exists():
        shutil.move(str(src), str(dest / f"{step}"))
    self.manager.reload()

  def reached_preemption(self, step: int) -> bool:
    """The multi-host preemption sync point (False on a single process)."""
    return jax.process_count() > 1 and self.manager.reached_preemption(step)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
