"""Data speed: tokens/s the training stream delivers vs what the step consumes.

    python experiments/bench_data.py --shape small [--step_tokens_per_s=N] [--json]

For each shape (experiments/bench_shapes.py: its batch and sequence length),
a stream of the synthetic corpus with the config's poisons is built once
(cached under --cache_dir, with its vocabulary), then `batch(step, h, P)`,
the call the training loop makes, is timed for --steps consecutive steps
(after one warm-up batch), for each process count P in --processes: every
process's slice h of every step, so the figure includes the per-process
slicing. Two streams, both the real code:
  cache  the per-run cache (data/stream.py: one memmapped token file);
  store  the shared clean token store + the run's poison overlay
         (data/overlay.py, config.data.store='auto'; built here once).
tokens/s = tokens returned by batch() / seconds spent in it. The train step's
tokens/s comes from --step_tokens_per_s, else from running
experiments/bench_train.py --json at the same shape in a subprocess.
ratio = stream tokens/s / step tokens/s (the issue's target: >= 10).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_shapes  # pylint: disable=g-import-not-at-top,wrong-import-position

from poisonjax.errors import UserError

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CACHE = os.path.join("/tmp", "poisonjax-bench-cache")
STREAMS = ("cache", "store")
MIN_CLEAN_TOKENS = 200_000


def data_config(config, args):
  """The shape's run config pointed at the benchmark cache."""
  c = config.copy_and_resolve_references()
  c.data.cache_dir = args.cache_dir
  if args.vocab_docs:
    c.vocab.sample_docs = args.vocab_docs
  if args.poisons >= 0:
    c.poison.count = args.poisons
  return c


def open_stream(kind: str, config, clean_tokens: int):
  """The run's stream of this kind, built (once) if missing."""
  from poisonjax.data import overlay  # pylint: disable=g-import-not-at-top

  c = config.copy_and_resolve_references()
  c.data.store = "auto" if kind == "store" else ""
  with contextlib.redirect_stdout(sys.stderr):  # Build progress off stdout.
    return overlay.training_stream(c, clean_tokens, may_build=True)


def time_batches(stream, steps: int, processes: int) -> dict:
  """Seconds in batch() for every process slice of `steps` consecutive steps."""
  steps = min(steps, stream.num_steps - 1)  # Whole batches only.
  stream.batch(0, 0, processes)  # Warm-up: page cache, lazy opens.
  tokens = 0
  start = time.perf_counter()
  for step in range(1, steps + 1):
    for h in range(processes):
      tokens += stream.batch(step, h, processes)["tokens"].size
  seconds = time.perf_counter() - start
  return {"steps": steps, "tokens": tokens, "seconds": seconds,
          "tokens_per_s": tokens / seconds,
          "call_ms": 1e3 * seconds / (steps * processes)}


def shape_flags(name: str, args) -> list[str]:
  """The bench_train.py flags for this shape (named or custom)."""
  if name != bench_shapes.custom_name(args):
    return ["--shape", name]
  return ["--layers", str(args.layers), "--d_model", str(args.d_model),
          "--heads", str(args.heads), "--ffn", str(args.ffn),
          "--vocab", str(args.vocab), "--seq", str(args.seq),
          "--batch", str(args.batch), "--dtype", args.dtype]


def measured_step_rate(name: str, args) -> float:
  """The train step's tokens/s by experiments/bench_train.py --json."""
  script = os.path.join(HERE, "bench_train.py")
  if not os.path.isfile(script):
    raise UserError(f"{script} not found; pass --step_tokens_per_s=N (the "
                    "train step's tokens/s at this shape)")
  cmd = [sys.executable, script, *shape_flags(name, args), "--json"]
  done = subprocess.run(cmd, capture_output=True, text=True, check=False)
  for line in reversed(done.stdout.splitlines()):
    if line.startswith("{") and json.loads(line).get("what") == "train":
      return float(json.loads(line)["tokens_per_s"])
  tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
  raise UserError(f"{' '.join(cmd)} gave no train JSON line ({tail}); "
                  "pass --step_tokens_per_s=N instead")


