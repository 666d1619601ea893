"""Defences measured on the stream's exact ground truth (issue 14).

A filter gives every document a score, higher = more suspicious; a flagged
set is the documents whose score is >= a threshold. Because the stream's
spans say exactly which documents are poisons, each filter's recall and
false-positive rate are counted, not estimated. The stream split into
labelled documents is poisonjax/data/documents.py (filter-then-train,
data/filtered.py, reads the same split).

  textstats.py   zlib compression ratio and token entropy in sliding windows
  quality.py     word-level quality heuristics (alphabetic share, ...)
  perplexity.py  per-token NLL under a clean reference run's checkpoint
  triggers.py    rare n-grams that recur before anomalous text
  filters.py     the filters by name (what `--filter=` accepts)
  metrics.py     recall/FPR at thresholds, ROC/PR curves, AUC (numpy)
  scoring.py     runs filters over a corpus; the per-document score table
  report.py      the table (CSV + markdown) and the ROC/PR figure
  pipeline.py    a config's stream scored and written (`defend score`)
  scan.py        scanning a trained model for its trigger (`defend scan`)
The defences studies' steps (configs/defences/*.py name them in
study.experiment: after_run/collect/report, poisonjax/study/experiment.py):
  filters_experiment.py  the filters on one stream vs a reference model
  train_experiment.py    filter, then train; adaptive poisons
  scan_experiment.py     the blind scan of a study's trained runs
"""
