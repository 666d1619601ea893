"""The decisive CPU study (issue 27): plan -> run -> collect -> report.

    python experiments/reproduce_cpu_decisive.py --worker       # ~29 core-hours, resumable
    python experiments/reproduce_cpu_decisive.py --partial      # report what is done
    python experiments/reproduce_cpu_decisive.py --report_only  # no training

Runs the grid of --config (default configs/study_cpu_decisive.py: cpu-xxs,
cpu-xs and cpu-s at 1x data with counts around each size's N50, 5-8 seeds,
300 evaluation prompts, and a cpu-xxs 8x data arm) in --root (default
runs/study_cpu_decisive), block by block, cheapest first (study.run_order),
then writes into --out (default docs/results/cpu_decisive/) results.csv,
plan.txt, the figures, the fits and report.md, which opens with beta (the
exponent of N50 in model size) and its seed-clustered 95% interval, N50 per
size with its intervals, and which targets were met.

One worker on a shared 2-core machine, single-threaded, at the lowest
priority (how it was started: docs/results/cpu_decisive/README.md):

  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false nohup nice -n 19 \
    python experiments/reproduce_cpu_decisive.py --worker \
    > runs/cpu_decisive.log 2>&1 &

Resumable: kill it and run the same command again; finished runs are
skipped, an interrupted one resumes from its last checkpoint.
"""

import os
import sys

from reproduce_study import REPO, main as reproduce

if __name__ == "__main__":
  sys.exit(reproduce(
      sys.argv[1:], doc=__doc__, script="experiments/reproduce_cpu_decisive.py",
      config=os.path.join(REPO, "configs", "study_cpu_decisive.py"),
      root=os.path.join(REPO, "runs", "study_cpu_decisive"),
      out=os.path.join(REPO, "docs", "results", "cpu_decisive")))
