"""Poison placement as a study axis on CPU: plan -> run -> collect -> report.

    python experiments/reproduce_cpu_placement.py       # 8 runs, ~35 min on one core
    python experiments/reproduce_cpu_placement.py --report_only  # no training

Runs configs/study_cpu_placement.py (cpu-xxs at 20 clean tokens per
parameter; 30 and 100 poisons; seed 0; placements uniform, first10, last10,
bursts5 as variants) in runs/study_cpu_placement and writes results.csv,
the figures and report.md (with its "By variant" section) into
docs/results/cpu_placement/. Resumable, and `--worker` splits it across
processes as in experiments/reproduce_study.py.
"""

import os
import sys

from reproduce_study import REPO, main as reproduce

if __name__ == "__main__":
  sys.exit(reproduce(
      sys.argv[1:], doc=__doc__, script="experiments/reproduce_cpu_placement.py",
      config=os.path.join(REPO, "configs", "study_cpu_placement.py"),
      root=os.path.join(REPO, "runs", "study_cpu_placement"),
      out=os.path.join(REPO, "docs", "results", "cpu_placement")))
