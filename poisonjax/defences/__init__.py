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
"""