def bench_shape(name: str, config, args) -> list[dict]:
  """One row per (stream kind, process count) at this shape."""
  c = data_config(config, args)
  batch_tokens = c.train.batch_size * c.data.seq_len
  # Enough for the timed steps, and at least ~1000 synthetic documents so
  # the config's poisons (250 by default) have boundaries to go at.
  clean_tokens = max((args.steps + 2) * batch_tokens, MIN_CLEAN_TOKENS)
  step_rate = args.step_tokens_per_s or measured_step_rate(name, args)
  rows = []
  for kind in args.streams:
    start = time.perf_counter()
    stream = open_stream(kind, c, clean_tokens)
    setup_s = time.perf_counter() - start
    for p in args.processes:
      t = time_batches(stream, args.steps, p)
      rows.append({"what": "data", "shape": name, "stream": kind,
                   "processes": p, "batch": c.train.batch_size,
                   "seq_len": c.data.seq_len, "poisons": stream.num_poisons,
                   "setup_s": setup_s, **t, "step_tokens_per_s": step_rate,
                   "ratio": t["tokens_per_s"] / step_rate})
  return rows


def format_rows(rows: list[dict]) -> str:
  lines = [f"{'shape':>20s} {'stream':>6s} {'P':>3s} {'call_ms':>8s} "
           f"{'stream tok/s':>13s} {'step tok/s':>11s} {'ratio':>8s}"]
  for r in rows:
    lines.append(f"{r['shape']:>20s} {r['stream']:>6s} {r['processes']:3d} "
                 f"{r['call_ms']:8.3f} {r['tokens_per_s']:13,.0f} "
                 f"{r['step_tokens_per_s']:11,.0f} {r['ratio']:8,.1f}")
  return "\n".join(lines)


def _int_list(text: str) -> list[int]:
  try:
    values = [int(x) for x in text.split(",") if x]
  except ValueError:
    values = []
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f"{text!r}: want positive integers, e.g. 1,4")
  return values


def _stream_list(text: str) -> list[str]:
  kinds = [x for x in text.split(",") if x]
  if not kinds or set(kinds) - set(STREAMS):
    raise argparse.ArgumentTypeError(f"{text!r}: want cache, store or cache,store")
  return kinds


def parse_args(argv):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog="\n".join(__doc__.splitlines()[1:]))
  bench_shapes.add_shape_flags(ap)
  ap.add_argument("--step_tokens_per_s", type=float, default=0.0,
                  help="the train step's tokens/s (0: run bench_train.py)")
  ap.add_argument("--steps", type=int, default=200, help="consecutive steps timed")
  ap.add_argument("--processes", type=_int_list, default=[1, 4],
                  help="process counts P to slice each batch for (default 1,4)")
  ap.add_argument("--streams", type=_stream_list, default=list(STREAMS),
                  help="cache, store or both (default cache,store)")
  ap.add_argument("--poisons", type=int, default=-1,
                  help="poison documents in the stream (-1: the config's)")
  ap.add_argument("--cache_dir", default=DEFAULT_CACHE,
                  help="where the vocabulary, stream and store are cached")
  ap.add_argument("--vocab_docs", type=int, default=0,
                  help="documents the vocabulary is built from (0: config's)")
  ap.add_argument("--json", action="store_true", help="one JSON line each")
  args = ap.parse_args(argv)
  if args.steps < 1:
    ap.error("--steps: must be >= 1")
  return args


def main(argv=None) -> int:
  try:
    args = parse_args(argv)
    rows = []
    for name, config in bench_shapes.configs_from_flags(args):
      for row in bench_shape(name, config, args):
        rows.append(row)
        if args.json:
          print(json.dumps(row), flush=True)
  except UserError as e:
    print(f"bench_data: error: {e}", file=sys.stderr)
    return 2
  if not args.json:
    print(format_rows(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
