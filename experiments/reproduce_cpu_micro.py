"""Reproduce the poisoning study at CPU scale: plan -> run -> collect -> report.

    python experiments/reproduce_cpu_micro.py            # ~2 hours on 2 cores
    nohup python experiments/reproduce_cpu_micro.py > runs/cpu_micro.log 2>&1 &
    python experiments/reproduce_cpu_micro.py --report_only   # no training

Runs the grid of configs/study_cpu_micro.py (see its docstring for the
sizes, counts, budget and the pilot behind them) one run after another in
--root, then writes into --out (docs/results/cpu_micro/): results.csv (every
evaluation point of every run), the figures with the table behind each, the
fits (n50.csv, count_vs_share.json) and report.md, all written by
poisonjax.study.report from results.csv: the regime, N50 per size and data
amount with bootstrap intervals, count versus share as a model comparison,
the final results, the caveats, the exact command, machine and wall time.

Resumable: kill it at any time and start the same command again; finished
runs are skipped and an interrupted run resumes from its last checkpoint.
`--report_only` regenerates the report from the committed results.csv.
`--config` runs another study the same way (the tests use cpu_nano).
"""

import os
import sys

from reproduce_study import REPO, main as reproduce

if __name__ == "__main__":
  sys.exit(reproduce(
      sys.argv[1:], doc=__doc__, script="experiments/reproduce_cpu_micro.py",
      config=os.path.join(REPO, "configs", "study_cpu_micro.py"),
      root=os.path.join(REPO, "runs", "study_cpu_micro"),
      out=os.path.join(REPO, "docs", "results", "cpu_micro")))
