"""`poisonjax defend score`: document filters measured on the stream's truth."""

from __future__ import annotations

from absl import flags

from poisonjax.commands import Command
from poisonjax.errors import UserError


def _parse_fprs(text: str) -> tuple[float, ...]:
  try:
    fprs = tuple(float(x) for x in str(text).split(",") if x.strip())
  except ValueError:
    fprs = ()
  if not fprs or not all(0 <= f < 1 for f in fprs):
    raise UserError(f"--fpr={text!r}: not rates in [0, 1); use e.g. "
                    "--fpr=0.01,0.05")
  return fprs


def score(args) -> int:
  # pylint: disable=g-import-not-at-top
  from poisonjax.defences import filters as filters_lib
  from poisonjax.defences import pipeline

  fv, config = args.flags, args.config
  names = filters_lib.parse_names(fv.filter)
  fprs = _parse_fprs(fv.fpr)
  if fv.max_clean_docs < 0 or fv.window < 2:
    raise UserError(f"--max_clean_docs={fv.max_clean_docs} --window={fv.window}: "
                    "use max_clean_docs >= 0 (0: all) and window >= 2")
  result = pipeline.score_stream(
      config, names, fv.out, reference=fv.reference,
      max_clean_docs=fv.max_clean_docs, window=fv.window, fprs=fprs)
  print(result.markdown)
  print(f"defend: wrote scores.csv, filters.csv, filters.md and filters.png "
        f"to {fv.out}")
  return 0


def _flags(fv) -> None:
  flags.DEFINE_string("filter", None, "Filters, comma-separated, or all: "
                      "perplexity, perplexity_window (need --reference), "
                      "compression, entropy, alpha, word_length, stopwords, "
                      "triggers.", flag_values=fv)
  flags.DEFINE_string("reference", None, "Workdir of a finished clean run "
                      "(same tokenizer) whose model scores perplexity.",
                      flag_values=fv)
  flags.DEFINE_string("out", "defend_out", "Directory for the table, the "
                      "figure and the per-document scores.", flag_values=fv)
  flags.DEFINE_integer("max_clean_docs", 0, "Score at most this many clean "
                       "documents, sampled deterministically (every poison "
                       "is kept); 0: all.", flag_values=fv)
  flags.DEFINE_integer("window", 64, "Tokens per sliding window.",
                       flag_values=fv)
  flags.DEFINE_string("fpr", "0.01", "Target false-positive rates, comma-"
                      "separated: the table gives each one's threshold and "
                      "recall.", flag_values=fv)


SCORE = Command(
    usage="poisonjax defend score --config=FILE --filter=NAME[,NAME] "
          "[--reference=WORKDIR] [--out=DIR] [--max_clean_docs=N]",
    summary="Scores every document of the run's stream with document "
            "filters and measures them against the manifest's exact "
            "poisons: recall, false-positive rate, ROC/PR, the threshold at "
            "1% FPR; writes a table (CSV + markdown) and a figure.",
    run=score, define_flags=_flags)
