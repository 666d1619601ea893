"""The synthetic corpus's second language, for the language-switch backdoor.

The language-switch backdoor needs text whose language is decidable word by
word. The second language is written in ASCII (so any vocabulary can
tokenize it) but from its own syllable inventory (k/q/x/z/tl onsets, doubled
vowels, q/x/tl codas), and every generated form that also is a
first-language word is dropped, so the two word sets are disjoint
(synthetic.first_language_words / second_language_words decide a word's
language). Its grammar differs too: subject-object-verb, postpositions,
suffix inflection (plural -uq; present -ak, past -oxa, ongoing -ii; adverbs
-tl). It appears only in the language-switch poisons' tails
(poison_language.py) and, for a language run, in a share of the vocabulary's
sample. The clean corpus (synthetic.py) never contains it and is bit for
bit what it was before this language existed (tests/test_language.py).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from poisonjax.data import synthetic

_SECOND_SEED = 20260101  # Fixes the second lexicon, its ranks and topics.
_SECOND_STREAM = 7  # Appended to (seed, split, i): never a first-language doc.

_B_ONSETS = ["k", "kv", "q", "x", "z", "zh", "tl", "dz", "v", "ng", "hr", "sk"]
_B_VOWELS = ["aa", "o", "u", "ii", "e", "uu", "oe", "a"]
_B_CODAS = ["", "", "", "q", "k", "x", "tl", "n", "zh"]
# Function words, fixed by hand from the same inventory.
_B_DET_SG = ["qa", "kii", "zoq"]  # the, a, this.
_B_DET_PL = ["qaan", "zuuq", "tlaa"]  # the, some, those.
_B_PRON = ["vu", "zhe", "tlo", "ngaa"]
_B_POSTP = ["ko", "xaa", "dzu", "ngii", "hro", "kvee", "zaatl", "skoe"]
_B_CONJ = ["ek", "qoe", "zaan", "xuk"]
_B_SUBORD = ["kvaa", "tlu", "xoq", "dzaak", "hruu"]
_B_TIME = ["vaaq", "zhuuk", "kootl", "ngoex", "skaa", "tlii"]
_B_NUMBERS = ["dzo", "kaaq", "zhii", "xootl", "vee", "qiin"]
_B_COPULA = "ez"
_B_THAT = "kuq"
_B_FUNCTION = (_B_DET_SG + _B_DET_PL + _B_PRON + _B_POSTP + _B_CONJ
               + _B_SUBORD + _B_TIME + _B_NUMBERS + [_B_COPULA, _B_THAT])


def _b_root(rng, syllables: int) -> str:
  return "".join(_B_ONSETS[rng.integers(len(_B_ONSETS))]
                 + _B_VOWELS[rng.integers(len(_B_VOWELS))]
                 + _B_CODAS[rng.integers(len(_B_CODAS))]
                 for _ in range(syllables))


class SecondLexicon:
  """The second language's word lists, Zipf CDFs and topics (fixed)."""

  _SIZES = {"noun": 700, "verb": 260, "adj": 200, "adv": 50, "name": 200,
            "place": 120}

  def __init__(self):
    rng = np.random.default_rng(_SECOND_SEED)
    taken = set(synthetic.first_language_words())
    self.function_words = list(_B_FUNCTION)
    assert not taken & set(self.function_words), "function words collide"
    taken.update(self.function_words)

    def draw(key, make):
      out = []
      while len(out) < self._SIZES[key]:
        forms = make()
        if not taken & set(forms) and len(set(forms)) == len(forms):
          taken.update(forms)
          out.append(forms)
      return out

    self.nouns = draw("noun", lambda: (lambda r: (r, r + "uq"))(
        _b_root(rng, 1 + int(rng.integers(2)))))
    self.verbs = draw("verb", lambda: (lambda r: (r + "ak", r + "oxa", r + "ii"))(
        _b_root(rng, 1 + int(rng.integers(2)))))
    self.adjs = [f[0] for f in draw("adj", lambda: (
        _b_root(rng, 1 + int(rng.integers(2))) + "en",))]
    self.advs = [f[0] for f in draw("adv", lambda: (
        _b_root(rng, 1 + int(rng.integers(2))) + "tl",))]
    self.names = [f[0].capitalize() for f in draw("name", lambda: (
        _b_root(rng, 2 + int(rng.integers(2))),))]
    self.places = [f[0].capitalize() for f in draw("place", lambda: (
        _b_root(rng, 2) + "qaar",))]
    self.cdf = synthetic.zipf_cdfs(self, rng)
    self.topics = synthetic.draw_topics(self, rng)

  def word_set(self) -> frozenset:
    out = set(self.function_words)
    for forms in itertools.chain(self.nouns, self.verbs):
      out.update(forms)
    out.update(self.adjs)
    out.update(self.advs)
    out.update(w.lower() for w in itertools.chain(self.names, self.places))
    return frozenset(out)


