"""Training speed of poisonjax's own train step, at named or given shapes.

    python experiments/bench_train.py [--shape tiny --shape small ...] [--json]
    python experiments/bench_train.py --layers 4 --d_model 256 --heads 4 --batch 8
    python experiments/bench_train.py --shape 600m --batch 8      # on a GPU/TPU

It times the real step: `train_step.jit_train_step` over
`train_step.build_state_fns` (sharded jit, donated state, AdamW + clip from
`optim.make_optimizer`), fed through `train_step.global_batch` exactly as
training feeds it, with random tokens. Shapes: the PyTorch peer's (tiny,
small, medium), the CPU presets and custom flags (experiments/bench_shapes.py);
a paper size (600m, 2b, 7b, 13b) runs at vocabulary 32768, sequence 2048,
bfloat16 activations with float32 parameters, for an accelerator.

Per shape: compile_s (lowering + XLA compilation of the step), the median
step time over --steps steps after --warmup, tokens/s, achieved FLOP/s and
MFU against a peak measured in the same run (a 4096^2 float32 matmul on
CPU; the chip table of poisonjax/hardware.py on an accelerator), and the
process's peak RSS. Each shape runs in its own process, so peak RSS is that
shape's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_shapes  # pylint: disable=wrong-import-position

FLOP_FORMULA = ("FLOPs/token = 6 x (weight-matmul params incl. the output head) "
                "+ 12 x layers x d_model x seq (attention scores and values); "
                "the PaLM-appendix estimate, poisonjax.model.transformer.flops_per_token")


def paper_config(size: str, batch: int, remat: str):
  """A paper-size run config for one accelerator host (bf16 activations)."""
  from poisonjax import config as config_lib

  c = config_lib.base_config()
  c.model.size = size
  c.model.vocab_size = c.vocab.size = 32768
  c.model.dtype, c.model.param_dtype, c.model.remat = "bfloat16", "float32", remat
  c.data.seq_len, c.train.batch_size = 2048, batch
  return c


def peak_flops(dtype: str) -> tuple[float, str]:
  """(peak FLOP/s of this process's devices, where it came from)."""
  import jax
  from poisonjax import hardware

  device = jax.devices()[0]
  if device.platform == "cpu":
    return hardware.measure_cpu_flops(n=4096, reps=5), "measured 4096^2 f32 matmul"
  per_chip = hardware.peak_flops_for_kind(device.device_kind, device.platform)
  note = f"{device.device_kind} bf16 table peak" + (
      "" if dtype == "bfloat16" else " (dtype is not bf16)")
  return per_chip * jax.local_device_count(), note


def build_step(config):
  """The jitted train step, its initial state and a batch maker."""
  import jax
  import numpy as np
  from poisonjax.model import transformer as model_lib
  from poisonjax.training import optim, train_step
  from poisonjax import sharding

  mesh = sharding.make_mesh(config.mesh)
  model_cfg = model_lib.ModelConfig.from_config(config, int(config.model.vocab_size))
  tx, schedule = optim.make_optimizer(config, 1000)
  model, init, abstract, state_sh = train_step.build_state_fns(
      config, model_cfg, mesh, tx)
  batch_sh = sharding.batch_sharding(mesh)
  step = train_step.jit_train_step(config, model, tx, schedule, state_sh, batch_sh)
  b, t, v = config.train.batch_size, config.data.seq_len, model_cfg.vocab_size
  rng = np.random.default_rng(0)

  def batch():
    local = rng.integers(2, v, (b, t + 1), dtype=np.int32)
    return {"tokens": train_step.global_batch(local, batch_sh, b)}

  return mesh, model_cfg, step, init, abstract, batch


def measure(name: str, config, steps: int, warmup: int) -> dict:
  """Compile, warm up and time the step of one shape; the result row."""
  import jax
  from poisonjax.model import transformer as model_lib
  from poisonjax import sharding

  mesh, model_cfg, step, init, abstract, batch = build_step(config)
  with sharding.mesh_context(mesh):
    state = init(jax.random.key(0))
    t0 = time.perf_counter()
    compiled = step.lower(abstract, batch()).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(warmup + steps):
      tokens = batch()
      t0 = time.perf_counter()
      state, metrics = compiled(state, tokens)
      float(metrics["loss"])  # What the training loop waits for.
      times.append(time.perf_counter() - t0)
  step_s = statistics.median(times[warmup:])
  tokens = config.train.batch_size * config.data.seq_len
  flops = model_lib.flops_per_token(model_cfg, config.data.seq_len) * tokens
  peak, peak_note = peak_flops(config.model.dtype)
  return {"what": "train", "shape": name, "desc": bench_shapes.describe(config),
          "params": bench_shapes.num_params(config), "compile_s": compile_s,
          "median_step_s": step_s, "min_step_s": min(times[warmup:]),
          "tokens_per_s": tokens / step_s, "gflops": flops / step_s / 1e9,
          "peak_gflops": peak / 1e9, "peak_source": peak_note,
          "mfu": flops / step_s / peak,
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "backend": jax.default_backend(), "devices": jax.device_count()}


def print_table(rows: list[dict]) -> None:
  print(FLOP_FORMULA)
  head = (f"{'shape':10s} {'model':38s} {'params':>8s} {'compile':>8s} "
          f"{'step':>9s} {'tok/s':>9s} {'GFLOP/s':>8s} {'peak':>7s} {'MFU':>6s} {'RSS':>8s}")
  print(head)
  for r in rows:
    print(f"{r['shape']:10s} {r['desc']:38s} {r['params'] / 1e6:7.2f}M "
          f"{r['compile_s']:7.1f}s {r['median_step_s'] * 1e3:7.1f}ms "
          f"{r['tokens_per_s']:9,.0f} {r['gflops']:8.1f} {r['peak_gflops']:7.0f} "
          f"{r['mfu']:6.1%} {r['peak_rss_mib']:6.0f}Mi")
  if rows:
    print(f"peak: {rows[0]['peak_source']}; backend {rows[0]['backend']}, "
          f"{rows[0]['devices']} device(s)")


def _configs(args):
  from poisonjax.model import sizes

  named = [n for n in (args.shape or []) if n in sizes.PAPER_SIZES]
  args.shape = [n for n in (args.shape or []) if n not in sizes.PAPER_SIZES] or None
  out = [] if named and not args.shape and not args.layers else (
      bench_shapes.configs_from_flags(args))
  return out + [(n, paper_config(n, args.paper_batch, args.remat)) for n in named]


def _child_row(argv: list[str], name: str) -> dict:
  """Runs one shape in a fresh process (its own peak RSS); its JSON row."""
  cmd = [sys.executable, os.path.abspath(__file__), "--_only", name, "--json"] + argv
  out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  bench_shapes.add_shape_flags(p, default=("tiny", "small", "medium"))
  p.add_argument("--steps", type=int, default=10, help="timed steps (median)")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--paper_batch", type=int, default=8,
                 help="sequences of 2048 per step for a paper size")
  p.add_argument("--remat", default="none", help="paper sizes: none|dots|full")
  p.add_argument("--json", action="store_true", help="one JSON line per shape")
  p.add_argument("--_only", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  configs = _configs(args)
  if args._only:
    rows = [measure(n, c, args.steps, args.warmup) for n, c in configs
            if n == args._only]
  elif len(configs) == 1:
    rows = [measure(configs[0][0], configs[0][1], args.steps, args.warmup)]
  else:
    rows = [_child_row(argv, name) for name, _ in configs]
  for r in rows if args.json else []:
    print(json.dumps(r))
  if not args.json:
    print_table(rows)
  return 0


if __name__ == "__main__":
  from poisonjax.errors import UserError
  try:
    sys.exit(main())
  except UserError as e:
    sys.exit(f"bench_train: error: {e}")
