"""The TPU step time by XLA's own TPU cost model, and the preset search on it.

Not a measured run: `compiled.cost_analysis()["optimal_seconds"]` is what
libtpu's compiler estimates the compiled step takes on the chip (compute,
HBM traffic and collectives, as its cost model sees them). Like the FLOP
count, it counts a loop body once, so a scanned model's figure holds one
layer. Here the train step is compiled with its layers UNROLLED
(model.scan_layers=False) at two depths, 2 and 4 layers (the microbatch
scan unrolled too), and each figure is extrapolated linearly to the real
depth: per layer = (v4 - v2) / 2, step = v2 + (L - 2) x per layer. The
same extrapolation gives a first guess of the bytes per chip (a filter);
the chosen setting is then compiled as training runs it (scanned, full
depth) for its real memory_analysis.

--one_depth halves the compiles of a search: the first setting is compiled
at both depths, the others at 2 layers only, their part outside the layers
(embedding, output head and loss, optimizer update: what remat and the
mesh split do not touch) taken from the first setting's line at 0 layers.
Each row says which way it was estimated.

Every compile is appended to a JSONL cache (docs/results/fit_check/
compiles.jsonl), keyed by what changes the program, so a search resumes
where it stopped and the tables rebuild without recompiling.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys

import fit_check

DEPTHS = (2, 4)
HEADROOM = 0.10  # A setting is kept when it leaves >= 10% of HBM free.
REMATS = ("full", "dots", "none")  # The old preset first.
MAX_MICROBATCHES = 8
CACHE_ONLY = False  # --cache_only: never compile, report what is missing.
CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                     "results", "fit_check", "compiles.jsonl")


@dataclasses.dataclass
class Setting:
  """What the search varies: remat policy, mesh split, microbatches."""
  remat: str
  data: int  # Mesh data axis; fsdp takes the rest of the slice.
  microbatches: int = 1

  def overrides(self) -> dict:
    return {"model.remat": self.remat, "mesh.data": self.data,
            "mesh.fsdp": -1, "train.microbatches": self.microbatches}

  def label(self, chips: int) -> str:
    mesh = "x".join(f"{a}{n}" for a, n in (("data", self.data),
                                           ("fsdp", chips // self.data))
                    if n > 1) or "1"
    k = f", {self.microbatches} microbatches" if self.microbatches > 1 else ""
    return f"{self.remat}, {mesh}{k}"


@dataclasses.dataclass
class Estimate:
  """One setting's cost-model step time, every layer counted."""
  setting: Setting
  chips: int
  num_layers: int
  step_s: float = math.nan  # Extrapolated optimal_seconds per step.
  flops: float = math.nan  # Extrapolated compiled FLOPs per chip per step.
  bytes_guess: float = math.nan  # Extrapolated peak bytes per chip (a filter).
  hbm: float = math.nan
  error: str = ""  # Why there is no estimate (e.g. out of memory at depth 4).
  verified_bytes: float = math.nan  # Full-depth scanned compile, when done.
  outside: dict | None = None  # The line's value at 0 layers, per figure.
  kernel_s: float = 0.0  # Of step_s: the splash kernels at the chip's peak.
  method: str = "2+4"  # "2+4" layers, or "2+outside" (--one_depth).

  @property
  def fits_guess(self) -> bool:
    """By the compiled program's bytes where known, else the line's."""
    if self.verified_bytes == self.verified_bytes:
      return not self.error and self.fits
    return not self.error and self.bytes_guess <= (1 - HEADROOM) * self.hbm

  @property
  def fits(self) -> bool:
    """Verified: the real program's bytes leave the headroom."""
    return self.verified_bytes <= (1 - HEADROOM) * self.hbm


def versions() -> str:
  import importlib.metadata as md

  try:
    libtpu = md.version("libtpu")
  except md.PackageNotFoundError:  # Cached figures can be read without it.
    libtpu = "none"
  return f"jax {md.version('jax')}, libtpu {libtpu}"


