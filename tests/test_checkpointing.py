"""Checkpoints: set aside only verified damage; never move on doubt.

A small two-array state stands in for the train state (the train tests run
the same class on the real one).
"""

import json
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from poisonjax.training import checkpointing
from poisonjax import config as config_lib
from poisonjax import rundir
from poisonjax.errors import UserError


def state_at(step, width=4):
  return {"step": jnp.int32(step), "w": jnp.full((3, width), float(step))}


def abstract(width=4):
  sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sh),
          "w": jax.ShapeDtypeStruct((3, width), jnp.float32, sharding=sh)}


@pytest.fixture
def saved(tmp_path):
  """A workdir with checkpoints at steps 1 and 2, both durable."""
  ckpt = checkpointing.Checkpoints(tmp_path, config_lib.base_config())
  for step in (1, 2):
    ckpt.save(step, state_at(step))
  ckpt.close()
  return tmp_path


def restore(workdir, width=4):
  ckpt = checkpointing.Checkpoints(workdir, config_lib.base_config())
  try:
    state, step = ckpt.restore_newest(abstract(width))
  finally:
    ckpt.close()
  return state, step


def steps_on_disk(workdir):
  return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


@pytest.fixture
def no_backoff(monkeypatch):
  monkeypatch.setattr(checkpointing, "BACKOFF_S", 0.0)


def test_restores_newest_and_records_digests(saved):
  assert sorted(os.listdir(saved / rundir.CHECKPOINT_DIGESTS)) == ["1.json", "2.json"]
  state, step = restore(saved)
  assert step == 2 and float(state["w"][0, 0]) == 2.0


def test_empty_workdir_starts_fresh(tmp_path):
  assert restore(tmp_path) == (None, 0)


@pytest.mark.parametrize("damage", ["commit_record", "array_metadata", "digest"])
def test_verified_damage_is_set_aside_and_previous_restored(saved, capsys, damage):
  d = saved / "checkpoints" / "2"
  if damage == "commit_record":
    (d / "_CHECKPOINT_METADATA").unlink()
  elif damage == "array_metadata":
    (d / "default" / "_METADATA").write_text('{"tree_meta')
  else:  # A file cut short after the save was durable.
    manifest = d / "default" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[:-3])
  state, step = restore(saved)
  assert step == 1 and float(state["w"][0, 0]) == 1.0
  assert (saved / rundir.DAMAGED_CHECKPOINTS / "2").is_dir()
  assert steps_on_disk(saved) == [1]
  warnings = [l for l in capsys.readouterr().err.splitlines()
              if "checkpoint step 2 is damaged" in l]
  assert len(warnings) == 1


def test_shape_mismatch_moves_nothing(saved):
  with pytest.raises(UserError) as e:
    restore(saved, width=5)
  msg = str(e.value)
  assert "\n" not in msg and "does not fit" in msg and "w: ((3, 4)" in msg
  assert steps_on_disk(saved) == [1, 2]
  assert not (saved / rundir.DAMAGED_CHECKPOINTS).exists()


def flaky_restore(monkeypatch, failures):
  calls = []
  original = ocp.CheckpointManager.restore

  def restore(self, *args, **kwargs):
    calls.append(1)
    if len(calls) <= failures:
      raise OSError("Stale file handle")
    return original(self, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
  return calls


def test_transient_read_error_is_retried_and_moves_nothing(saved, monkeypatch, no_backoff):
  calls = flaky_restore(monkeypatch, failures=1)
  state, step = restore(saved)
  assert step == 2 and len(calls) == 2
  assert steps_on_disk(saved) == [1, 2]


def test_persistent_read_error_fails_in_one_line_and_moves_nothing(
    saved, monkeypatch, no_backoff):
  calls = flaky_restore(monkeypatch, failures=99)
  with pytest.raises(UserError) as e:
    restore(saved)
  msg = str(e.value)
  assert "\n" not in msg and "Stale file handle" in msg and "nothing was moved" in msg
  assert len(calls) == checkpointing.RETRIES
  assert steps_on_disk(saved) == [1, 2]
  assert not (saved / rundir.DAMAGED_CHECKPOINTS).exists()


def test_unexplained_failure_moves_nothing(saved, monkeypatch):
  def broken(self, *args, **kwargs):
    raise ValueError("something odd\nsecond line")
  monkeypatch.setattr(ocp.CheckpointManager, "restore", broken)
  with pytest.raises(UserError) as e:
    restore(saved)
  assert "\n" not in str(e.value) and "something odd" in str(e.value)
  assert steps_on_disk(saved) == [1, 2]


def test_digest_compare():
  saved = {"a": [3, "x"], "b": [10, None]}
  assert checkpointing.compare_digest(saved, dict(saved, c=[1, "y"])) == ""
  assert "a changed" in checkpointing.compare_digest(saved, {"a": [3, "z"], "b": [10, None]})
  assert "b missing" in checkpointing.compare_digest(saved, {"a": [3, "x"]})


def test_digest_is_written_only_once_durable(tmp_path):
  ckpt = checkpointing.Checkpoints(tmp_path, config_lib.base_config())
  ckpt.save(5, state_at(5))
  ckpt.close()  # Durable, and the background digest done.
  digest = json.loads((tmp_path / rundir.CHECKPOINT_DIGESTS / "5.json").read_text())
  assert "_CHECKPOINT_METADATA" in digest
  assert all(h.startswith("crc32c:") for _, h in digest.values())
  assert digest == checkpointing.digest(tmp_path / "checkpoints" / "5")


def test_unfinished_save_is_deleted_before_the_manager_lists_the_folder(
    saved, monkeypatch, capsys):
  """Orbax deletes it too, but in the background while it lists the folder
  (on gs:// such a listing can meet the only checkpoint half deleted)."""
  unfinished = saved / "checkpoints" / "3.orbax-checkpoint-tmp-17"
  unfinished.mkdir()
  (unfinished / "partial").write_text("x")
  seen_at_build = []
  real_manager = ocp.CheckpointManager

  def manager(directory, **kwargs):
    seen_at_build.append(sorted(os.listdir(directory)))
    return real_manager(directory, **kwargs)

  monkeypatch.setattr(ocp, "CheckpointManager", manager)
  state, step = restore(saved)
  assert seen_at_build == [["1", "2"]]
  assert step == 2 and not unfinished.exists()
  assert "3.orbax-checkpoint-tmp-17: a save cut short" in capsys.readouterr().err
