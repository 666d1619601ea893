"""Does each paper size fit its TPU slice? Compiled for the real chip, on a CPU.

    pip install -e ".[tpu]"        # libtpu: the TPU compiler, no TPU needed
    python experiments/fit_check.py [--sizes=600m,13b] [--topology=v5p:4x4x4]
        [--topology=13b=v5e:16x16] [--mfu=0.4] [--no_fallback]
        [--set=model.remat=dots]
    python experiments/step_estimate.py [--sizes=...]          # cost model
    python experiments/step_estimate.py --search [--datas=1,4] # presets

For each size, the run config of configs/paper/paper.py is built, and its
train step (poisonjax.training.train_step: the model, optimizer, shardings and remat
exactly as training builds them) is AOT-compiled for a TPU topology that
libtpu describes (`jax.experimental.topologies`: abstract devices, no chip).
XLA's memory_analysis gives the bytes per chip; a step that does not fit
fails to compile with RESOURCE_EXHAUSTED, which is caught and reported. If
the preset does not fit, the fall-backs are tried in order: the whole slice
on fsdp (parameters and optimizer state sharded), then remat=full.

experiments/step_estimate.py (and its --search) replaces the assumed
MFU below by XLA's TPU cost model: `optimal_seconds` of the step compiled
with 2 and 4 unrolled layers, extrapolated per layer (an estimate by the
compiler, not a measured run); --search picks, per size, the remat policy,
microbatches and mesh split with the smallest estimate that leaves 10% of
HBM free (configs/paper/paper.py's SIZE_PRESETS).

Projections: step time = the compiled FLOPs per chip / (MFU x the chip's
bf16 peak), where --mfu is an ASSUMED fraction of peak the compiled program
reaches (0.4 by default); the MFU column is then the model FLOPs
(poisonjax.model.transformer.flops_per_token) over chips x peak x that step time, i.e.
below --mfu by the recomputation remat adds. Steps per run come from
`study plan` (clean + estimated poison tokens over 256 x 2048 per step).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib.util
import math
import os
import re
import sys
import time

GiB = 2 ** 30
# Per TPU generation: (chip_config_name, HBM bytes per chip, device_kind).
# HBM: v4 32 GiB, v5p 95 GiB, v5e 16 GB, v6e 32 GB (Cloud TPU docs).
TPU_CHIPS = {
    "v4": ("megacore", 32 * GiB, "TPU v4"),
    "v5p": ("megacore", 95 * GiB, "TPU v5p"),
    "v5e": ("default", 16e9, "TPU v5e"),
    "v6e": ("default", 32e9, "TPU v6e"),
}
DEFAULT_TOPOLOGIES = {"600m": "v5p:2x2x1", "2b": "v5p:4x4x4",
                      "7b": "v5p:4x4x4", "13b": "v5p:4x4x4"}
PAPER_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "..", "configs", "paper", "paper.py")


def libtpu_missing() -> str:
  """Why a compile for TPU cannot run here ('' when libtpu is installed)."""
  if importlib.util.find_spec("libtpu") is None:
    return ("libtpu is not installed: the TPU compiler comes from PyPI; "
            "pip install -e \".[tpu]\"")
  return ""


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
  """'v5p:4x4x4' -> ('v5p', (4, 4, 4)); ValueError naming the choices."""
  m = re.fullmatch(r"(v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})", name)
  if not m:
    raise ValueError(f"topology {name!r}: expected GEN:AxB[xC] with GEN in "
                     f"{', '.join(TPU_CHIPS)}, e.g. v5p:4x4x4 or v5e:16x16")
  return m[1], tuple(int(x) for x in m[2].split("x"))


def quiet_libtpu(topology: str) -> None:
  """libtpu warns at start-up without these; the values only describe us."""
  gen, dims = parse_topology(topology)
  chips = math.prod(dims)
  kind = {"v4": f"v4-{2 * chips}", "v5p": f"v5p-{2 * chips}",
          "v5e": f"v5litepod-{chips}", "v6e": f"v6e-{chips}"}[gen]
  os.environ["TPU_ACCELERATOR_TYPE"] = kind
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  # No chip is opened: several compiling processes (tests, helpers) may
  # load libtpu at once; without this the second fails on its lockfile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(topology: str) -> list:
  """The abstract devices of one TPU slice (no chip needed, libtpu is)."""
  from jax.experimental import topologies

  gen, dims = parse_topology(topology)
  quiet_libtpu(topology)
  desc = topologies.get_topology_desc(
      platform="tpu", topology_name=topology,
      chip_config_name=TPU_CHIPS[gen][0],
      chips_per_host_bounds=(2, 2, 1), num_slices=1)
  return list(desc.devices)


@dataclasses.dataclass
class Fit:
  """One compile of the train step for one slice: bytes, FLOPs, verdict."""
  topology: str
  chips: int
  mesh: dict
  remat: str
  microbatches: int
  hbm: float  # Bytes per chip.
  fits: bool
  error: str = ""  # The compiler's reason when it does not fit.
  param_bytes: float = math.nan  # Per chip, from the state's shardings.
  opt_bytes: float = math.nan
  argument_bytes: float = math.nan  # The rest: XLA's memory_analysis.
  output_bytes: float = math.nan
  alias_bytes: float = math.nan
  temp_bytes: float = math.nan
  code_bytes: float = math.nan
  raw_flops: float = math.nan  # XLA's cost_analysis: the layer scan once.
  raw_seconds: float = math.nan  # Its optimal_seconds: likewise.
  flops: float = math.nan  # Per chip per step, every layer counted.
  compile_s: float = math.nan
  kernels: int = 0  # Pallas/Mosaic kernel calls in the program (splash):
  # their FLOPs and time are opaque to XLA's cost analysis.

  @property
  def total_bytes(self) -> float:
    """Peak bytes per chip: inputs + outputs not donated + temporaries."""
    return (self.argument_bytes + self.output_bytes - self.alias_bytes
            + self.temp_bytes + self.code_bytes)


def _per_chip_bytes(abstract_tree) -> float:
  """Bytes one chip holds of a tree of sharded ShapeDtypeStructs."""
  import jax
  import numpy as np

  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
  return float(total)


def _describe(config, topology: str, mesh, hbm: float) -> Fit:
  return Fit(topology=topology, chips=mesh.size,
             mesh={k: int(v) for k, v in mesh.shape.items()},
             remat=config.model.remat,
             microbatches=int(config.train.get("microbatches", 1)),
             hbm=hbm, fits=False)


def compile_step(config, topology: str, vocab_size: int, num_steps: int,
                 unroll: bool = False) -> Fit:
  """AOT-compiles the run's train step for `topology`; a Fit either way.

  The same builders as poisonjax.training.train_setup.setup (the data is not needed:
  the batch is a sharded ShapeDtypeStruct of the run's shape). unroll: the
  microbatch scan is traced fully unrolled (for the cost model, estimate.py).
  """
  import jax
  import jax.numpy as jnp

  from poisonjax.model import transformer as model_lib
  from poisonjax.training import optim
  from poisonjax import sharding
  from poisonjax.training import train_step

  gen, _ = parse_topology(topology)
  mesh = sharding.make_mesh(config.mesh, topology_devices(topology))
  fit = _describe(config, topology, mesh, TPU_CHIPS[gen][1])
  model_cfg = model_lib.ModelConfig.from_config(config, vocab_size)
  tx, schedule = optim.make_optimizer(config, num_steps)
  model, _, abstract, state_sh = train_step.build_state_fns(
      config, model_cfg, mesh, tx)
  fit.param_bytes = _per_chip_bytes(abstract["params"])
  fit.opt_bytes = _per_chip_bytes(abstract["opt_state"])
  if fit.param_bytes + fit.opt_bytes > fit.hbm:
    fit.error = (f"parameters + optimizer state alone need "
                 f"{(fit.param_bytes + fit.opt_bytes) / GiB:.1f} GiB per chip")
    return fit  # Not compiled: it cannot fit.
  batch_sh = sharding.batch_sharding(mesh)
  step = train_step.jit_train_step(config, model, tx, schedule, state_sh,
                                   batch_sh)
  tokens = jax.ShapeDtypeStruct(
      (config.train.batch_size, config.data.seq_len), jnp.int32,
      sharding=batch_sh)
  start = time.perf_counter()
  try:
    with sharding.mesh_context(mesh), _unrolled_scans(unroll):
      compiled = step.lower(abstract, {"tokens": tokens}).compile()
  except Exception as e:  # XlaRuntimeError; the compiler's verdict.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    fit.error = _first_line(str(e))
    return fit
  finally:
    fit.compile_s = time.perf_counter() - start
  _read_compiled(fit, compiled)
  fit.flops = _all_layers_flops(fit.raw_flops, model_cfg, config, mesh.size)
  return fit


@contextlib.contextmanager
def _unrolled_scans(active: bool):
  """jax.lax.scan fully unrolled while tracing (when active).

  XLA's cost analysis counts a loop body once; unrolled, the microbatch
  scan of train_step is counted k times. Only for the cost-model compiles
  (their layers are unrolled by model.scan_layers=False).
  """
  import jax

  if not active:
    yield
    return
  scan = jax.lax.scan

  def unrolled(f, init, xs=None, length=None, reverse=False, unroll=1,
               **kwargs):
    return scan(f, init, xs, length=length, reverse=reverse, unroll=True,
                **kwargs)

  jax.lax.scan = unrolled
  try:
    yield
  finally:
    jax.lax.scan = scan


def _all_layers_flops(raw: float, model_cfg, config, chips: int) -> float:
  """The compiled FLOPs with every loop iteration counted.

  XLA's cost analysis counts a while loop's body once, so `raw` holds one
  layer (forward, recompute, backward) of one microbatch, plus what runs
  outside the layer scan: taken as the untied output head's 6 x d_model x
  vocab per token of that microbatch (the optimizer's elementwise update is
  small and lands in the layer share). With k microbatches (a scan around
  the model) the whole is then counted k times.
  """
  k = int(config.train.get("microbatches", 1))
  tokens = config.train.batch_size * config.data.seq_len / k
  outside = 6.0 * model_cfg.d_model * model_cfg.vocab_size * tokens / chips
  layers = model_cfg.num_layers if model_cfg.scan_layers else 1
  if not model_cfg.scan_layers:
    outside = 0.0
  return k * (outside + layers * max(raw - outside, 0.0))


def _first_line(message: str) -> str:
  line = next((l for l in message.splitlines() if "RESOURCE_EXHAUSTED" in l),
              message.splitlines()[0] if message else "")
  return " ".join(line.split())[:300]


def _read_compiled(fit: Fit, compiled) -> None:
  mem = compiled.memory_analysis()
  fit.argument_bytes = float(mem.argument_size_in_bytes)
  fit.output_bytes = float(mem.output_size_in_bytes)
  fit.alias_bytes = float(mem.alias_size_in_bytes)
  fit.temp_bytes = float(mem.temp_size_in_bytes)
  fit.code_bytes = float(mem.generated_code_size_in_bytes)
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  fit.raw_flops = float(cost.get("flops", math.nan))
  fit.raw_seconds = float(cost.get("optimal_seconds", math.nan))
  fit.kernels = compiled.as_text().count('custom_call_target="tpu_custom_call"')
  judge(fit)


def judge(fit: Fit) -> Fit:
  """The verdict of a compiled step: its peak bytes per chip within HBM."""
  fit.fits = fit.total_bytes <= fit.hbm
  fit.error = "" if fit.fits else (
      f"needs {fit.total_bytes / GiB:.1f} GiB per chip, HBM "
      f"{fit.hbm / GiB:.1f} GiB")
  return fit


# ---------------------------------------------------------------------------
# The ladder: the preset, then the settings that shrink bytes per chip.
# ---------------------------------------------------------------------------


AUTO = "auto"  # Microbatches: from the last failure's temporaries.


def fallbacks(config) -> list[dict]:
  """Overrides to try in order: the preset, all-fsdp, + microbatches, + full."""
  steps = [{}]
  if not (config.mesh.data == 1 and config.mesh.fsdp == -1):
    steps.append({"mesh.data": 1, "mesh.fsdp": -1})
  if "microbatches" in config.train and config.model.remat != "full":
    # Gradient accumulation: temporaries / k, no recomputation added.
    steps.append({"mesh.data": 1, "mesh.fsdp": -1,
                  "train.microbatches": AUTO})
  if config.model.remat != "full":
    steps.append({"mesh.data": 1, "mesh.fsdp": -1, "model.remat": "full"})
  return steps


def with_overrides(config, overrides: dict):
  c = config.copy_and_resolve_references()
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def first_fit(config, topology: str, vocab_size: int, num_steps: int,
              fallback: bool = True, log=print) -> list[Fit]:
  """Compiles the preset, then each fall-back until one fits; all tries."""
  tries = []
  for overrides in fallbacks(config) if fallback else [{}]:
    if overrides.get("train.microbatches") == AUTO:
      k = microbatches_for(tries[-1], config.train.batch_size)
      if not k:
        continue
      overrides = {**overrides, "train.microbatches": k}
    fit = compile_step(with_overrides(config, overrides), topology,
                       vocab_size, num_steps)
    log(f"  {topology} mesh={fit.mesh} remat={fit.remat} "
        f"microbatches={fit.microbatches}: "
        + ("fits" if fit.fits else f"DOES NOT FIT ({fit.error})")
        + (f" [{fit.compile_s:.0f}s compile]" if fit.compile_s == fit.compile_s else ""))
    tries.append(fit)
    if fit.fits:
      break
  return tries


def microbatches_for(failed: Fit, batch_size: int) -> int:
  """The fewest microbatches (a power of 2) whose temporaries fit, or 0.

  From the compiler's message: "HLO temporaries (X G) exceeds available HBM
  (Y G)"; temporaries scale with the rows per microbatch, the state does
  not. 0 when the message does not say, or the batch does not split.
  """
  m = re.search(r"temporaries \(([\d.]+)G\).*available HBM \(([\d.]+)G\)",
                failed.error)
  if not m or failed.compile_s != failed.compile_s:
    return 0
  needed, available = float(m[1]), float(m[2])
  room = 0.8 * available - (failed.param_bytes + failed.opt_bytes) / GiB
  shards = failed.mesh["data"] * failed.mesh["fsdp"]
  k = 2
  while needed / k > room and batch_size % (2 * k * shards) == 0:
    k *= 2
  return k if batch_size % (k * shards) == 0 and room > 0 else 0


# ---------------------------------------------------------------------------
# Projections and the table.
# ---------------------------------------------------------------------------


def projection(fit: Fit, model_flops_per_step: float, tokens_per_step: int,
               steps: int, mfu: float) -> dict:
  """Step time at `mfu` x peak on the compiled FLOPs; tokens/s, MFU, run cost."""
  from poisonjax import hardware

  gen, _ = parse_topology(fit.topology)
  peak = hardware.CHIP_PEAK_FLOPS[TPU_CHIPS[gen][2]]
  step_s = fit.flops / (mfu * peak)
  run_s = steps * step_s
  return {"peak": peak, "step_s": step_s,
          "tokens_per_s": tokens_per_step / step_s,
          "mfu": model_flops_per_step / (fit.chips * peak * step_s),
          "run_s": run_s, "chip_hours": run_s * fit.chips / 3600}


def format_row(size: str, fit: Fit, proj: dict | None, steps: int) -> str:
  from poisonjax import units

  g = lambda b: f"{b / GiB:.1f}"
  mesh = "x".join(f"{k}{v}" for k, v in fit.mesh.items() if v > 1) or "1"
  if fit.microbatches > 1:
    mesh += f", {fit.microbatches} microbatches"
  if not fit.fits:
    return (f"| {size} | {fit.topology} | {mesh} | {fit.remat} | "
            f"{g(fit.param_bytes)} | {g(fit.opt_bytes)} | - | - | "
            f"{g(fit.hbm)} | NO: {fit.error} | | | | | | |")
  return (f"| {size} | {fit.topology} | {mesh} | {fit.remat} | "
          f"{g(fit.param_bytes)} | {g(fit.opt_bytes)} | {g(fit.temp_bytes)} | "
          f"{g(fit.total_bytes)} | {g(fit.hbm)} | yes | {fit.flops:.2e} | "
          f"{proj['step_s']:.2f} | {units.human(proj['tokens_per_s'])} | "
          f"{proj['mfu']:.2f} | {steps:,} | "
          f"{units.format_duration(proj['run_s'])} | "
          f"{units.human(proj['chip_hours'])} |")


TABLE_HEAD = (
    "| size | topology | mesh | remat | params GiB/chip | opt state GiB/chip "
    "| temps GiB/chip | total GiB/chip | HBM GiB | fits | FLOPs/chip/step "
    "| step s | tokens/s | MFU | steps/run | run time | chip-hours/run |\n"
    "|" + "---|" * 17)


def load_study(path: str = PAPER_STUDY):
  spec = importlib.util.spec_from_file_location("study_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def topologies_for(sizes: list[str], flags: list[str]) -> dict[str, str]:
  """--topology=T (every size) or SIZE=T (one size) over the defaults."""
  chosen = {s: DEFAULT_TOPOLOGIES.get(s, "v5p:2x2x1") for s in sizes}
  for flag in flags:
    size, _, topo = flag.rpartition("=")
    parse_topology(topo)
    for s in ([size] if size else sizes):
      chosen[s] = topo
  return chosen


def parse_overrides(flags: list[str]) -> dict:
  """['model.remat=dots', 'train.microbatches=2'] -> {key: value}."""
  out = {}
  for flag in flags:
    key, sep, text = flag.partition("=")
    if not sep or key.count(".") != 1:
      raise ValueError(f"--set={flag!r}: expected SECTION.FIELD=VALUE")
    try:
      out[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      out[key] = text  # A bare word: a string.
  return out


def check_size(module, plan_rows, size: str, topology: str,
               mfu: float, fallback: bool,
               overrides: dict | None = None) -> tuple[str, list[str]]:
  """One size: its tries logged, its table row and its grid's chip-hours."""
  from poisonjax.model import transformer as model_lib
  from poisonjax.study import grids

  name = grids.run_name(size, 250, 0, 1.0)
  cfg = with_overrides(module.get_config(f"run={name}"), overrides or {})
  vocab = cfg.model.vocab_size or cfg.vocab.size
  steps = next(r["steps"] for r in plan_rows if r["run"] == name)
  print(f"{size} ({name}), {steps:,} steps:", flush=True)
  tries = first_fit(cfg, topology, vocab, steps, fallback)
  fit = tries[-1]
  positions = cfg.data.seq_len - 1  # Trained: inputs row[:-1].
  tokens = cfg.train.batch_size * positions
  mcfg = model_lib.ModelConfig.from_config(with_overrides(
      cfg, {"model.remat": fit.remat}), vocab)
  model_flops = model_lib.flops_per_token(mcfg, positions) * tokens
  rows = [format_row(size, t, None, steps) for t in tries[:-1]]
  notes = []
  if fit.fits and fit.kernels:
    fit.flops = model_flops / fit.chips
    notes.append(f"{size}: {fit.kernels} Pallas kernel calls (splash "
                 "attention), whose FLOPs XLA cannot see: FLOPs/chip/step is "
                 "model FLOPs; the cost model's step time: step_estimate.py")
  if fit.fits:
    proj = projection(fit, model_flops, tokens, steps, mfu)
    grid_steps = sum(r["steps"] for r in plan_rows if r["size"] == size)
    runs = sum(1 for r in plan_rows if r["size"] == size)
    notes.append(f"{size}: {runs} runs in the grid, "
                 f"{grid_steps * proj['step_s'] * fit.chips / 3600:,.0f} "
                 f"chip-hours ({fit.raw_flops:.2e} FLOPs/chip as XLA counts "
                 f"them, the layer scan once; compiled in {fit.compile_s:.0f} s)")
    if len(tries) > 1:
      notes.append(f"{size}: the preset does not fit {topology}; "
                   f"mesh={fit.mesh} remat={fit.remat} does")
  else:
    proj = None
    notes.append(f"{size}: nothing tried fits {topology}; use a larger slice")
  rows.append(format_row(size, fit, proj, steps))
  return "\n".join(rows), notes


def add_common_flags(p: argparse.ArgumentParser) -> None:
  """The flags this check shares with step_estimate.py: sizes, slices, study."""
  p.add_argument("--sizes", default="600m,2b,7b,13b")
  p.add_argument("--topology", action="append", default=[],
                 help="GEN:AxBxC for every size, or SIZE=GEN:AxBxC; repeatable")
  p.add_argument("--mfu", type=float, default=0.4,
                 help="assumed fraction of peak the compiled FLOPs run at")
  p.add_argument("--set", action="append", default=[], dest="overrides",
                 help="SECTION.FIELD=VALUE on every run config (e.g. "
                      "model.remat=dots); repeatable")
  p.add_argument("--study", default=PAPER_STUDY)


def common_setup(args, prog: str):
  """(study module, plan rows, sizes, topologies, overrides), or an exit status."""
  if why := libtpu_missing():
    print(f"{prog}: {why}", file=sys.stderr)
    return 2
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # The host side: keys only.
  import poisonjax.study as study_lib

  sizes = [s for s in args.sizes.split(",") if s]
  try:
    topos = topologies_for(sizes, args.topology)
    overrides = parse_overrides(args.overrides)
  except ValueError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 2
  module = load_study(args.study)
  plan_rows = study_lib.plan(module.get_config(), args.mfu)["runs"]
  return module, plan_rows, sizes, topos, overrides


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_common_flags(p)
  p.add_argument("--no_fallback", action="store_true",
                 help="compile the preset only (no fsdp / remat fall-backs)")
  args = p.parse_args(argv)
  setup = common_setup(args, "fit_check")
  if isinstance(setup, int):
    return setup
  module, plan_rows, sizes, topos, overrides = setup
  rows, notes = [], []
  for size in sizes:
    row, size_notes = check_size(module, plan_rows, size, topos[size],
                                 args.mfu, not args.no_fallback, overrides)
    rows.append(row)
    notes += size_notes
  print("\n" + TABLE_HEAD + "\n" + "\n".join(rows) + "\n")
  print(f"Projection: step time = compiled FLOPs per chip / ({args.mfu:g} x "
        "the chip's bf16 peak) [ASSUMED fraction of peak]; MFU = model FLOPs "
        "(6N + attention) / (chips x peak x step time); the run is the N=250, "
        "seed 0, 1x-data point (steps from `study plan`).")
  print("\n".join(notes))
  return 0


if __name__ == "__main__":
  sys.exit(main())
