"""Mesh resolution, the rule table applied to the train state, and the same
tiny run giving the same losses on three different meshes."""

import json

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from poisonjax import model as model_lib
from poisonjax import optim
from poisonjax import sharding
from poisonjax import train
from poisonjax.errors import UserError
from train_common import tiny_config, train_cache  # noqa: F401


def mesh_cfg(data=-1, fsdp=1, tensor=1):
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def test_mesh_shape_fills_one_axis_and_rejects_bad_sizes():
  assert sharding.mesh_shape(mesh_cfg(), 8) == {"data": 8, "fsdp": 1, "tensor": 1}
  assert sharding.mesh_shape(mesh_cfg(2, -1, 2), 8) == {"data": 2, "fsdp": 2, "tensor": 2}
  for bad in (mesh_cfg(16), mesh_cfg(-1, -1), mesh_cfg(-1, 3), mesh_cfg(0)):
    with pytest.raises(UserError, match=r"^config\.mesh"):
      sharding.mesh_shape(bad, 8)


def test_state_shardings_follow_the_rule_table(tmp_path):
  config = tiny_config(tmp_path, **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  mcfg = model_lib.ModelConfig.from_config(config, 512)
  mesh = sharding.make_mesh(config.mesh)
  tx, _ = optim.make_optimizer(config, 100)
  _, _, abstract, state_sh = train.build_state_fns(config, mcfg, mesh, tx)
  params = state_sh["params"]
  assert params["embed"]["embedding"].spec == P("tensor", "fsdp")
  # Scanned layers: a leading, replicated `layers` axis.
  assert params["layers"]["attn"]["query"]["kernel"].spec == P(None, "fsdp", "tensor", None)
  assert params["layers"]["mlp"]["down"]["kernel"].spec == P(None, "tensor", "fsdp")
  # Adam moments are laid out like the params they track; counters replicated.
  mu = state_sh["opt_state"][1][0].mu
  assert mu["layers"]["mlp"]["down"]["kernel"].spec == P(None, "tensor", "fsdp")
  assert state_sh["step"].spec == P()
  assert abstract["params"]["head"]["kernel"].shape == (32, 512)


def test_same_losses_on_three_meshes(tmp_path, train_cache):
  losses = {}
  for name, mesh in {"data8": (8, 1, 1), "fsdp8": (1, 8, 1), "2x2x2": (2, 2, 2)}.items():
    config = tiny_config(train_cache, **{
        "mesh.data": mesh[0], "mesh.fsdp": mesh[1], "mesh.tensor": mesh[2],
        "train.max_steps": 20, "train.log_every": 1, "train.ckpt_every": 1000})
    wd = tmp_path / name
    train.run(config, wd)
    rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 21))
    losses[name] = np.array([r["loss"] for r in rows])
  ref = losses.pop("data8")
  assert ref[-1] < ref[0]  # It trains.
  for name, l in losses.items():
    np.testing.assert_allclose(l, ref, atol=1e-4, rtol=0, err_msg=name)
