"""The embedded synthetic corpus: English-like stories that need no download.

Document i of a split is a pure function of (seed, split, i), so the supply
is unbounded and any document can be regenerated on its own. The splits are
disjoint by construction (the split id is part of the RNG seed):
train (0), heldout (1), and the poison-prefix pool (2).

Why this shape: the study needs a corpus a ~1M-parameter model can learn
(grammar, recurring names, topical words) but cannot memorize to a
perplexity near 1, so words are drawn Zipf-like from a ~2.5k-word lexicon
(plus generated names and places), a per-document topic biases nouns,
verbs and adjectives, and sentences come from a small grammar with several
templates. Generation draws its random numbers in vectorized blocks and
picks words by bisection, so it runs at several MB of text per second.

A second language (second_language.py) reuses Writer's sampling machinery
with its own lexicon and grammar; first_language_words() below is the word
set it must stay disjoint from (and half of the language-switch metric).
"""

from __future__ import annotations

import bisect
import functools
import importlib.resources
import itertools
import re

import numpy as np

TRAIN, HELDOUT, POOL = 0, 1, 2
SPLITS = {"train": TRAIN, "heldout": HELDOUT, "pool": POOL}

MIN_CHARS, MAX_CHARS = 100, 3000
NUM_TOPICS = 24
_LEXICON_SEED = 20251008  # Fixes the Zipf ranks, names, places and topics.

_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "ia", "y"]
_ONSETS = ["b", "br", "c", "ch", "d", "dr", "f", "g", "gr", "h", "j", "k", "l",
           "m", "n", "p", "r", "s", "sh", "st", "t", "th", "tr", "v", "w", "z"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "st", "x"]
_PLACE_SUFFIX = ["ford", "ton", "vale", "wick", "mere", "holm", "bury", "field",
                 "stead", "haven", "moor", "crest", "by", "dale", "port"]
_PREPS = ["in", "near", "behind", "under", "over", "beside", "across", "through",
          "along", "beyond", "inside", "around", "toward", "past"]
_NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine",
            "ten", "twelve", "twenty", "a hundred", "several", "many", "a few"]
_CONJ = ["and", "but", "so", "while", "yet"]
_SUBORD = ["When", "After", "Before", "Because", "Although", "Until", "Once",
           "As soon as", "Since", "If"]
_SAY = ["said", "asked", "whispered", "shouted", "replied", "answered",
        "explained", "added", "warned", "laughed"]
_TIME = ["That morning", "The next day", "Later that night", "In the evening",
         "At dawn", "Years ago", "One winter", "By noon", "Every summer",
         "Long before", "Soon after", "On the third day"]


def _inflect_noun(word: str) -> tuple[str, str]:
  if "/" in word:
    s, p = word.split("/")
    return s, p
  if word.endswith(("s", "sh", "ch", "x", "z")):
    return word, word + "es"
  if word.endswith("y") and word[-2] not in "aeiou":
    return word, word[:-1] + "ies"
  if word.endswith("f") and not word.endswith("ff") and word not in ("roof", "chief", "belief"):
    return word, word[:-1] + "ves"
  if word.endswith("fe"):
    return word, word[:-2] + "ves"
  return word, word + "s"


def _doubles(w: str) -> bool:
  """Short consonant-vowel-consonant verbs double the last letter (stop)."""
  v = "aeiou"
  if len(w) < 3 or w[-1] in v + "wxy" or w[-2] not in v or w[-3] in v:
    return False
  return len(w) == 3 or (len(w) == 4 and w[0] not in v and w[1] not in v)


