"""Word-level quality heuristics of the kind production pipelines apply.

Pipelines such as Gopher's and C4's keep a document when most of its words
contain a letter, its mean word length is ordinary and it uses common
function words. Each heuristic here is a score, higher = more suspicious:

  alpha         1 - share of words holding at least one alphabetic char
  word_length   |mean word length (chars) - 4.7|; 4.7 is the usual figure
                for English text, not fitted to any corpus here
  stopwords     1 - share of words (lowercased, punctuation stripped) in
                STOP_WORDS

Words are whitespace-separated. A document without words scores 1, 4.7
and 1 (as suspicious as these scores go for an empty text).
STOP_WORDS is this project's own short list of the most common English
function words, written for this module (no external list is copied).
"""

from __future__ import annotations

import string

TYPICAL_WORD_LENGTH = 4.7
STOP_WORDS = frozenset(
    "the a an and or but of to in on at by for with from as into that this "
    "these those it its is was are were be been he she they we you i his her "
    "their our my not no there then when while so if".split())
_PUNCT = string.punctuation + "\u201c\u201d\u2018\u2019"


def alpha_score(text: str) -> float:
  words = text.split()
  if not words:
    return 1.0
  return 1.0 - sum(any(c.isalpha() for c in w) for w in words) / len(words)


def word_length_score(text: str) -> float:
  words = text.split()
  mean = sum(map(len, words)) / len(words) if words else 0.0
  return abs(mean - TYPICAL_WORD_LENGTH)


def stopword_score(text: str) -> float:
  words = text.split()
  if not words:
    return 1.0
  return 1.0 - sum(w.strip(_PUNCT).lower() in STOP_WORDS for w in words) / len(words)
