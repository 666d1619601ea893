"""The filters by name: each maps documents to scores, higher = more suspicious.

Two kinds. A document filter is a function of one document (its tokens
and text), applied chunk by chunk (`score_chunk`); the perplexity pair
shares one batched forward pass per chunk. A corpus filter (the trigger
finder) needs statistics over every document first (`score_corpus`).
A flagged set is then the documents whose score is >= a threshold
(metrics.flagged), whatever the filter.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from poisonjax.defences import perplexity, quality, textstats, triggers
from poisonjax.errors import UserError, field_error

# name -> what a higher score means (the table and --help say it).
DESCRIPTIONS = {
    "perplexity": "mean NLL (nats/token) of the whole document under the "
                  "clean reference model",
    "perplexity_window": "highest mean NLL over windows of W tokens under "
                         "the clean reference model",
    "compression": "highest zlib compressed/raw ratio over windows of 4W "
                   "bytes of the text (less compressible)",
    "entropy": "highest token entropy (bits) over windows of W tokens",
    "alpha": "1 - share of words holding a letter",
    "word_length": "|mean word length - 4.7| (characters)",
    "stopwords": "1 - share of words that are common function words",
    "triggers": "highest surprisal jump across a rare recurring n-gram the "
                "document holds (trigger candidates)",
}
NAMES = tuple(DESCRIPTIONS)
# Compression windows: 4 bytes of text per token of the window W (about a
# token of English text at these vocabularies), fixed in bytes (textstats).
BYTES_PER_TOKEN = 4
REFERENCE_FILTERS = ("perplexity", "perplexity_window")


@dataclasses.dataclass
class DocumentFilter:
  """Scores a chunk of documents, each on its own."""

  name: str
  score_chunk: Callable[[list], np.ndarray]

  @property
  def description(self) -> str:
    return DESCRIPTIONS[self.name]


@dataclasses.dataclass
class CorpusFilter:
  """Scores all the corpus' documents at once (it needs corpus statistics)."""

  name: str
  finder: triggers.TriggerFinder

  @property
  def description(self) -> str:
    return DESCRIPTIONS[self.name]

  def score_corpus(self, corpus) -> np.ndarray:
    return self.finder.score_corpus(corpus)


def parse_names(text: str) -> list[str]:
  """`--filter=a,b` (or `all`) as names; UserError naming the unknown one."""
  names = [n.strip() for n in str(text or "").split(",") if n.strip()]
  if names == ["all"]:
    return list(NAMES)
  unknown = [n for n in names if n not in DESCRIPTIONS]
  if not names or unknown:
    problem = f"unknown filter {unknown[0]!r}" if unknown else "no filter named"
    raise field_error("--filter", text, problem,
                      f"use one or more of {', '.join(NAMES)} (comma-"
                      "separated) or all")
  return list(dict.fromkeys(names))


def _per_document(fn) -> Callable[[list], np.ndarray]:
  return lambda docs: np.array([fn(d) for d in docs], np.float64)


def make_filters(names: list[str], vocab, reference: str | None = None,
                 window: int = textstats.DEFAULT_WINDOW,
                 finder: triggers.TriggerFinder | None = None) -> list:
  """The named filters. The perplexity ones load `reference` (a run's
  workdir) once and share it."""
  needs_ref = [n for n in names if n in REFERENCE_FILTERS]
  if needs_ref and not reference:
    raise UserError(f"--filter={','.join(needs_ref)}: needs a clean reference "
                    "model; pass --reference=WORKDIR of a finished clean run")
  scorer = perplexity.ReferenceScorer(reference, vocab) if needs_ref else None
  fns = {
      "perplexity": lambda docs: np.array(
          [perplexity.document_nll(x) for x in scorer.token_nlls(docs)]),
      "perplexity_window": lambda docs: np.array(
          [perplexity.worst_window_nll(x, window) for x in scorer.token_nlls(docs)]),
      "compression": _per_document(lambda d: textstats.worst_window_compression(
          d.text, BYTES_PER_TOKEN * window)),
      "entropy": _per_document(
          lambda d: textstats.worst_window_entropy(d.tokens, window)),
      "alpha": _per_document(lambda d: quality.alpha_score(d.text)),
      "word_length": _per_document(lambda d: quality.word_length_score(d.text)),
      "stopwords": _per_document(lambda d: quality.stopword_score(d.text)),
  }
  out = []
  for name in names:
    if name == "triggers":
      out.append(CorpusFilter(name, finder or triggers.TriggerFinder()))
    else:
      out.append(DocumentFilter(name, fns[name]))
  return out
