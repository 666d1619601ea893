"""The reproduce scripts' shared entry: `poisonjax study reproduce` with defaults.

experiments/reproduce_cpu_*.py call `main` with their config, root and out;
everything else (plan -> run -> collect -> report, provenance, --partial,
--report_only, --worker) is poisonjax/study/reproduce.py. The same as:

    poisonjax study reproduce --config=configs/study_cpu_chinchilla.py \\
      --root=runs/study_cpu_chinchilla --out=docs/results/cpu_chinchilla

WORKERS: on a small CPU machine, two processes each pinned to one core and
single-threaded train ~1.1-1.3x the tokens/s of one process on both:

  for core in 0 1; do
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false \\
    nohup taskset -c $core python experiments/reproduce_cpu_chinchilla.py \\
      --worker > runs/worker$core.log 2>&1 &
  done
"""

import argparse
import os
import shlex
import sys

from poisonjax import config_files
from poisonjax.errors import UserError
from poisonjax.study import reproduce as reproduce_lib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# Kept for the scripts that still import them from here.
machine = reproduce_lib.machine
stored_provenance = reproduce_lib.stored_provenance


def load_study(path):
  return config_files.load(path)


def train_wall(root, runs) -> tuple[float, int]:
  """Sum of the runs' own wall times (all sessions) and how many finished."""
  return (reproduce_lib.train_wall_s(root, runs),
          len(reproduce_lib.finished_runs(root, runs)))


def _parser(doc, config, root, out):
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("--config", default=config)
  p.add_argument("--root", default=root)
  p.add_argument("--out", default=out)
  p.add_argument("--partial", action="store_true",
                 help="Run nothing: collect and report the runs finished so far.")
  p.add_argument("--report_only", action="store_true",
                 help="Regenerate the report from OUT's results (no training).")
  p.add_argument("--worker", action="store_true",
                 help="Share --root with other --worker processes.")
  p.add_argument("--bootstrap", type=int, default=None,
                 help="Bootstrap resamples of the fits.")
  return p


def main(argv, *, doc, script, config, root, out) -> int:
  """Runs (unless --partial/--report_only), collects and reports one study."""
  args = _parser(doc, config, root, out).parse_args(argv)
  command = "python " + " ".join(shlex.quote(a) for a in [script] + list(argv))
  try:
    s = config_files.load(args.config)
    if args.report_only:
      print(f"wrote {reproduce_lib.regenerate(s, args.out, command, args.bootstrap)}")
      return 0
    return reproduce_lib.reproduce(
        s, args.config, root=args.root, out=args.out, command=command,
        partial=args.partial, worker=args.worker, n_boot=args.bootstrap,
        log=lambda m: print(m, flush=True))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
