"""A config's stream scored by the named filters, written to a directory.

What `poisonjax defend score` and the defences studies call: builds (or
finds) the run's stream exactly as training reads it, splits it into
documents with their ground truth, scores them, and writes

  OUT/scores.csv    per document: stream index, start, end, poison id, scores
  OUT/filters.csv   per filter: AUC, AP, threshold/recall/FPR per target FPR
  OUT/filters.md    the same table, what each score means, trigger candidates
  OUT/filters.png   ROC and precision-recall curves
  OUT/scoring.json  what was scored and the trigger candidates (`summary`),
                    so filters.md can be rewritten from the files alone
"""

from __future__ import annotations

import dataclasses

from poisonjax import budget
from poisonjax import files
from poisonjax.data import documents
from poisonjax.data import overlay, vocabulary
from poisonjax.defences import filters as filters_lib, report, scoring
from poisonjax.defences import textstats
from poisonjax.errors import UserError

SCORING = "scoring.json"


@dataclasses.dataclass
class Result:
  rows: list[dict]
  table: scoring.ScoreTable
  corpus: documents.Corpus
  candidates: list  # triggers.Candidate, when the trigger finder ran.
  summary: dict  # What was scored (`summary`), as written to scoring.json.
  markdown: str


def stream_of(config):
  """The run's training stream (per-run cache or store overlay)."""
  vocab = vocabulary.get_vocabulary(config)
  T = int(budget.clean_token_budget(config, vocab.vocab_size))
  return overlay.training_stream(config, T)


def score_stream(config, names: list[str], out: str, reference: str | None = None,
                 max_clean_docs: int = 0, window: int = textstats.DEFAULT_WINDOW,
                 fprs=(0.01,), seed: int = 0, finder=None, log=print) -> Result:
  """Scores the stream of `config` with `names` and writes OUT's files."""
  from poisonjax.data import vocabulary
  fl = filters_lib.make_filters(names, vocabulary.get_vocabulary(config),
                                reference, window, finder)
  stream = stream_of(config)
  corpus = documents.Corpus(stream, max_clean_docs=max_clean_docs, seed=seed)
  if corpus.num_poisons == 0 or corpus.num_poisons == len(corpus):
    raise UserError(f"config.poison.count={int(config.poison.count)}: the "
                    f"stream holds {corpus.num_poisons} poisons among "
                    f"{len(corpus)} documents; scoring needs both poisons "
                    "and clean documents")
  log(f"defend: {len(corpus)} documents ({corpus.num_poisons} poisons, "
      f"{len(corpus) - corpus.num_poisons} of {corpus.num_stream_clean} clean) "
      f"from {stream.dir}")
  table = scoring.score_corpus(corpus, fl, log=log)
  rows = report.summary_rows(table, fprs)
  candidates = next((f.finder.candidates for f in fl
                     if isinstance(f, filters_lib.CorpusFilter)), [])
  facts = summary(config, corpus, candidates, window)
  md = markdown(facts, rows, fprs)
  d = files.as_path(out)
  d.mkdir(parents=True, exist_ok=True)
  files.write_json(d / SCORING, facts)
  scoring.write_scores_csv(table, str(d / "scores.csv"))
  report.write_csv(rows, str(d / "filters.csv"))
  files.write_text_atomic(str(d / "filters.md"), md)
  report.plot_curves(table, str(d / "filters.png"),
                     title=f"{corpus.num_poisons} poisons vs "
                           f"{len(corpus) - corpus.num_poisons} clean documents")
  return Result(rows, table, corpus, candidates, facts, md)


def summary(config, corpus, candidates, window: int) -> dict:
  """What was scored and the trigger candidates: the facts filters.md states
  beside the table (json-ready)."""
  return {"trigger": str(config.poison.trigger), "poisons": int(corpus.num_poisons),
          "clean_scored": int(len(corpus) - corpus.num_poisons),
          "stream_clean": int(corpus.num_stream_clean), "window": int(window),
          "candidates": [{"text": c.text, "tokens": [int(t) for t in c.tokens],
                          "documents": int(c.documents), "score": float(c.score)}
                         for c in candidates]}


def markdown(facts: dict, rows: list[dict], fprs) -> str:
  """filters.md: what was scored, the table (report.markdown), the candidates."""
  clean, stream_clean = facts["clean_scored"], facts["stream_clean"]
  sampled = (f"{clean} of the {stream_clean} clean documents "
             "(sampled)" if clean < stream_clean
             else f"all {clean} clean documents")
  head = (f"Scored: {facts['poisons']} poisons (all; trigger "
          f"{facts['trigger']!r}) and {sampled}; windows of {facts['window']} "
          "tokens. A document is flagged when its score >= the threshold; "
          "the threshold at X% FPR is the one with the best recall among those "
          "flagging at most X% of the clean documents (the highest such "
          "threshold).\n\n")
  out = head + report.markdown(rows, fprs)
  if facts["candidates"]:
    out += "\nTrigger candidates (trigger finder, best first):\n\n"
    out += "| n-gram | tokens | documents | surprisal jump (nats/token) |\n"
    out += "|---|---|---|---|\n"
    for c in facts["candidates"]:
      out += (f"| `{c['text']}` | {c['tokens']} | {c['documents']} | "
              f"{c['score']:.3f} |\n")
  return out
