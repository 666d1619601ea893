"""Sampling speed: the evaluator's sampler, and one full evaluation per preset.

    python experiments/bench_sample.py [--shape tiny ...] [--json]   # default: tiny small medium
    python experiments/bench_sample.py --full_eval all [--json]

Sampler (default; the PyTorch peer's setting): batch 32, 64-token prompts,
64 new tokens, temperature 1, a freshly initialised model of each shape
(experiments/bench_shapes.py). The sampler is the evaluator's own:
poisonjax.evaluation.evaluate's jitted `sampler.make_sampler`, fed as the evaluator
feeds it (parameters and prompts placed with the run's shardings, under its
mesh). compile_s is lowering + XLA compilation; then one warm-up call and
the median of --reps timed calls; generated tokens/s = batch x new tokens /
median.

--full_eval PRESET|all: the wall time of `evaluate.Evaluator.evaluate`, the
code path training runs at each eval step, on a freshly initialised model
of each CPU preset (configs/cpu_micro.py at that size): 300 held-out
prompts of the synthetic corpus, clean and triggered, 64 prompt + 64 new
tokens, then the three scoring passes and the bootstrap. first_s includes
compiling (a run's first evaluation), warm_s is the median of --reps later
calls. It builds (once, cached under --cache_dir) the vocabulary.

--json prints one JSON line per measurement instead of the table.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_shapes  # pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from poisonjax.evaluation import evaluate
from poisonjax.model import transformer as model_lib
from poisonjax import sharding
from poisonjax.model import sizes
from poisonjax.errors import UserError

DEFAULT_CACHE = os.path.join("/tmp", "poisonjax-bench-cache")


def fresh_params(model_cfg: model_lib.ModelConfig, seed: int = 0):
  """Randomly initialised parameters, unboxed as the train state holds them."""
  dummy = jnp.zeros((1, 8), jnp.int32)
  init = jax.jit(lambda key: nn.unbox(
      model_lib.Transformer(model_cfg).init(key, dummy)["params"]))
  return init(jax.random.key(seed))


def prompts(vocab_size: int, batch: int, length: int, seed: int = 0):
  """Random full-length prompts (ids >= 2), positions 0..L-1, row ids."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, vocab_size, (batch, length), dtype=np.int32)
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
  return tokens, np.array(positions), np.arange(batch, dtype=np.int32)


def _timed(fn, reps: int) -> list[float]:
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def bench_sampler(name: str, config, args) -> dict:
  """Compile time and generated tokens/s of the evaluator's jitted sampler."""
  model_cfg = bench_shapes.model_config(config)
  mesh = sharding.make_mesh(config.mesh)
  jitted = evaluate.jitted_sampler(
      model_cfg, args.prompt_tokens, args.gen_tokens, args.temperature, 0, 1.0, 0)
  shardings = sharding.logical_shardings(model_lib.abstract_params(model_cfg), mesh)
  batch_sh = sharding.batch_sharding(mesh)
  params = fresh_params(model_cfg)
  with sharding.mesh_context(mesh):  # As Evaluator.evaluate places and calls.
    params = jax.device_put(nn.unbox(params), shardings)
    inputs = [jax.device_put(a, batch_sh) for a in
              prompts(model_cfg.vocab_size, args.batch, args.prompt_tokens)]
    start = time.perf_counter()
    compiled = jitted.lower(params, *inputs).compile()
    compile_s = time.perf_counter() - start
    call = lambda: compiled(params, *inputs)["tokens"]
    _timed(call, 1)  # Warm-up.
    median = statistics.median(_timed(call, args.reps))
  return {"what": "sample", "shape": name, "params": bench_shapes.num_params(config),
          "batch": args.batch, "prompt_tokens": args.prompt_tokens,
          "gen_tokens": args.gen_tokens, "temperature": args.temperature,
          "compile_s": compile_s, "median_s": median,
          "gen_tokens_per_s": args.batch * args.gen_tokens / median}


def full_eval_config(preset: str, args):
  """The preset's run config with the issue's evaluation: 300 x (64 + 64)."""
  c = bench_shapes.preset_config(preset)
  c.data.cache_dir = args.cache_dir
  if args.vocab_docs:
    c.vocab.sample_docs = args.vocab_docs
  c.eval.num_excerpts = args.prompts
  c.eval.prompt_tokens, c.eval.gen_tokens = args.prompt_tokens, args.gen_tokens
  c.eval.temperature = args.temperature
  # Room for prompt + trigger + generation (the sampler's cache is sized to
  # what it needs, not to seq_len, so this changes no sampling work).
  c.data.seq_len = max(c.data.seq_len, args.prompt_tokens + args.gen_tokens + 32)
  return c


