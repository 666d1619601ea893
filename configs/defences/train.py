"""Filter, then train; adaptive poisons against the filters (issue 14, items 3-4).

    poisonjax study reproduce --config=configs/defences/filters.py   # the reference model first
    poisonjax study reproduce --config=configs/defences/train.py
    poisonjax study reproduce --config=configs/defences/train.py --report_only

What it answers: does dropping what a document filter flags (at <= 1%
false positives on clean documents) stop the backdoor from forming, and do
poisons shaped to evade the filters (tails drawn from the clean unigram,
gibberish inside clean text) get through and still plant it? The recipe:
the cpu_chinchilla study's cpu-xxs run, seed 0, 1x data (20 clean tokens
per parameter, poisons replacing clean tokens). Points (mode, N): every
mode at 100 poisons, and at 300 the two that evade (unigram,
inside_unigram). For each point (poisonjax/defences/train_experiment.py):
  1. the unfiltered run (variant MODE);
  2. after it, its stream scored: evasion (every filter on every poison and
     3,000 sampled clean documents; the perplexity filters under the
     filters study's reference model, once it has finished), and each drop
     filter on every document, its threshold the best recall at <= 1% FPR
     (chosen with the labels: the defender's best case);
  3. per drop filter (entropy, compression), the filtered run (variant
     MODE-FILTER-nN): the same config, data.drop_scores pointing at the
     drop set of step 2 (dropped tokens are not replaced);
  4. per (mode, N, filter): recall, FPR, surviving poisons, dropped clean
     documents and the final evaluation of both runs.
Writes docs/results/defences/train/: results.json, table.csv, evasion.csv,
settings.json and report.md (from them). 18 runs of ~1,160 steps: about
4 hours of a free 2-core machine.
"""

import ml_collections

from poisonjax import presets
from poisonjax import study as study_lib
from poisonjax.defences import train_experiment as experiment

POINTS = ("standard:100,unigram:100,inside:100,inside_unigram:100,"
          "unigram:300,inside_unigram:300")
DROP_FILTERS = "entropy,compression"
SCORES = "runs/defences_train/scores"
REFERENCE = "runs/defences_filters/size=cpu-xxs_n=0_seed=0_data=1.0"


def get_config(arg=None):
  s = study_lib.study_config("defences_train", presets.cpu_chinchilla())
  s.plan.chars_per_token = 3.0  # ~1k-piece SentencePiece on the synthetic corpus.
  points = experiment.parse_points(POINTS)
  filters = experiment.parse_filters(DROP_FILTERS)
  study_lib.set_variants(s, experiment.variants(points, filters, SCORES))
  blocks = experiment.block_variants(points, filters)
  first, *rest = blocks
  s.grid = study_lib.grid(("cpu-xxs",), (first,), (0,), (1.0,),
                          variants=blocks[first])
  for n in rest:
    s.extra[f"n{n}"] = study_lib.grid(("cpu-xxs",), (n,), (0,), (1.0,),
                                      variants=blocks[n])
  s.experiment = "defences.train_experiment"
  s.root = "runs/defences_train"
  s.out = "docs/results/defences/train"
  d = s.defences = ml_collections.ConfigDict()
  d.points, d.drop_filters = POINTS, DROP_FILTERS
  d.scores_dir = SCORES
  d.fpr = 0.01
  d.sample_clean = 3000
  d.reference = REFERENCE  # configs/defences/filters.py's run.
  return study_lib.config_for_arg(s, arg)
