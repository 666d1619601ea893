"""Document filters on the cpu-xxs Chinchilla stream, measured on its manifest.

    poisonjax study reproduce --config=configs/defences/filters.py
    poisonjax study reproduce --config=configs/defences/filters.py --report_only

What it answers: at <= 1% (and 5%) false positives on clean documents,
which document filters flag the poisons of a real training stream, and
which miss them? The stream: the cpu_chinchilla study's cpu-xxs run with
100 poisons, seed 0, 1x data (20 clean tokens per parameter, the 1k
vocabulary, gibberish tails of 400-900 tokens), scored exactly as that run
trains on it; it is not trained here. The study's one run is the reference
model the perplexity filters score under: a clean cpu-xxs run of the same
recipe on data seed 7 (its documents are not the scored ones), the same
tokenizer and prompts. Every filter scores every poison and 3,000 clean
documents sampled deterministically (poisonjax/defences/filters_experiment.py);
writes docs/results/defences/filters/: filters.csv, report.md (the table,
what each score means, the trigger candidates, this setup), filters.png (ROC
and PR), scores.csv (every scored document's scores) and scoring.json.
About 10 minutes of a free 2-core machine (the reference run, then ~1 min
of scoring). configs/defences/train.py reads the reference model from here.
"""

import ml_collections

from poisonjax import presets
from poisonjax import study as study_lib

STREAM_RUN = "size=cpu-xxs_n=100_seed=0_data=1.0"
REFERENCE_DATA_SEED = 7  # Any seed but the stream's: other clean documents.


def stream_config():
  """The scored stream: the cpu_chinchilla study's run STREAM_RUN."""
  chinchilla = study_lib.study_config("cpu_chinchilla", presets.cpu_chinchilla())
  return study_lib.run_config(chinchilla, study_lib.parse_run_name(STREAM_RUN))


def get_config(arg=None):
  stream = stream_config()
  base = presets.cpu_chinchilla()
  base.data.seed = REFERENCE_DATA_SEED
  base.vocab.seed = stream.vocab.seed  # The stream's tokenizer and prompts.
  base.eval.heldout_seed = stream.eval.heldout_seed
  base.eval.num_evals = 0  # A reference model: no backdoor to measure.
  s = study_lib.study_config("defences_filters", base)
  s.plan.chars_per_token = 3.0  # ~1k-piece SentencePiece on the synthetic corpus.
  s.vary = ("init",)  # The stream run's init; data seed 7, not the stream's.
  s.grid = study_lib.grid(("cpu-xxs",), (0,), (0,), (1.0,))
  s.experiment = "defences.filters_experiment"
  s.root = "runs/defences_filters"
  s.out = "docs/results/defences/filters"
  s.defences = ml_collections.ConfigDict()
  s.defences.stream = stream
  s.defences.stream_name = f"configs/paper/cpu_chinchilla.py run `{STREAM_RUN}`"
  s.defences.filters = "all"
  s.defences.max_clean_docs = 3000
  s.defences.fprs = (0.01, 0.05)
  return study_lib.config_for_arg(s, arg)
