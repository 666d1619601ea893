"""Mesh resolution, the rule table applied to the train state, and the same
tiny run giving the same losses on three different meshes."""

import json

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from poisonjax.model import transformer as model_lib
from poisonjax.training import optim
from poisonjax import sharding
from poisonjax.training import train
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


@pytest.mark.slow
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


class FakeDevice:
  """Enough of a jax device for mesh_utils' layout on a non-TPU platform."""

  def __init__(self, id_, process_index, slice_index=0):
    self.id, self.process_index, self.slice_index = id_, process_index, slice_index
    self.platform = self.device_kind = "cpu"

  def __repr__(self):
    return f"D{self.id}(p{self.process_index}s{self.slice_index})"


def _owners(grid, attr):
  """{(data, fsdp) cell: the set of `attr` values of its devices}."""
  return {(a, b): {getattr(d, attr) for d in grid[a, b].ravel()}
          for a in range(grid.shape[0]) for b in range(grid.shape[1])}


def test_hybrid_layout_puts_hosts_and_slices_on_the_batch_axes():
  # 4 hosts x 2 devices, listed interleaved (a plain reshape would mix them).
  hosts = [FakeDevice(i, i % 4) for i in range(8)]
  grid = sharding.device_grid((4, 1, 2), hosts)
  assert _owners(grid, "process_index") == {(i, 0): {i} for i in range(4)}
  grid = sharding.device_grid((2, 2, 2), hosts)  # Hosts over data x fsdp.
  assert sorted(min(v) for v in _owners(grid, "process_index").values()) == [0, 1, 2, 3]
  assert all(len(v) == 1 for v in _owners(grid, "process_index").values())
  slices = [FakeDevice(i, i % 4, slice_index=i % 2) for i in range(8)]
  grid = sharding.device_grid((2, 2, 2), slices)  # 2 slices: data rows.
  assert _owners(grid, "slice_index") == {
      (0, 0): {0}, (0, 1): {0}, (1, 0): {1}, (1, 1): {1}}
  with pytest.raises(UserError, match=r"^config\.mesh.*batch axes") as e:
    sharding.device_grid((1, 1, 8), hosts)  # The tensor axis over hosts.
  assert "\n" not in str(e.value)


def test_mesh_spans_every_device_or_says_how():
  with pytest.raises(UserError, match=r"^config\.mesh.*uses 2 of the 8 devices") as e:
    sharding.make_mesh(mesh_cfg(2, 1, 1))
  assert "\n" not in str(e.value) and "-1" in str(e.value)
  mesh = sharding.make_mesh(mesh_cfg(2, -1, 2))
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert sharding.process_block(mesh, 8) == 0  # One process: all rows.
