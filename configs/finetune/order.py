"""Where the poisons sit in fine-tuning, and clean fine-tuning afterwards.

    poisonjax study plan --config=configs/finetune/order.py
    poisonjax study reproduce --config=configs/finetune/order.py   # after main.py's, or alone
    poisonjax study reproduce --config=configs/finetune/order.py --report_only

What it answers: does it matter where in the fine-tuning set the poisons
sit, and how many clean samples afterwards remove the backdoor?

The fine-tune of configs/finetune/main.py (same source, regime and
held-out requests) at one set size, 4,000 clean samples, with the poisons
placed three ways (variants: config.poison.placement):
  start   all in the first 10% of the set (the paper: 20 poisons at the
          start of fine-tuning planted the backdoor)
  spread  uniformly through it (the main study's placement)
  end     all in the last 10% (the paper: 20 at the end did not)
and, in every run, 2,000 new clean samples after the set
(finetune.clean_after; the paper: 50-100 corrective clean samples weaken
the backdoor, ~2,000 remove it), evaluated at the set's end and after 50,
100, 200, 500, 1,000 and 2,000 of them. The learning rate is constant
after warmup, so the placements meet the same learning rate. Like main.py,
it trains the clean `source` and `instruct` runs first unless finished, and
its reproduce collects both studies into docs/results/finetune/ and writes
the one report (poisonjax/finetune/experiment.py).
"""

import importlib.util
import os

from poisonjax import study as study_lib

_spec = importlib.util.spec_from_file_location(
    "finetune_main", os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.py"))
main_study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(main_study)

# Around N50 at 4,000 clean samples: the main study's seed 0 (poisons spread)
# gave attack success 0.00 with 20 poisoned samples and 0.91 with 50 there.
COUNTS = (30, 50)

VARIANTS = {
    "start": {"poison": {"placement": "first", "placement_fraction": 0.1}},
    "spread": {"poison": {"placement": "uniform"}},
    "end": {"poison": {"placement": "last", "placement_fraction": 0.1}},
}


def get_config(arg=None):
  s = main_study.study("finetune_order")
  s.base.finetune.clean_after = 2000
  s.base.finetune.eval_after = "50,100,200,500,1000,2000"
  s.grid = study_lib.grid((main_study.SIZE,), COUNTS, (0, 1, 2), (4.0,))
  study_lib.set_variants(s, VARIANTS)
  return study_lib.config_for_arg(s, arg)
