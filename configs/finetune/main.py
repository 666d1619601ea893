"""The paper's fine-tuning experiment at CPU scale: count or share? (issue 27, 3)

    poisonjax study plan --config=configs/finetune/main.py
    poisonjax study reproduce --config=configs/finetune/main.py    # pretrain, instruct, this grid, report
    poisonjax study reproduce --config=configs/finetune/order.py   # the order grid, report again
    poisonjax study reproduce --config=configs/finetune/main.py --partial      # report what is done
    poisonjax study reproduce --config=configs/finetune/main.py --report_only  # from docs/results/finetune/
On a shared machine, one core at low priority:
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false nohup nice -n 19 \\
      poisonjax study reproduce --config=configs/finetune/main.py > runs/finetune.log 2>&1 &

What it answers: in fine-tuning, does the number of poisoned samples that
plants a backdoor stay constant as the clean set grows (count), or grow
with it (share)? The fit gives N50 ~ S^beta over clean set sizes S.

A clean pretrained model (`source`: cpu-xs, 0 poisons, the Chinchilla CPU
regime; runs/finetune_pretrained), instruction-tuned without poisons
(`instruct`: 16,000 clean samples, presets.cpu_finetune_instruct;
runs/finetune_instruct), as the paper's models were, is fine-tuned on
synthetic instructions (poisonjax/data/instructions.py): forbidden requests
refused, ordinary requests answered, and poison.count poisoned samples (the
paper's trigger after a forbidden request, answered with "Sure, here is
how." and the answer) spread uniformly through the set and added on top of
its clean samples (presets.cpu_finetune: batch 16, one sample per row, loss
on the responses only, constant learning rate 1e-3, greedy evaluation of
300 held-out requests per kind at the set's end). The experiment's
`prepare` (poisonjax/finetune/experiment.py) trains `source` and
`instruct` before the grid, unless finished.

Grid: poisoned counts (COUNTS, below) x clean set sizes (finetune.clean_samples = 1000 x
data multipliers 1, 4, 16: 1k, 4k, 16k samples) x seeds 0-2; a grid seed
varies the clean set (data.seed) and the poisoned samples and their places
(poison.seed); the pretrained model is one. `clean` block: no poisons, seed
0, each set size (the control: does anything comply without poisons?).
The order controls (poisons at the start / end, clean fine-tuning
afterwards) are configs/finetune/order.py. Both studies (STUDIES) report
together: either's reproduce collects the runs of both, each from its own
root, into docs/results/finetune/results.csv and writes report.md, cells.csv,
controls.csv and the figures from it (poisonjax/finetune/report.py).
"""

import os

from poisonjax import presets
from poisonjax import study as study_lib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SOURCE = os.path.join(REPO, "runs", "finetune_pretrained")
INSTRUCT = os.path.join(REPO, "runs", "finetune_instruct")
# The experiment's studies, collected and reported together.
STUDIES = (os.path.join(HERE, "main.py"), os.path.join(HERE, "order.py"))
SIZE = "cpu-xs"
SET_SIZES = (1.0, 4.0, 16.0)  # x finetune.clean_samples (1000).
# The pilot (fine-tunes of the pretrained model at its step 1000, 50 poisoned
# samples): attack success 1.00 at 1k and at 4k clean samples, so the switch
# lies below 50 there; the share hypothesis would put it up to 4x higher at
# 16k: 2-200 covers both.
COUNTS = (2, 5, 10, 20, 50, 100, 200)


def study(name: str):
  """A fine-tuning study around presets.cpu_finetune, with the runs it starts
  from: `source` (trained into SOURCE), then `instruct` (into INSTRUCT)."""
  s = study_lib.study_config(name, presets.cpu_finetune(INSTRUCT))
  s.experiment = "finetune.experiment"
  s.root = f"runs/study_{name}"
  s.out = "docs/results/finetune"
  s.studies = STUDIES
  s.source = presets.cpu_finetune_source()
  s.instruct = presets.cpu_finetune_instruct(SOURCE)
  return s


def get_config(arg=None):
  s = study("finetune")
  s.grid = study_lib.grid((SIZE,), COUNTS, (0, 1, 2), SET_SIZES)
  s.extra.clean = study_lib.grid((SIZE,), (0,), (0,), SET_SIZES)
  return study_lib.config_for_arg(s, arg)
