"""The device mesh and THE table of logical-axis -> mesh-axis rules.

Parameters and activations are annotated with logical names in model.py;
this table is the only place that says how they map onto the mesh axes
`data`, `fsdp` and `tensor`. Shardings of whole pytrees are derived from
abstract values (`jax.eval_shape`), so nothing is allocated to find them.
"""

from __future__ import annotations

import contextlib
import math

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from poisonjax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or axes, or None: replicated).
LOGICAL_AXIS_RULES = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    ("layers", None),
    # Activations.
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)

BATCH_SPEC = P(("data", "fsdp"))  # The batch dimension of inputs.


def mesh_shape(mesh_cfg, num_devices: int) -> dict[str, int]:
  """Resolves the config's axis sizes (one may be -1) against the devices."""
  sizes = {a: int(mesh_cfg[a]) for a in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  for a, s in sizes.items():
    if s == 0 or s < -1:
      raise UserError(f"config.mesh.{a}={s}: must be >= 1 or -1; use -1 to fill")
  if len(free) > 1:
    raise UserError(f"config.mesh: {', '.join(free)} are all -1; at most one "
                    "axis may be -1")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise UserError(f"config.mesh: fixed axes need a multiple of {fixed} "
                      f"devices, {num_devices} present; change the mesh sizes")
    sizes[free[0]] = num_devices // fixed
  total = math.prod(sizes.values())
  if total > num_devices:
    raise UserError(f"config.mesh={sizes}: needs {total} devices, only "
                    f"{num_devices} present; shrink the mesh or set one axis to -1")
  return sizes


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """The (data, fsdp, tensor) mesh over every device of every process.

  Laid out by jax's mesh_utils, which follows the physical topology (the
  TPU torus). Devices in several slices (TPU multislice), or on several
  GPU/CPU hosts, form a hybrid mesh: the slow links between them carry
  the batch axes (data, then fsdp), so each host holds whole batch rows.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  sizes = tuple(shape[a] for a in MESH_AXES)
  if math.prod(sizes) != len(devices):
    raise UserError(
        f"config.mesh={shape}: uses {math.prod(sizes)} of the {len(devices)} "
        "devices; a mesh spans every device (of every process): set one axis "
        "to -1, or make fewer devices visible (e.g. CUDA_VISIBLE_DEVICES)")
  return Mesh(device_grid(sizes, devices), MESH_AXES)


def data_parallel_mesh(devices=None) -> Mesh:
  """Every device on the batch axes (data=-1, fsdp=tensor=1): a reader's mesh."""
  return make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices)


def device_grid(sizes: tuple[int, ...], devices) -> np.ndarray:
  """Devices arranged in `sizes` (data, fsdp, tensor) by mesh_utils."""
  granules, by_process = _granules(devices)
  if granules == 1:
    return mesh_utils.create_device_mesh(sizes, devices,
                                         allow_split_physical_axes=True)
  dcn = _dcn_shape(sizes, granules, "hosts" if by_process else "slices")
  ici = tuple(s // d for s, d in zip(sizes, dcn))
  return mesh_utils.create_hybrid_device_mesh(
      ici, dcn, devices, process_is_granule=by_process,
      allow_split_physical_axes=True)


def _granules(devices) -> tuple[int, bool]:
  """(number of slow-link units, whether they are processes).

  TPU slices carry a slice_index; GPU/CPU processes are the units (their
  link is the network); a single TPU slice over several hosts is one unit
  (its chips share the ICI torus).
  """
  slices = {getattr(d, "slice_index", 0) for d in devices}
  if len(slices) > 1:
    return len(slices), False
  processes = {d.process_index for d in devices}
  if len(processes) > 1 and devices[0].platform != "tpu":
    return len(processes), True
  return 1, False


def _dcn_shape(sizes, granules: int, what: str) -> tuple[int, int, int]:
  """The granule grid: as many as possible on data, the rest on fsdp."""
  data, fsdp, _ = sizes
  on_data = math.gcd(data, granules)
  on_fsdp = granules // on_data
  if fsdp % on_fsdp:
    raise UserError(
        f"config.mesh=(data {data}, fsdp {fsdp}, tensor {sizes[2]}): the "
        f"{granules} {what} must split the batch axes (data x fsdp); make "
        f"config.mesh.data a multiple of {granules} (or leave it -1)")
  return on_data, on_fsdp, 1


def process_block(mesh: Mesh, global_rows: int) -> int:
  """Which 1/process_count block of batch rows this process's devices hold.

  Each process feeds only its rows (stream.batch(k, block, count)); they
  must be one contiguous share of the batch. UserError when the layout
  splits a process's rows or repeats them on several processes.
  """
  count = jax.process_count()
  rows = global_rows // count
  index_map = batch_sharding(mesh).addressable_devices_indices_map(
      (global_rows, 1))
  held = set()
  for index in index_map.values():
    held.update(range(*index[0].indices(global_rows)))
  lo = min(held)
  if held != set(range(lo, lo + rows)) or lo % rows:
    raise UserError(
        f"config.mesh={dict(mesh.shape)}: process {jax.process_index()}'s "
        f"devices hold {len(held)} of the {global_rows} batch rows, not one "
        f"contiguous 1/{count} share; split data x fsdp over the processes "
        "(keep the tensor axis within a host)")
  return lo // rows


def batch_shards(mesh: Mesh) -> int:
  """How many ways the batch dimension is split."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def _fit_spec(spec: P, shape, mesh: Mesh) -> P:
  """Drops mesh axes from dimensions they do not divide (replicates those)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    names = tuple(n for n in names if mesh.shape[n] > 1)
    if names and dim % math.prod(mesh.shape[n] for n in names):
      names = ()
    fitted.append(names if len(names) > 1 else (names[0] if names else None))
  return P(*fitted)


def logical_shardings(abstract_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """NamedShardings for a pytree of (boxed) abstract arrays.

  Leaves with logical names follow the rules; leaves without names (step
  counters, optimizer scalars) are replicated.
  """
  logical = nn.get_partition_spec(abstract_tree)
  shapes = nn.unbox(abstract_tree)

  def one(spec, leaf):
    mesh_spec = nn.logical_to_mesh_axes(spec, rules) if spec else P()
    return NamedSharding(mesh, _fit_spec(mesh_spec, leaf.shape, mesh))

  return jax.tree.map(one, logical, shapes,
                      is_leaf=lambda x: isinstance(x, P) or x is None)


def abstract_with_shardings(boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """(abstract tree, shardings) for a pytree of boxed abstract arrays.

  The abstract tree holds unboxed `jax.ShapeDtypeStruct`s that carry their
  NamedSharding: the target orbax restores into and the layout a jitted init
  produces. Used for the whole train state and for params alone.
  """
  shardings = logical_shardings(boxed_tree, mesh, rules)
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nn.unbox(boxed_tree), shardings)
  return abstract, shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH_SPEC)


def mesh_context(mesh: Mesh):
  """Context for tracing model code: the mesh plus the logical-axis rules.

  Inside it, the model's `nn.with_logical_constraint` calls become real
  sharding constraints (outside, they are no-ops). The one such scope:
  training, evaluation and sampling all enter it.
  """

  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(mesh))
  stack.enter_context(nn.logical_axis_rules(LOGICAL_AXIS_RULES))
  return stack