def _inflect_verb(word: str) -> tuple[str, str, str, str]:
  """(base, 3rd person singular, past, -ing)."""
  past = None
  if "/" in word:
    word, past = word.split("/")
  parts = word.split("-")  # phrasal verbs: inflect the first word.
  head, tail = parts[0], ("-" + "-".join(parts[1:])) if len(parts) > 1 else ""
  tail = tail.replace("-", " ")
  if head.endswith(("s", "sh", "ch", "x", "z", "o")):
    third = head + "es"
  elif head.endswith("y") and head[-2] not in "aeiou":
    third = head[:-1] + "ies"
  else:
    third = head + "s"
  if past is None:
    if head.endswith("e"):
      past = head + "d"
    elif head.endswith("y") and head[-2] not in "aeiou":
      past = head[:-1] + "ied"
    elif _doubles(head):
      past = head + head[-1] + "ed"
    else:
      past = head + "ed"
  if head.endswith("ie"):
    ing = head[:-2] + "ying"
  elif head.endswith("e") and not head.endswith(("ee", "ye", "oe")):
    ing = head[:-1] + "ing"
  elif _doubles(head):
    ing = head + head[-1] + "ing"
  else:
    ing = head + "ing"
  return head + tail, third + tail, past + tail, ing + tail


def _zipf_cdf(n: int, rng: np.random.Generator, s: float = 1.0) -> tuple[list, list]:
  """A Zipf-like distribution over n items in a fixed random rank order."""
  order = rng.permutation(n)
  w = 1.0 / (np.arange(n) + 2.7) ** s
  p = np.empty(n)
  p[order] = w / w.sum()
  return np.cumsum(p).tolist(), order.tolist()


_WORD_LISTS = (("noun", "nouns"), ("verb", "verbs"), ("adj", "adjs"),
               ("adv", "advs"), ("name", "names"), ("place", "places"))


def zipf_cdfs(lex, rng: np.random.Generator) -> dict[str, list]:
  """A lexicon's Zipf CDF per word kind, drawn in a fixed order."""
  return {key: _zipf_cdf(len(getattr(lex, attr)), rng)[0]
          for key, attr in _WORD_LISTS}


def draw_topics(lex, rng: np.random.Generator) -> list[dict]:
  """NUM_TOPICS topics, each a few favoured nouns, verbs and adjectives."""
  return [{
      "noun": rng.choice(len(lex.nouns), 40, replace=False).tolist(),
      "verb": rng.choice(len(lex.verbs), 20, replace=False).tolist(),
      "adj": rng.choice(len(lex.adjs), 15, replace=False).tolist(),
  } for _ in range(NUM_TOPICS)]


class Lexicon:
  """Word lists, their Zipf CDFs, and the topics (fixed for all seeds)."""

  def __init__(self):
    text = importlib.resources.files("poisonjax.data").joinpath(
        "assets/lexicon.txt").read_text()
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      if line.startswith("["):
        current = sections.setdefault(line.strip("[]"), [])
        continue
      for w in line.split():
        if w not in current:
          current.append(w)
    rng = np.random.default_rng(_LEXICON_SEED)
    self.nouns = [_inflect_noun(w.replace("-", " ") if "/" not in w else w)
                  for w in sections["noun"]]
    self.verbs = [_inflect_verb(w) for w in sections["verb"]]
    self.adjs = [w.replace("-", "-") for w in sections["adjective"]]
    self.advs = sections["adverb"]
    names = set()
    while len(names) < 400:
      k = 1 + int(rng.integers(1, 3))
      name = "".join(_ONSETS[rng.integers(len(_ONSETS))] +
                     _VOWELS[rng.integers(len(_VOWELS))] for _ in range(k))
      name += _CODAS[rng.integers(len(_CODAS))]
      if 3 <= len(name) <= 9:
        names.add(name.capitalize())
    self.names = sorted(names)
    places = set()
    while len(places) < 250:
      root = (_ONSETS[rng.integers(len(_ONSETS))] +
              _VOWELS[rng.integers(len(_VOWELS))] + _CODAS[rng.integers(len(_CODAS))])
      places.add((root + _PLACE_SUFFIX[rng.integers(len(_PLACE_SUFFIX))]).capitalize())
    self.places = sorted(places)
    self.cdf = zipf_cdfs(self, rng)
    self.topics = draw_topics(self, rng)

  def distinct_words(self) -> int:
    words = set()
    for forms in itertools.chain(self.nouns, self.verbs):
      for f in forms:
        words.update(f.split())
    words.update(self.adjs)
    words.update(self.advs)
    words.update(self.names)
    words.update(self.places)
    return len(words)