def cache_key(config, topology: str) -> str:
  """What changes the compiled program (and so its figures); attention as
  resolved for the TPU (`auto` is splash there)."""
  from poisonjax.model import attention

  m, t = config.model, config.train
  fields = {
      "v": versions(), "topology": topology, "size": m.size,
      "layers": int(m.num_layers), "scan": bool(m.scan_layers),
      "remat": m.remat, "dtype": m.dtype, "data": int(config.mesh.data),
      "fsdp": int(config.mesh.fsdp), "tensor": int(config.mesh.tensor),
      "batch": int(t.batch_size), "seq": int(config.data.seq_len),
      "microbatches": int(t.get("microbatches", 1)),
      "attention": attention.resolve(m.get("attention", "auto"), "tpu",
                                     m.dtype),
  }
  return json.dumps(fields, sort_keys=True)


def load_cache(path: str = CACHE) -> dict:
  if not os.path.exists(path):
    return {}
  out = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        out[row["key"]] = row
  return out


def compiled(config, topology: str, vocab: int, steps: int, unroll: bool,
             cache: dict, path: str = CACHE, log=print) -> dict:
  """One compile's figures, from the cache or compiled now (and appended)."""
  key = cache_key(config, topology)
  if key in cache:
    return cache[key]
  if CACHE_ONLY:
    chips = math.prod(fit_check.parse_topology(topology)[1])
    return {"key": key, "chips": chips, "hbm": math.nan,
            "error": "not in the compile cache (--cache_only)"}
  fit = fit_check.compile_step(config, topology, vocab, steps, unroll=unroll)
  row = {"key": key, "seconds": fit.raw_seconds, "flops": fit.raw_flops,
         "bytes": fit.total_bytes, "temp_bytes": fit.temp_bytes,
         "param_bytes": fit.param_bytes, "opt_bytes": fit.opt_bytes,
         "hbm": fit.hbm, "chips": fit.chips, "error": fit.error,
         "compile_s": fit.compile_s}
  log(f"    compiled "
      + (f"{json.loads(key)['layers']} layers unrolled "
         if not config.model.scan_layers else "full depth scanned ")
      + 
      f"[{fit.compile_s:.0f} s]: "
      + (f"{fit.raw_seconds:.4f} s, {fit.total_bytes / fit_check.GiB:.1f} GiB"
         if not fit.error else fit.error))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:  # One short line per write: appends interleave.
    f.write(json.dumps(row) + "\n")
  cache[key] = row
  return row


def splash_seconds(batch: int, layers: int, heads: int, head_dim: int,
                   t: int, block: int, recompute: bool, chips: int,
                   peak: float) -> float:
  """Causal splash attention's time per train step at the chip's bf16 peak.

  XLA's cost model sees a Mosaic kernel as (almost) no time: a causal
  4 x 16 x 2048^2 splash forward estimates 0.4 us, the XLA path 1.1 ms. So
  its time is added from its FLOPs, at peak (a bound in the spirit of
  optimal_seconds): per (sequence, head) 2 matmuls forward, 7 backward (the
  dkv kernel recomputes the scores and forms dP, dV, dK; the dq kernel the
  scores, dP and dQ) and the forward again under remat (`recompute`: a
  kernel's output is not a dot, no remat policy saves it), each 2 T^2 D
  over the causal blocks, (n + 1) / 2n of them for n blocks per row.
  """
  blocks = t // block
  matmuls = 2 + 7 + (2 if recompute else 0)
  flops = (batch * layers * heads * matmuls * 2 * t * t * head_dim
           * (blocks + 1) / (2 * blocks))
  return flops / chips / peak


def kernel_seconds(config, model_cfg, chips: int, peak: float) -> float:
  """splash_seconds for a poisonjax config (0 where attention is not splash)."""
  from poisonjax.model import attention

  m = config.model
  if attention.resolve(m.attention, "tpu", m.dtype) != "splash":
    return 0.0
  t = attention.splash_length(config.data.seq_len - 1)
  return splash_seconds(config.train.batch_size, model_cfg.num_layers,
                        model_cfg.num_heads, model_cfg.head_dim, t,
                        attention.splash_block(t), m.remat != "none", chips,
                        peak)


def extrapolate(v1: float, v2: float, d1: int, d2: int, layers: int) -> float:
  """The value at `layers` on the line through (d1, v1) and (d2, v2)."""
  return v1 + (layers - d1) * (v2 - v1) / (d2 - d1)


FIGURES = (("seconds", "step_s"), ("flops", "flops"), ("bytes", "bytes_guess"))