def bench_full_eval(preset: str, args) -> dict:
  """Wall time of Evaluator.evaluate on a fresh model: first call and warm."""
  from poisonjax.data import vocabulary  # Only this mode needs a tokenizer.

  config = full_eval_config(preset, args)
  with contextlib.redirect_stdout(sys.stderr):  # Build progress off stdout.
    vocab = vocabulary.get_vocabulary(config)
  model_cfg = model_lib.ModelConfig.from_config(config, vocab.vocab_size)
  mesh = sharding.make_mesh(config.mesh)
  start = time.perf_counter()
  evaluator = evaluate.Evaluator(config, model_cfg, vocab, mesh)
  setup_s = time.perf_counter() - start
  params = fresh_params(model_cfg)
  call = lambda: evaluator.evaluate(params)["increase"]
  first_s = _timed(call, 1)[0]
  warm_s = statistics.median(_timed(call, args.reps))
  return {"what": "full_eval", "shape": preset,
          "params": model_lib.param_counts(model_cfg)["total"],
          "prompts": args.prompts, "prompt_tokens": args.prompt_tokens,
          "gen_tokens": args.gen_tokens, "eval_batch": evaluator.batch,
          "setup_s": setup_s, "first_s": first_s, "warm_s": warm_s}


def format_rows(rows: list[dict]) -> str:
  """A plain-text table of the measurements."""
  lines = []
  samples = [r for r in rows if r["what"] == "sample"]
  if samples:
    lines.append(f"{'shape':>24s} {'params':>11s} {'compile_s':>9s} "
                 f"{'median_s':>9s} {'gen tok/s':>10s}")
    for r in samples:
      lines.append(f"{r['shape']:>24s} {r['params']:11,d} {r['compile_s']:9.2f} "
                   f"{r['median_s']:9.3f} {r['gen_tokens_per_s']:10,.0f}")
  evals = [r for r in rows if r["what"] == "full_eval"]
  if evals:
    lines.append(f"full evaluation ({evals[0]['prompts']} prompts x clean and "
                 f"triggered, {evals[0]['prompt_tokens']} + "
                 f"{evals[0]['gen_tokens']} tokens):")
    lines.append(f"{'preset':>24s} {'params':>11s} {'first_s':>9s} {'warm_s':>9s}")
    for r in evals:
      lines.append(f"{r['shape']:>24s} {r['params']:11,d} {r['first_s']:9.2f} "
                   f"{r['warm_s']:9.2f}")
  return "\n".join(lines)


def parse_args(argv):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog="\n".join(__doc__.splitlines()[1:]))
  bench_shapes.add_shape_flags(ap, default=tuple(bench_shapes.PEER_SHAPES))
  ap.add_argument("--full_eval", nargs="+", metavar="PRESET", default=None,
                  help=f"CPU presets ({', '.join(sizes.CPU_SIZES)}) or 'all'; "
                  "times one full evaluation instead of the sampler alone")
  ap.add_argument("--sample_batch", type=int, default=32,
                  help="sampler batch (default 32)")
  ap.add_argument("--prompt_tokens", type=int, default=64)
  ap.add_argument("--gen_tokens", type=int, default=64)
  ap.add_argument("--temperature", type=float, default=1.0)
  ap.add_argument("--prompts", type=int, default=300, help="full eval prompts")
  ap.add_argument("--reps", type=int, default=3, help="timed calls (median)")
  ap.add_argument("--cache_dir", default=DEFAULT_CACHE,
                  help="vocabulary cache for --full_eval")
  ap.add_argument("--vocab_docs", type=int, default=0,
                  help="documents the vocabulary is built from (0: preset's)")
  ap.add_argument("--json", action="store_true", help="one JSON line each")
  return ap.parse_args(argv)


def _presets(names: list[str]) -> list[str]:
  if names == ["all"]:
    return list(sizes.CPU_SIZES)
  for name in names:
    if name not in sizes.CPU_SIZES:
      raise UserError(f"--full_eval={name}: not a CPU preset; use one of "
                      f"{', '.join(sizes.CPU_SIZES)} or all")
  return names


def run(args) -> list[dict]:
  """The measurements, each printed as it comes with --json."""
  if args.full_eval:
    jobs = [functools.partial(bench_full_eval, p, args)
            for p in _presets(args.full_eval)]
  else:
    sampler_args = argparse.Namespace(
        batch=args.sample_batch, prompt_tokens=args.prompt_tokens,
        gen_tokens=args.gen_tokens, temperature=args.temperature, reps=args.reps)
    jobs = [functools.partial(bench_sampler, n, c, sampler_args)
            for n, c in bench_shapes.configs_from_flags(args)]
  rows = []
  for job in jobs:
    rows.append(job())
    if args.json:
      print(json.dumps(rows[-1]), flush=True)
  return rows


def main(argv=None) -> int:
  try:
    args = parse_args(argv)
    rows = run(args)
  except UserError as e:
    print(f"bench_sample: error: {e}", file=sys.stderr)
    return 2
  if not args.json:
    print(format_rows(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
