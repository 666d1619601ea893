"""The whole defences comparison at CPU scale, one command: score -> train -> scan.

    nohup nice -n 10 python experiments/reproduce_defences.py > runs/defences.log 2>&1 &

Runs, in order, each resumable (finished scores and runs are kept, so the
same command goes on where it stopped):
  1. experiments/defences_score.py: every document filter on the cpu-xxs
     Chinchilla stream (100 poisons), recall and false positives against
     the manifest; trains the clean reference model first;
  2. experiments/defences_train.py: adaptive poisons against the filters,
     then filter-then-train runs beside the unfiltered ones;
  3. experiments/defences_scan.py --train_missing: the blind trigger scan
     of a poisoned and a clean model (trained first if missing).
Everything lands in docs/results/defences/ (filters.*, train/, scan.*).
Extra arguments go to defences_train.py (e.g. --counts 100,300). About
2 hours of a free 2-core machine from nothing; minutes when all is done.
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = (("defences_score.py",), ("defences_train.py", "EXTRA"),
         ("defences_scan.py", "--train_missing"))


def main(argv) -> int:
  for script, *args in STEPS:
    args = [a for x in args for a in (argv if x == "EXTRA" else [x])]
    print(f"[defences] {script} {' '.join(args)}", flush=True)
    rc = subprocess.call([sys.executable, os.path.join(HERE, script), *args])
    if rc:
      print(f"[defences] {script} exited {rc}; run the same command to go on",
            flush=True)
      return rc
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