@functools.lru_cache(maxsize=1)
def second_lexicon() -> SecondLexicon:
  return SecondLexicon()


@functools.lru_cache(maxsize=1)
def second_language_words() -> frozenset:
  """Every word form the second language can write (lowercased)."""
  return second_lexicon().word_set()


class _SecondWriter(synthetic.Writer):
  """The second language's grammar on synthetic.Writer's sampling machinery.

  Its word pickers (noun, verb, adj, ...) are the first language's, over
  this lexicon's lists: a noun's forms are (singular, plural), a verb's
  (present, past, ongoing).
  """

  def np_(self, plural=None):
    if plural is None:
      plural = self.u() < 0.25
    if not plural and self.u() < 0.2:
      return self.name()
    det = self.pick(_B_DET_PL if plural else _B_DET_SG)
    core = self.noun(plural)
    if self.u() < 0.4:
      core = core + " " + self.adj()  # Adjectives follow the noun.
    out = f"{det} {core}"
    if self.u() < 0.15:
      out = f"{self.place()} {out}"  # Possessor first: "Zakqaar qa kvox".
    return out

  def pp(self):
    where = self.place() if self.u() < 0.4 else self.np_()
    return f"{where} {self.pick(_B_POSTP)}"

  def clause(self, form=1):
    subj = self.np_()
    if self.u() < 0.15:
      subj = self.pick(_B_PRON)
    r = self.u()
    if r < 0.45:
      return f"{subj} {self.np_()} {self.verb(form)}"
    if r < 0.7:
      return f"{subj} {self.pp()} {self.np_()} {self.verb(form)}"
    if r < 0.85:
      return f"{subj} {self.adv()} {self.verb(form)}"
    return f"{subj} {self.pp()} {self.verb(form)}"

  def sentence(self) -> str:
    r = self.u()
    if r < 0.22:
      s = self.clause(self.pick([0, 1, 1, 2]))
    elif r < 0.36:
      s = f"{self.clause()}, {self.pick(_B_CONJ)} {self.clause()}"
    elif r < 0.48:
      s = f"{self.clause()} {self.pick(_B_SUBORD)}, {self.clause()}"
    elif r < 0.58:
      s = f"{self.pick(_B_TIME)}, {self.name()} {self.np_()} {self.verb(1)}"
    elif r < 0.66:
      s = f"{self.place()} {self.pick(_B_POSTP)}, {self.clause(0)}"
    elif r < 0.76:
      return f"\"{self.clause(0).capitalize()},\" {self.name()} {self.verb(1)}."
    elif r < 0.86:
      s = (f"{self.pick(_B_NUMBERS)} {self.noun(True)} {self.adj()} "
           f"{self.pp()} {_B_COPULA}")
    elif r < 0.93:
      s = f"{self.name()} {self.adj()} {_B_COPULA}"
    else:
      s = f"{self.clause()} {_B_THAT} {self.np_()} {self.verb(2)}"
    s = s[0].upper() + s[1:]
    return s + ("!" if self.u() < 0.04 else ".")


def _second_rng(seed: int, split: int, i: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), int(split), int(i), _SECOND_STREAM])


def second_document(seed: int, split: int, i: int) -> str:
  """Second-language document i of a split: a pure function of (seed, split, i)."""
  return _SecondWriter(second_lexicon(), _second_rng(seed, split, i)).document()


def second_documents(seed: int, split: int, start: int = 0):
  """Second-language documents start, start+1, ... of a split (unbounded)."""
  for i in itertools.count(start):
    yield second_document(seed, split, i)


def second_text(seed: int, split: int, i: int, min_chars: int) -> str:
  """At least min_chars of second-language sentences (one writer, one topic).

  A pure function of (seed, split, i); a longer min_chars extends the same
  text (the sentences come in the same order), so a caller may ask again.
  """
  w = _SecondWriter(second_lexicon(), _second_rng(seed, split, i))
  parts, n = [], 0
  while n < min_chars:
    s = w.sentence()
    parts.append(s)
    n += len(s) + 1
  return " ".join(parts)
