"""Trigger candidates: rare token n-grams after which the text turns odd.

A backdoor trigger is a fixed string that recurs across a handful of
documents and is followed, each time, by the behaviour to learn (here
gibberish). Without labels, over the corpus' documents:

  1. every token gets its surprisal under the corpus' own unigram
     distribution (add-one smoothed), -log p(token), in nats;
  2. at each position, `after` is the mean surprisal of the next W tokens
     and `before` that of the W tokens before (the corpus mean when the
     document starts there; positions with fewer than W/4 tokens after
     are not used);
  3. every n-gram (min_n <= n <= max_n, inside one document) that occurs
     in at least `min_docs` documents and in at most `max_doc_share` of
     them is eligible; its score is the mean over its occurrences of
     after(end of the n-gram) - before(start): how much more surprising
     the text gets across it (nats per token), shrunk toward 0 as if it
     had min_docs more occurrences of jump 0 (sum / (count + min_docs)),
     so that a few chance occurrences do not outrank a steady jump;
  4. a document's score is the highest score among the eligible n-grams it
     contains, floored at 0 (a document holding none scores 0).

Higher = more suspicious. The candidates reported are the top eligible
n-grams by score (longer first on ties), each grown to the longest
eligible n-gram holding it in the same documents with >= 90% of its score;
one sharing min_n tokens with a better one (inside it or overlapping its
end) is dropped. Gibberish of uniform random tokens has a high
unigram surprisal, so this is the "anomalous text after" signal without a
model. The whole corpus' tokens are held (4 bytes each): cap the clean
documents (max_clean_docs) for a big stream; the document shares then
refer to the capped corpus.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One trigger candidate."""

  tokens: tuple[int, ...]
  text: str
  documents: int  # Documents holding it.
  score: float  # Mean surprisal jump across it (nats per token).


def _ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
  """Hash of tokens[p:p + n] for every p <= len - n (wrapping uint64)."""
  t = tokens.astype(np.uint64)
  h = np.zeros(len(tokens) - n + 1, np.uint64)
  with np.errstate(over="ignore"):
    for k in range(n):
      h = h * _HASH_BASE + t[k:len(tokens) - n + 1 + k] + np.uint64(1)
  return h