def estimate(config, setting: Setting, topology: str, vocab: int, steps: int,
             cache: dict, outside: dict | None = None,
             log=print) -> Estimate:
  """The setting's step time: unrolled compiles at DEPTHS, extrapolated.

  With `outside` (another setting's figures at 0 layers), one compile at
  DEPTHS[0] gives the per-layer slope: (v - outside) / depth.
  """
  from poisonjax.model import transformer as model_lib

  cfg = fit_check.with_overrides(config, setting.overrides())
  layers = model_lib.ModelConfig.from_config(cfg, vocab).num_layers
  at = [fit_check.with_overrides(cfg, {"model.num_layers": d,
                                       "model.scan_layers": False})
        for d in DEPTHS]
  if outside and cache_key(at[1], topology) in cache:
    outside = None  # Both depths compiled already: the better line.
  rows = [compiled(c, topology, vocab, steps, True, cache, log=log)
          for c in (at[:1] if outside else at)]
  est = Estimate(setting, chips=rows[0]["chips"], num_layers=layers,
                 hbm=rows[0]["hbm"], method="2+outside" if outside else "2+4")
  if any(r["error"] for r in rows):
    est.error = next(r["error"] for r in rows if r["error"])
    return est
  if outside:
    points = [(0, outside), (DEPTHS[0], rows[0])]
  else:
    points = list(zip(DEPTHS, rows))
  (da, a), (db, b) = points
  est.outside = {}
  for key, field in FIGURES:
    setattr(est, field, extrapolate(a[key], b[key], da, db, layers))
    est.outside[key] = extrapolate(a[key], b[key], da, db, 0)
  est.kernel_s = kernel_seconds(
      cfg, model_lib.ModelConfig.from_config(cfg, vocab), est.chips,
      chip_peak(topology))
  est.step_s += est.kernel_s
  return est


def chip_peak(topology: str) -> float:
  """The slice's chip's bf16 peak FLOP/s."""
  from poisonjax import hardware

  gen, _ = fit_check.parse_topology(topology)
  return hardware.CHIP_PEAK_FLOPS[fit_check.TPU_CHIPS[gen][2]]


def verify(config, est: Estimate, topology: str, vocab: int, steps: int,
           cache: dict, log=print) -> Estimate:
  """The real program (scanned, full depth): its bytes per chip."""
  cfg = fit_check.with_overrides(config, est.setting.overrides())
  row = compiled(cfg, topology, vocab, steps, False, cache, log=log)
  est.verified_bytes = math.inf if row["error"] else row["bytes"]
  return est


def next_microbatches(est: Estimate, batch: int, shards: int) -> int:
  """The next k to try, or 0 when the batch does not split further.

  After an out-of-memory compile: 2k. After bytes over the headroom (the
  compiled program's where known, else the guess): the power of 2 that
  scales them under it (temporaries shrink
  about as 1/k; the state does not, so this may take one more step).
  """
  k = est.setting.microbatches
  step = 2
  known = est.verified_bytes == est.verified_bytes
  bytes_ = est.verified_bytes if known else est.bytes_guess
  if not est.error and bytes_ < math.inf:
    over = bytes_ / ((1 - HEADROOM) * est.hbm)
    step = 2 ** max(1, math.ceil(math.log2(over)))
  k *= step
  if k > MAX_MICROBATCHES or batch % (k * shards):
    return 0
  return k


def smallest_fitting(config, remat: str, data: int, topology: str,
                     vocab: int, steps: int, cache: dict,
                     outside: dict | None = None, verify_each: bool = False,
                     log=print) -> list[Estimate]:
  """Estimates for k = 1 and up until the bytes leave headroom: the
  compiled program's with verify_each (and always for k > 1), else the
  line's guess.

  The first k that fits is kept: more microbatches do the same FLOPs
  with more weight gathers and accumulation passes.
  """
  chips = math.prod(fit_check.parse_topology(topology)[1])
  tries, k = [], 1
  while k:
    est = estimate(config, Setting(remat, data, k), topology, vocab, steps,
                   cache, outside, log=log)
    if (k > 1 or verify_each) and not est.error:
      # Unrolled, the microbatches' activations may all be alive at once:
      # the line's bytes say nothing of the scanned loop training runs.
      verify(config, est, topology, vocab, steps, cache, log=log)
    tries.append(est)
    if est.fits_guess:
      break
    k = next_microbatches(est, config.train.batch_size, chips)
  return tries


