"""The poisoning study at Chinchilla budgets on CPU: plan -> run -> collect -> report.

    python experiments/reproduce_cpu_chinchilla.py       # ~23 core-hours, resumable
    nohup nice python experiments/reproduce_cpu_chinchilla.py > runs/cpu_chinchilla.log 2>&1 &
    python experiments/reproduce_cpu_chinchilla.py --partial      # report what is done
    python experiments/reproduce_cpu_chinchilla.py --report_only  # no training

Runs the grid of --config (default configs/study_cpu_chinchilla.py: 20
clean tokens per parameter, several CPU sizes, poison counts bracketing the
threshold, 3 seeds, data amounts 0.5x-8x for the smallest size) in --root
(default runs/study_cpu_chinchilla), then writes into --out (default
docs/results/cpu_chinchilla/) results.csv, the figures and their tables, the
fits (n50.csv, count_vs_share.json) and report.md, written by
poisonjax.study.report from results.csv alone (regime, N50 with bootstrap
intervals, count versus share, caveats, command, machine and wall time).

Cost, measured on a 2-core Xeon VM (one pinned single-threaded worker per
core, `--worker`): per seed cpu-xxs 1x 14 min, cpu-xs 29 min, cpu-s 3.4 h,
the cpu-xxs data amounts 3.2 h; 22.6 core-hours for the 63 runs (report.md), 11 h
of wall time with two workers.

Resumable: kill it and run the same command again; finished runs are
skipped, an interrupted one resumes from its last checkpoint. `--partial`
reports the runs finished so far, so results can be committed as they come.
"""

import os
import sys

from reproduce_study import REPO, main as reproduce

if __name__ == "__main__":
  sys.exit(reproduce(
      sys.argv[1:], doc=__doc__, script="experiments/reproduce_cpu_chinchilla.py",
      config=os.path.join(REPO, "configs", "study_cpu_chinchilla.py"),
      root=os.path.join(REPO, "runs", "study_cpu_chinchilla"),
      out=os.path.join(REPO, "docs", "results", "cpu_chinchilla")))