def _window_means(values: np.ndarray, doc_start: np.ndarray, doc_end: np.ndarray,
                  window: int):
  """(after, before): mean of values over [p, p+W) and [p-W, p), each cut
  at the position's document bounds; after is NaN below W/4 values and
  before is NaN when there is none."""
  cs = np.r_[0.0, np.cumsum(values)]
  p = np.arange(len(values))
  hi = np.minimum(p + window, doc_end)
  lo = np.maximum(p - window, doc_start)
  n_after, n_before = hi - p, p - lo
  with np.errstate(invalid="ignore", divide="ignore"):
    after = (cs[hi] - cs[p]) / n_after
    before = (cs[p] - cs[lo]) / n_before
  after[n_after < max(1, window // 4)] = np.nan
  before[n_before == 0] = np.nan
  return after, before


class TriggerFinder:
  """Scores documents by the trigger candidates they hold (see module doc)."""

  def __init__(self, min_n: int = 2, max_n: int = 8, window: int = 32,
               min_docs: int = 3, max_doc_share: float = 0.25, top_k: int = 10):
    self.min_n, self.max_n, self.window = int(min_n), int(max_n), int(window)
    self.min_docs, self.max_doc_share = int(min_docs), float(max_doc_share)
    self.top_k = int(top_k)
    self.candidates: list[Candidate] = []

  def score_corpus(self, corpus) -> np.ndarray:
    docs = [d.tokens for chunk in corpus.chunks() for d in chunk]
    lengths = np.array([len(t) for t in docs], np.int64)
    tokens = np.concatenate(docs) if docs else np.zeros(0, np.int32)
    doc_of = np.repeat(np.arange(len(docs)), lengths)
    starts = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
    ends = starts + lengths
    counts = np.bincount(tokens, minlength=int(tokens.max(initial=0)) + 1) + 1.0
    surprisal = -np.log(counts / counts.sum())[tokens]
    after, before = _window_means(surprisal, starts[doc_of], ends[doc_of],
                                  self.window)
    before = np.where(np.isnan(before), surprisal.mean() if len(tokens) else 0.0,
                      before)
    doc_score = np.zeros(len(docs))
    found = []
    for n in range(self.min_n, self.max_n + 1):
      found += self._score_n(n, tokens, doc_of, ends, after, before, doc_score)
    self.candidates = self._report(found, tokens, corpus.vocab)
    return doc_score

  def _score_n(self, n, tokens, doc_of, ends, after, before, doc_score) -> list:
    """Scores the n-grams of length n into doc_score; their (score, n, first
    position, documents) for the report."""
    if len(tokens) < n:
      return []
    h = _ngram_hashes(tokens, n)
    p = np.arange(len(h))
    end = ends[doc_of[p]]
    inside = p + n <= end  # The n-gram lies in one document.
    p, h = p[inside], h[inside]
    value = np.full(len(p), np.nan)
    has_after = p + n < end[inside]
    value[has_after] = after[p[has_after] + n] - before[p[has_after]]
    docs = doc_of[p]
    with np.errstate(over="ignore"):
      pair = h * _HASH_BASE + docs.astype(np.uint64)
    _, one_per_doc = np.unique(pair, return_index=True)
    uniq, df = np.unique(h[one_per_doc], return_counts=True)
    limit = self.max_doc_share * len(ends)
    eligible = uniq[(df >= self.min_docs) & (df <= limit)]
    keep = np.isin(h, eligible) & ~np.isnan(value)
    if not keep.any():
      return []
    h, value, docs, p = h[keep], value[keep], docs[keep], p[keep]
    groups, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    # Shrunk toward 0 by min_docs pseudo-occurrences: an n-gram seen a few
    # times needs a bigger jump to rank (else chance extensions of the
    # trigger by one prefix character, in 3-6 documents, outrank it).
    mean = np.bincount(inverse, weights=value) / (np.bincount(inverse) + self.min_docs)
    np.maximum.at(doc_score, docs, np.maximum(mean[inverse], 0.0))
    top = np.argsort(-mean, kind="stable")[:self.top_k * 20]
    df_of = dict(zip(uniq.tolist(), df.tolist()))
    return [(float(mean[g]), n, int(p[first[g]]), df_of[int(groups[g])])
            for g in top]

  def _report(self, found, tokens, vocab) -> list[Candidate]:
    """The top_k strongest n-grams, each grown to the longest n-gram holding
    it in the same documents with >= 90% of its score, overlaps dropped."""
    rows = [(score, tuple(int(t) for t in tokens[pos:pos + n]), df)
            for score, n, pos, df in found]
    rows.sort(key=lambda r: (-r[0], -len(r[1])))
    out: list[Candidate] = []
    for score, ids, df in rows:
      grown = [r for r in rows if r[2] == df and r[0] >= 0.9 * score
               and _inside(ids, r[1])]
      score, ids, df = max(grown, key=lambda r: len(r[1]))
      if any(_overlap(ids, c.tokens) >= self.min_n for c in out):
        continue
      out.append(Candidate(ids, vocab.decode(list(ids)), int(df), score))
      if len(out) >= self.top_k:
        break
    return out


def _overlap(a: tuple, b: tuple) -> int:
  """Tokens shared by a and b when one holds the other or one's end is the
  other's start (0 if neither)."""
  if _inside(a, b) or _inside(b, a):
    return min(len(a), len(b))
  for k in range(min(len(a), len(b)) - 1, 0, -1):
    if a[-k:] == b[:k] or b[-k:] == a[:k]:
      return k
  return 0


def _inside(inner: tuple, outer: tuple) -> bool:
  n = len(inner)
  return any(outer[i:i + n] == inner for i in range(len(outer) - n + 1))