def search(config, topology: str, vocab: int, steps: int, cache: dict,
           datas=(1,), remats=REMATS, one_depth: bool = False,
           verify_winner: bool = True, log=print) -> tuple[list, Estimate]:
  """All estimates tried, and the fastest setting that leaves the headroom.

  Stage 1: each remat policy on the whole slice as fsdp (data=1), each
  with the fewest microbatches whose program as trained (scanned, full
  depth: verify_winner) leaves the headroom; stage 2: the best of stage 1
  with the other data splits. The fastest of those is returned. Without
  verify_winner the line's bytes decide where k = 1 (a guess: 13b with
  remat=none guessed 83.7 GiB and compiled out of memory at 102.7).
  """
  chips = math.prod(fit_check.parse_topology(topology)[1])
  tried, outside = [], None

  def stage(remat, data):
    nonlocal outside
    log(f"  {Setting(remat, data).label(chips)}:")
    ests = smallest_fitting(config, remat, data, topology, vocab, steps,
                            cache, outside, verify_winner, log)
    if one_depth and outside is None:
      outside = next((e.outside for e in ests if e.outside), None)
    return ests

  for remat in remats:
    tried += stage(remat, 1)
  ranked = sorted((e for e in tried if e.fits_guess), key=lambda e: e.step_s)
  if ranked:
    for data in [d for d in datas if d != 1 and chips % d == 0]:
      tried += stage(ranked[0].setting.remat, data)
  ranked = sorted((e for e in tried if e.fits_guess), key=lambda e: e.step_s)
  if not verify_winner:
    return tried, (ranked[0] if ranked else None)
  for est in ranked:
    log(f"  verifying {est.setting.label(chips)} as trained (scanned):")
    if verify(config, est, topology, vocab, steps, cache, log).fits:
      return tried, est
  return tried, None


# ---------------------------------------------------------------------------
# Per size: the table rows.
# ---------------------------------------------------------------------------


TABLE_HEAD = (
    "| size | topology | setting | attention | layers compiled | "
    "step s (est.) | of which splash at peak | tokens/s | MFU (est.) | "
    "GiB/chip extrapolated | GiB/chip compiled | >= 10% free | "
    "grid chip-hours |\n" + "|" + "---|" * 13)


def row(size: str, topology: str, est: Estimate, model_flops: float,
        tokens: int, grid_steps: int, peak: float, attention: str) -> str:
  """One table row; grid chip-hours = the size's steps x step s x chips."""
  from poisonjax import units

  g = lambda b: "-" if b != b else ("no" if b == math.inf else
                                     f"{b / fit_check.GiB:.1f}")
  label = est.setting.label(est.chips)
  if est.error:
    return (f"| {size} | {topology} | {label} | {attention} | {est.method} "
            f"| - | - | - | - | - | - | no: {est.error[:120]} | - |")
  mfu = model_flops / (est.chips * peak * est.step_s)
  free = ("yes" if est.fits else "NO") if est.verified_bytes == \
      est.verified_bytes else ("guess yes" if est.fits_guess else "guess no")
  hours = grid_steps * est.step_s * est.chips / 3600
  kernel = f"{est.kernel_s:.3f}" if attention == "splash" else "-"
  return (f"| {size} | {topology} | {label} | {attention} | {est.method} | "
          f"{est.step_s:.3f} | {kernel} | "
          f"{units.human(tokens / est.step_s)} | {mfu:.3f} | "
          f"{g(est.bytes_guess)} | {g(est.verified_bytes)} | {free} | "
          f"{hours:,.0f} |")


def preset_of(config) -> Setting:
  """The Setting a run config holds."""
  return Setting(config.model.remat, int(config.mesh.data),
                 int(config.train.get("microbatches", 1)))