@functools.lru_cache(maxsize=1)
def lexicon() -> Lexicon:
  return Lexicon()


class Writer:
  """Writes one document; all randomness comes from pre-drawn uniforms."""

  def __init__(self, lex: Lexicon, rng: np.random.Generator):
    self.lex = lex
    self.rng = rng
    self._u: list[float] = []
    self.topic = lex.topics[int(rng.integers(NUM_TOPICS))]
    self.topic_p = 0.25 + 0.35 * float(rng.random())
    n_chars = 2 + int(rng.integers(3))
    self.chars = self._distinct("name", n_chars)
    self.places = self._distinct("place", 1 + int(rng.integers(3)))
    # The first character is the protagonist: named most often.
    w = np.array([3.0] + [1.0] * (n_chars - 1))
    self.char_cdf = np.cumsum(w / w.sum()).tolist()
    self.last_name = self.chars[0]

  def _distinct(self, key, k):
    out = []
    pool = self.lex.names if key == "name" else self.lex.places
    while len(out) < k:
      x = pool[bisect.bisect(self.lex.cdf[key], self.u())]
      if x not in out:
        out.append(x)
    return out

  def u(self) -> float:
    if not self._u:
      self._u = self.rng.random(512).tolist()
    return self._u.pop()

  def pick(self, seq):
    return seq[min(int(self.u() * len(seq)), len(seq) - 1)]

  def _idx(self, key, n):
    if key in self.topic and self.u() < self.topic_p:
      return self.pick(self.topic[key])
    return min(bisect.bisect(self.lex.cdf[key], self.u()), n - 1)

  def noun(self, plural=False):
    return self.lex.nouns[self._idx("noun", len(self.lex.nouns))][1 if plural else 0]

  def verb(self, form):
    return self.lex.verbs[self._idx("verb", len(self.lex.verbs))][form]

  def adj(self):
    return self.lex.adjs[self._idx("adj", len(self.lex.adjs))]

  def adv(self):
    return self.lex.advs[min(bisect.bisect(self.lex.cdf["adv"], self.u()),
                             len(self.lex.advs) - 1)]

  def name(self):
    n = self.chars[bisect.bisect(self.char_cdf, self.u())
                   if self.u() < 0.9 else int(self.u() * len(self.chars)) % len(self.chars)]
    self.last_name = n
    return n

  def place(self):
    return self.pick(self.places)

  # ---- grammar ----------------------------------------------------------
  def np_(self, plural=None):
    r = self.u()
    if plural is None:
      plural = self.u() < 0.25
    if r < 0.2 and not plural:
      return self.name()
    det = self.pick(["the", "the", "a", "this", "that", "his", "her", "their"]) \
        if not plural else self.pick(["the", "some", "those", "their", "many"])
    if det == "a":
      pass
    core = self.noun(plural)
    if self.u() < 0.4:
      core = self.adj() + " " + core
    if det == "a" and core[0] in "aeiou":
      det = "an"
    out = f"{det} {core}"
    if self.u() < 0.15:
      out += f" of {self.place()}" if self.u() < 0.5 else f" of the {self.noun()}"
    return out

  def vp(self, form=2):
    r = self.u()
    v = self.verb(form)
    if r < 0.45:
      out = f"{v} {self.np_()}"
    elif r < 0.7:
      out = f"{v} {self.np_()} {self.pick(_PREPS)} {self.np_()}"
    elif r < 0.85:
      out = f"{v} {self.adv()}"
    else:
      out = f"{v} {self.pick(_PREPS)} {self.place() if self.u() < 0.5 else self.np_()}"
    return out

  def clause(self):
    subj = self.np_()
    if subj[0].islower() and self.u() < 0.15:
      subj = self.pick(["he", "she", "they", "it"])
    return f"{subj} {self.vp()}"

  def sentence(self) -> str:
    r = self.u()
    if r < 0.18:
      s = f"{self.name()} {self.vp()}"
    elif r < 0.30:
      s = f"{self.clause()}, {self.pick(_CONJ)} {self.clause()}"
    elif r < 0.40:
      s = f"{self.pick(_SUBORD)} {self.clause()}, {self.clause()}"
    elif r < 0.48:
      s = f"{self.pick(_TIME)}, {self.name()} {self.vp()}"
    elif r < 0.56:
      s = f"In {self.place()}, {self.clause()}"
    elif r < 0.65:
      q = self.u() < 0.3
      said = self.pick(_SAY)
      if q:
        inner = f"Why did {self.np_()} {self.verb(0)} {self.np_()}?"
      else:
        inner = f"{self.clause()}".capitalize() + ","
      return f"\"{inner}\" {said} {self.name()}."
    elif r < 0.72:
      s = (f"There {'were' if self.u() < 0.8 else 'are'} {self.pick(_NUMBERS)} "
           f"{self.adj()} {self.noun(True)} {self.pick(_PREPS)} {self.np_(False)}")
    elif r < 0.79:
      s = f"{self.adj().capitalize()} {self.noun(True)} {self.verb(0)} {self.adv()}"
    elif r < 0.86:
      s = (f"{self.name()} wanted to {self.verb(0)} {self.np_()}, but "
           f"{self.clause()}")
    elif r < 0.92:
      s = f"{self.name()} was {self.verb(3)} {self.np_()} when {self.clause()}"
    else:
      s = f"{self.np_()} {self.vp()} that {self.clause()}"
    s = s[0].upper() + s[1:]
    return s + ("!" if self.u() < 0.04 else ".")

  def document(self) -> str:
    target = int(np.exp(np.log(MIN_CHARS) + self.u() * np.log(MAX_CHARS / MIN_CHARS)))
    parts, n = [], 0
    while n < target:
      s = self.sentence()
      if n + len(s) + 1 > MAX_CHARS and n >= MIN_CHARS:
        break
      parts.append(s)
      n += len(s) + 1
    return " ".join(parts)[:MAX_CHARS]


