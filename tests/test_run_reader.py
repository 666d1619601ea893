"""run_reader.py: a run directory read back as training writes it, and the
one-line errors of a wrong --workdir/--step or a mismatched scorer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisonjax.training import checkpointing
from poisonjax import config as config_lib
from poisonjax import files
from poisonjax.model import transformer as model_lib
from poisonjax.evaluation import run_reader
from poisonjax import rundir
from poisonjax.errors import UserError


def _one_line_error(fn, *args, **kwargs) -> str:
  with pytest.raises(UserError) as e:
    fn(*args, **kwargs)
  assert "\n" not in str(e.value)
  return str(e.value)


def _config(d_model=16):
  c = config_lib.base_config()
  c.model.d_model, c.model.num_heads, c.model.num_layers, c.model.ffn_dim = d_model, 2, 1, 32
  c.data.seq_len = 16
  return c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run directory as training leaves it: config.json and checkpoints
  at steps 2 and 5 of a vocab-40 model (the state: step, params, opt_state)."""
  wd = tmp_path_factory.mktemp("run")
  config = _config()
  files.write_json(wd / "config.json", config.to_dict())
  cfg = model_lib.ModelConfig.from_config(config, 40)
  ckpt = checkpointing.Checkpoints(wd, config)
  init = jax.jit(lambda key: nn.unbox(model_lib.Transformer(cfg).init(
      key, jnp.zeros((1, 4), jnp.int32))["params"]))
  saved = {}
  for step in (2, 5):
    params = init(jax.random.key(step))
    state = {"step": jnp.array(step, jnp.int32), "params": params,
             "opt_state": {"mu": jax.tree.map(jnp.zeros_like, params)}}
    ckpt.save(step, state)
    saved[step] = params
  ckpt.close()
  return wd, cfg, saved


def test_checkpoint_steps_and_pick_step(run_dir, tmp_path):
  wd, _, _ = run_dir
  (wd / "checkpoints" / "7.orbax-checkpoint-tmp-123").mkdir()  # Unfinished save.
  (wd / "checkpoints" / "9").write_text("")  # Not a directory.
  assert rundir.checkpoint_steps(str(wd)) == [2, 5]
  assert run_reader.pick_step(str(wd), None) == 5
  assert run_reader.pick_step(str(wd), 2) == 2
  msg = _one_line_error(run_reader.pick_step, str(wd), 3)
  assert msg.startswith("--step=3") and "available: 2, 5" in msg
  msg = _one_line_error(run_reader.pick_step, str(tmp_path), None)
  assert msg.startswith(f"--workdir={tmp_path}") and "no checkpoint" in msg


def test_read_run_config(run_dir, tmp_path):
  wd, _, _ = run_dir
  assert run_reader.read_run_config(str(wd)).model.d_model == 16
  assert "no config.json" in _one_line_error(run_reader.read_run_config, str(tmp_path))
  (tmp_path / "config.json").write_text('{"model": ')  # Cut short.
  assert "unreadable" in _one_line_error(run_reader.read_run_config, str(tmp_path))


def test_restore_params_reads_the_saved_params(run_dir):
  wd, cfg, saved = run_dir
  for step, want in ((None, saved[5]), (2, saved[2])):
    got, got_step = run_reader.restore_params(str(wd), cfg, step)
    assert got_step == (step or 5)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_restore_params_with_another_shape_is_one_line(run_dir):
  wd, _, _ = run_dir
  wider = model_lib.ModelConfig.from_config(_config(d_model=32), 40)
  msg = _one_line_error(run_reader.restore_params, str(wd), wider)
  assert "checkpoint step 5 does not load" in msg


def test_load_scorer_reads_vocabulary_from_the_checkpoint(run_dir):
  wd, cfg, saved = run_dir
  assert run_reader.checkpoint_vocab_size(str(wd), 5) == 40
  ref_cfg, params = run_reader.load_scorer(str(wd), 40)
  assert ref_cfg == cfg
  jax.tree.map(np.testing.assert_array_equal, params, saved[5])
  msg = _one_line_error(run_reader.load_scorer, str(wd), 41)
  assert "config.eval.scorer_workdir" in msg and "(40)" in msg and "(41)" in msg
