"""poisonjax side by side with the PyTorch peer: one process at a time, alternating.

    python experiments/bench_peers.py [--rounds=3] [--pause=20] [--write_doc=docs/benchmarks.md]
    python experiments/bench_peers.py --quick          # smoke: tiny only, 1 round

Each round runs, each in its own subprocess, one at a time, --pause seconds
apart: the peer's matmul peak, then for every --shape (the peer's tiny,
small, medium) the peer's training step (eager), poisonjax's
(experiments/bench_train.py --json), the peer's with torch.compile, the
peer's sampling (Hugging Face GPT-2 `generate`, KV cache) and poisonjax's
(experiments/bench_sample.py --json). Odd rounds run the list backwards, so
neither side always goes first. Each figure is the median over rounds
(min-max in brackets). Then, once: the train benchmark of each CPU preset
(compile time, peak RSS), one full evaluation per preset, and the data
stream at each shape against poisonjax's median train tokens/s.

The peer is ../shared/peers/torch_peer.py in its own virtual environment
(--peer_python). These machines are shared and noisy: compare the ratios
of one sitting, never figures from different days. --raw keeps every
measurement (JSONL); --from_raw renders the tables/page from such a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import bench_peers_doc as bench_doc  # pylint: disable=g-import-not-at-top,wrong-import-position

from poisonjax import files  # pylint: disable=g-import-not-at-top,wrong-import-position
from poisonjax.model import sizes  # pylint: disable=g-import-not-at-top,wrong-import-position
from poisonjax.errors import UserError  # pylint: disable=g-import-not-at-top,wrong-import-position

PEER_SCRIPT = os.path.normpath(os.path.join(ROOT, "..", "shared", "peers", "torch_peer.py"))
PEER_PYTHON = os.path.expanduser("~/.cache/peer-venv/bin/python")
PEER_SHAPES = ("tiny", "small", "medium")
INSTALL = ("python3 -m venv ~/.cache/peer-venv && "
           "~/.cache/peer-venv/bin/pip install torch numpy transformers")
_VERSIONS = ("import json, platform, torch, transformers; print(json.dumps("
             "{'torch': torch.__version__, 'transformers': transformers.__version__,"
             " 'peer_python': platform.python_version(),"
             " 'torch_threads': torch.get_num_threads()}))")


@dataclasses.dataclass(frozen=True)
class Job:
  """One measurement: which side, what, at which shape, and its command."""
  side: str  # peer | poisonjax
  what: str  # peak | train | train_compiled | sample | preset_train | full_eval | data
  shape: str
  cmd: tuple[str, ...]

  @property
  def key(self) -> str:
    return f"{self.side}/{self.what}/{self.shape}"


def check_peer(args) -> dict:
  """The peer's torch/transformers versions; one-line error if not usable."""
  if not os.path.isfile(args.peer_script):
    raise UserError(f"--peer_script={args.peer_script}: no such file; pass the "
                    "path of torch_peer.py")
  if not os.access(args.peer_python, os.X_OK):
    raise UserError(f"--peer_python={args.peer_python}: not found; install "
                    f"the peer's environment: {INSTALL}")
  done = subprocess.run([args.peer_python, "-c", _VERSIONS], capture_output=True,
                        text=True, check=False)
  if done.returncode:
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise UserError(f"--peer_python={args.peer_python}: cannot import torch and "
                    f"transformers ({last}); install them: {INSTALL}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def _peer(args, what: str, shape: str, *extra: str) -> tuple[str, ...]:
  return (args.peer_python, args.peer_script, what, *(("--shape", shape) if shape else ()),
          *extra)


def _ours(script: str, *flags: str) -> tuple[str, ...]:
  return (sys.executable, os.path.join(HERE, script), *flags, "--json")


def round_jobs(args, round_index: int) -> list[Job]:
  """The jobs of one round, peer and poisonjax interleaved."""
  jobs = [Job("peer", "peak", "-", _peer(args, "peak", ""))]
  for s in args.shape:
    jobs += [
        Job("peer", "train", s, _peer(args, "train", s)),
        Job("poisonjax", "train", s, _ours("bench_train.py", "--shape", s)),
        Job("peer", "train_compiled", s, _peer(args, "train", s, "--compile")),
        Job("peer", "sample", s, _peer(args, "sample", s)),
        Job("poisonjax", "sample", s, _ours("bench_sample.py", "--shape", s)),
    ]
  return jobs[::-1] if round_index % 2 else jobs


def extra_jobs(args, train_medians: dict) -> list[Job]:
  """Once, after the rounds: presets' train + full eval, the data stream."""
  jobs = []
  for p in args.presets:
    jobs.append(Job("poisonjax", "preset_train", p, _ours("bench_train.py", "--shape", p)))
    jobs.append(Job("poisonjax", "full_eval", p, _ours("bench_sample.py", "--full_eval", p)))
  for s in args.shape:
    rate = train_medians.get(s)
    if rate:
      jobs.append(Job("poisonjax", "data", s, _ours(
          "bench_data.py", "--shape", s, "--step_tokens_per_s", f"{rate:.1f}")))
  return jobs


def display(cmd) -> str:
  """The command as it reads from the repository root (paths shortened)."""
  home = os.path.expanduser("~")
  parent = os.path.dirname(ROOT)

  def short(arg: str) -> str:
    if os.path.isabs(arg) and arg.startswith(parent + os.sep):
      return os.path.relpath(arg, ROOT)
    if os.path.isabs(arg) and arg.startswith(home + os.sep):
      return "~" + arg[len(home):]
    return arg

  return " ".join(shlex.quote(short(a)) if not short(a).startswith("~")
                  else short(a) for a in cmd)


def run_job(job: Job, timeout_s: float) -> list[dict]:
  """The job's JSON lines, each tagged with its key; an error row on failure."""
  start = time.perf_counter()
  try:
    done = subprocess.run(job.cmd, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    out, err, rc = done.stdout, done.stderr, done.returncode
  except subprocess.TimeoutExpired:
    out, err, rc = "", f"timed out after {timeout_s:.0f} s", -1
  rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  tag = {"side": job.side, "job": job.what, "key": job.key, "cmd": display(job.cmd),
         "wall_s": time.perf_counter() - start}
  if rc or not rows:
    last = (err.strip().splitlines() or ["no JSON output"])[-1]
    print(f"bench_peers: {job.key} failed (rc {rc}): {last}", file=sys.stderr)
    return [{**tag, "error": last}]
  return [{**tag, **row} for row in rows]


def run_all(jobs: list[Job], args, round_index) -> list[dict]:
  """Runs jobs one at a time, --pause seconds apart, logging progress."""
  out = []
  for i, job in enumerate(jobs):
    if out or round_index:
      time.sleep(args.pause)
    label = f"round {round_index}" if round_index < args.rounds else "once"
    print(f"bench_peers: {label}: {job.key} "
          f"({i + 1}/{len(jobs)})", file=sys.stderr, flush=True)
    for row in run_job(job, args.job_timeout):
      out.append({**row, "round": round_index})
      if args.raw:
        files.append_jsonl(args.raw, out[-1])
  return out


def measure(args) -> list[dict]:
  """All rounds, then the one-off jobs; every measurement as a row."""
  rows = []
  for r in range(args.rounds):
    rows += run_all(round_jobs(args, r), args, r)
  train = bench_doc.medians(rows).get("poisonjax/train", {})
  rates = {s: v["tokens_per_s"]["median"] for s, v in train.items()}
  rows += run_all(extra_jobs(args, rates), args, args.rounds)
  return rows


def machine(versions: dict) -> dict:
  """What the figures were measured on."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top

  info = {"cpu": _cpu_model(), "cores": os.cpu_count(),
          "usable_cores": len(os.sched_getaffinity(0)),
          "ram_gib": _mem_total_gib(), "python": sys.version.split()[0],
          "jax": metadata.version("jax"), "jaxlib": metadata.version("jaxlib"),
          "nice": os.nice(0), "load_avg": os.getloadavg()[0],
          "date": datetime.datetime.now(datetime.timezone.utc).strftime(
              "%Y-%m-%d %H:%M UTC")}
  info.update(versions)
  return info


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  import platform  # pylint: disable=g-import-not-at-top
  return platform.processor() or "unknown"


def _mem_total_gib() -> float:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          return int(line.split()[1]) / 2 ** 20
  except OSError:
    pass
  return float("nan")


def _presets(text: str) -> list[str]:
  if text in ("all", ""):
    return list(sizes.CPU_SIZES) if text == "all" else []
  names = [x for x in text.split(",") if x]
  bad = [x for x in names if x not in sizes.CPU_SIZES]
  if bad or not names:
    raise argparse.ArgumentTypeError(
        f"{text!r}: want all, none ('') or some of {','.join(sizes.CPU_SIZES)}")
  return names


def parse_args(argv):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog="\n".join(__doc__.splitlines()[1:]))
  ap.add_argument("--shape", action="append", choices=PEER_SHAPES, default=None,
                  help="the peer's shapes to compare (repeatable; default all three)")
  ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3)")
  ap.add_argument("--pause", type=float, default=None,
                  help="seconds between processes (default 20; 2 with --quick)")
  ap.add_argument("--presets", type=_presets, default=None,
                  help="CPU presets for the once-only train/full-eval rows: all, "
                  "'' for none, or a comma list (default all; cpu-xxs with --quick)")
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: tiny only, 1 round, short pauses, cpu-xxs")
  ap.add_argument("--job_timeout", type=float, default=1800.0)
  ap.add_argument("--peer_python", default=PEER_PYTHON)
  ap.add_argument("--peer_script", default=PEER_SCRIPT)
  ap.add_argument("--raw", default="", help="append every measurement to this JSONL")
  ap.add_argument("--from_raw", default="",
                  help="render from this JSONL (of --raw) instead of measuring")
  ap.add_argument("--write_doc", default="", help="write the page here, e.g. "
                  "docs/benchmarks.md")
  args = ap.parse_args(argv)
  quick = args.quick
  args.shape = args.shape or (["tiny"] if quick else list(PEER_SHAPES))
  args.rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
  args.pause = args.pause if args.pause is not None else (2.0 if quick else 20.0)
  if args.presets is None:
    args.presets = ["cpu-xxs"] if quick else list(sizes.CPU_SIZES)
  if args.rounds < 1 or args.pause < 0:
    ap.error("--rounds must be >= 1 and --pause >= 0")
  return args


def main(argv=None) -> int:
  command = shlex.join(["python", "experiments/bench_peers.py",
                        *(sys.argv[1:] if argv is None else argv)])
  try:
    args = parse_args(argv)
    if args.from_raw:
      rows = files.read_jsonl(args.from_raw)
      head = next((r for r in rows if "machine" in r), {})
      info, command = head.get("machine", {}), head.get("command", command)
      info.update(next((r for r in rows if "load_avg_end" in r), {}))
    else:
      info = machine(check_peer(args))
      if args.raw:
        files.append_jsonl(args.raw, {"machine": info, "command": command})
      rows = measure(args)
      info["load_avg_end"] = os.getloadavg()[0]
      if args.raw:
        files.append_jsonl(args.raw, {"load_avg_end": info["load_avg_end"]})
  except UserError as e:
    print(f"bench_peers: error: {e}", file=sys.stderr)
    return 2
  report = bench_doc.Report(rows=rows, machine=info, command=command)
  print(bench_doc.tables(report))
  if args.write_doc:
    files.write_text_atomic(args.write_doc, bench_doc.page(report))
    print(f"bench_peers: wrote {args.write_doc}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