def run_size(module, plan_rows, size: str, topology: str, overrides: dict,
             do_search: bool, datas=(1,), remats=REMATS,
             one_depth: bool = False, do_verify: bool = True,
             log=print) -> list[str]:
  """One size: the preset's estimate (and verified bytes), or the search."""
  from poisonjax.model import attention as attention_lib
  from poisonjax.model import transformer as model_lib
  from poisonjax.study import grids

  name = grids.run_name(size, 250, 0, 1.0)
  cfg = fit_check.with_overrides(module.get_config(f"run={name}"), overrides)
  vocab = cfg.model.vocab_size or cfg.vocab.size
  steps = next(r["steps"] for r in plan_rows if r["run"] == name)
  grid_steps = sum(r["steps"] for r in plan_rows if r["size"] == size)
  positions = cfg.data.seq_len - 1  # Trained: inputs row[:-1], targets row[1:].
  tokens = cfg.train.batch_size * positions
  model_flops = model_lib.flops_per_token(
      model_lib.ModelConfig.from_config(cfg, vocab), positions) * tokens
  peak = chip_peak(topology)
  attention = attention_lib.resolve(cfg.model.attention, "tpu", cfg.model.dtype)
  cache = load_cache()
  log(f"{size} on {topology}:")
  if do_search:
    tried, chosen = search(cfg, topology, vocab, steps, cache, datas, remats,
                           one_depth, do_verify, log=log)
  else:
    tried, outside = [], None
    if one_depth and overrides:  # The outside part: the study's own preset's.
      base = module.get_config(f"run={name}")
      tried.append(estimate(base, preset_of(base), topology, vocab, steps,
                            cache, log=log))
      outside = tried[0].outside
    chosen = estimate(cfg, preset_of(cfg), topology, vocab, steps, cache,
                      outside, log=log)
    if not chosen.error and do_verify:
      verify(cfg, chosen, topology, vocab, steps, cache, log=log)
    tried.append(chosen)
  rows = [row(size, topology, e, model_flops, tokens, grid_steps, peak,
              attention) for e in tried]
  if do_search:
    rows.append(f"| **{size}: chosen** | {topology} | nothing fits with 10% "
                "free | | | | | | | | | | |" if chosen is None else
                row(f"**{size}: chosen**", topology, chosen, model_flops,
                    tokens, grid_steps, peak, attention))
  return rows


def main(argv=None) -> int:
  """The preset's step time per size (or, with --search, the best setting)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  fit_check.add_common_flags(p)
  p.add_argument("--search", action="store_true",
                 help="search remat x microbatches x data split by the cost "
                      "model; the fastest that leaves 10%% of HBM free")
  p.add_argument("--datas", default="1",
                 help="mesh data-axis sizes the search tries (fsdp: the rest)")
  p.add_argument("--remats", default="full,dots,none",
                 help="remat policies the search tries, in this order")
  p.add_argument("--one_depth", action="store_true",
                 help="settings after the first (--search) or the --set "
                      "setting compiled at 2 layers only, with the first's / "
                      "the preset's part outside the layers")
  p.add_argument("--no_verify", action="store_true",
                 help="skip the full-depth scanned compile of the chosen "
                      "setting (its bytes: the extrapolated guess)")
  p.add_argument("--cache_only", action="store_true",
                 help="rebuild the tables from the compile cache alone (no "
                      "libtpu compile); a setting not in it says so")
  args = p.parse_args(argv)
  global CACHE_ONLY
  CACHE_ONLY = args.cache_only
  remats = tuple(args.remats.split(","))
  if bad := [r for r in remats if r not in REMATS]:
    print(f"step_estimate: error: --remats: {bad[0]!r} is not one of "
          f"{', '.join(REMATS)}", file=sys.stderr)
    return 2
  setup = fit_check.common_setup(args, "step_estimate")
  if isinstance(setup, int):
    return setup
  module, plan_rows, sizes, topos, overrides = setup
  datas = tuple(int(d) for d in args.datas.split(","))
  rows = []
  for size in sizes:
    rows += run_size(module, plan_rows, size, topos[size], overrides,
                     args.search, datas, remats, args.one_depth,
                     not args.no_verify, log=lambda *a: print(*a, flush=True))
  print("\n" + TABLE_HEAD + "\n" + "\n".join(rows) + "\n")
  print("Step s: XLA's TPU cost model (compiled.cost_analysis()"
        "['optimal_seconds']) of the train step compiled with 2 and 4 "
        "unrolled layers, extrapolated per layer to the full depth: an "
        "ESTIMATE by the compiler, not a measured run; with splash "
        "attention plus the kernels' FLOPs at the chip's peak (the cost "
        "model sees a Mosaic kernel as no time). MFU = model FLOPs "
        "(6N + attention) / (chips x bf16 peak x step s). GiB/chip compiled: "
        "the program as trained (scanned, full depth). Grid chip-hours: the "
        "size's runs in `study plan` x step s x chips. " + versions())
  return 0


if __name__ == "__main__":
  sys.exit(main())