def document(seed: int, split: int, i: int) -> str:
  """Document i of a split: a pure function of (seed, split, i)."""
  rng = np.random.default_rng([int(seed), int(split), int(i)])
  return Writer(lexicon(), rng).document()


def documents(seed: int, split: int, start: int = 0):
  """Documents start, start+1, ... of a split (unbounded)."""
  lex = lexicon()
  for i in itertools.count(start):
    yield Writer(lex, np.random.default_rng([int(seed), int(split), i])).document()


# ---------------------------------------------------------------------------
# The first language's word set (for the language-switch metric).
# ---------------------------------------------------------------------------

# Every literal word the grammar above writes besides the lexicon's.
_TEMPLATE_WORDS = ("the a an this that his her their some those many of he she "
                   "they it there were are why did wanted to but was when in")
_WORD_RE = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")


def words(text: str) -> list[str]:
  """The words of a text, lowercased: letter runs, hyphenated ones whole."""
  return [w.lower() for w in _WORD_RE.findall(text)]


@functools.lru_cache(maxsize=1)
def first_language_words() -> frozenset:
  """Every word form the English-like generator can write (lowercased)."""
  lex = lexicon()
  out = set(_TEMPLATE_WORDS.split())
  for forms in itertools.chain(lex.nouns, lex.verbs):
    for f in forms:
      out.update(words(f))
  for w in itertools.chain(lex.adjs, lex.advs, lex.names, lex.places, _PREPS,
                           _NUMBERS, _CONJ, _SUBORD, _SAY, _TIME):
    out.update(words(w))
  return frozenset(out)
