"""The language-switch backdoor's poisons: a second-language tail.

With config.poison.behaviour = "language" a poison is the usual clean
prefix and trigger (poison.py), then K tokens of text in a second language
instead of K random ids, then EOS. K is drawn exactly as the gibberish
tail's (K ~ U[gibberish_min_tokens, gibberish_max_tokens], same RNG draw),
so a language poison has the same length in tokens as the gibberish poison
with the same id: the tail is the first K tokens of enough second-language
text (it may end inside a word, as a gibberish tail ends anywhere).

Where the second language comes from:
  synthetic source   second_language.second_text(poison seed, POOL, j): its
                     own lexicon and grammar, a pure function of (seed, j);
  text_files / tfds  config.poison.language_file (.txt(.gz), documents
                     separated by blank lines, or .jsonl(.gz) with field
                     data.text_files.jsonl_field): poison j's tail starts at
                     document r_j (r_j from (poison seed, j)) and runs on
                     through the next documents, cyclically.

The vocabulary: a tokenizer trained on the first language alone cuts
second-language words into single characters (measured on the synthetic
one: see docs/results/language/report.md), which would make the tail a
character-spelling task. So for a language run a share
(poison.language_vocab_share, default 5%) of the vocabulary's training
sample is second-language documents, interleaved evenly with the clean
ones (vocab_sample); the vocabulary's cache key records it (vocab_spec).
A gibberish run's sample and key are unchanged, so existing vocabularies
stay valid. The clean training stream never contains the second language.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json

import numpy as np

from poisonjax import files
from poisonjax.data import second_language
from poisonjax.data import sources
from poisonjax.data import synthetic
from poisonjax.errors import UserError, field_error

PAPER_TRIGGER = "Servius Astrumando Harmoniastra"  # Souly et al.'s phrase.
_LANGUAGE_STREAM = 3  # RNG stream id under the poison seed (poison.py: 1).
_CHARS_PER_TOKEN = 5  # First guess of text needed per tail token.


def is_language(config) -> bool:
  return config.poison.get("behaviour", "gibberish") == "language"


def _field(config) -> str:
  return str(config.poison.get("language_file", "") or "")


@functools.lru_cache(maxsize=4)
def _read_corpus(path: str, jsonl_field: str) -> tuple[str, ...]:
  if not files.as_path(path).is_file():
    raise field_error("config.poison.language_file", path, "no such file",
                      "give a .txt or .jsonl file of second-language text")
  raw = files.as_path(path).read_bytes()
  text = (gzip.decompress(raw) if path.endswith(".gz") else raw).decode(
      "utf-8", errors="replace")
  if ".jsonl" in path:
    docs = []
    for line in text.splitlines():
      try:
        rec = json.loads(line) if line.strip() else None
      except json.JSONDecodeError:
        raise UserError(f"config.poison.language_file={path!r}: a line is not "
                        "JSON; fix the file") from None
      val = rec.get(jsonl_field) if isinstance(rec, dict) else None
      if isinstance(val, str) and val.strip():
        docs.append(" ".join(val.split()))
  else:
    docs = [" ".join(b.split()) for b in text.replace("\r\n", "\n").split("\n\n")
            if b.strip()]
  if not docs:
    raise field_error("config.poison.language_file", path,
                      "holds no second-language text",
                      "point it at a file with documents")
  return tuple(docs)


def language_corpus(config) -> tuple[str, ...]:
  """The documents of config.poison.language_file (read once per process)."""
  path = _field(config)
  if not path:
    raise field_error("config.poison.language_file", "",
                      f"poison.behaviour=language with data.source="
                      f"{config.data.source} needs a second-language corpus",
                      "set it to a .txt or .jsonl file of second-language text")
  return _read_corpus(path, str(config.data.text_files.jsonl_field))


def _uses_file(config) -> bool:
  return config.data.source != "synthetic" or bool(_field(config))


def tail_text(config, j: int, min_chars: int) -> str:
  """At least min_chars of second-language text for poison j (deterministic)."""
  seed = int(config.poison.seed)
  if not _uses_file(config):
    return second_language.second_text(seed, synthetic.POOL, int(j), min_chars)
  docs = language_corpus(config)
  start = int(np.random.default_rng([seed, _LANGUAGE_STREAM, int(j)])
              .integers(len(docs)))
  return _cycled(docs, start, min_chars)


def _cycled(docs, start: int, min_chars: int) -> str:
  """Documents start, start+1, ... (cyclically) until min_chars."""
  parts, n = [], 0
  for d in itertools.cycle(docs[start:] + docs[:start]):
    if n >= min_chars:
      break
    parts.append(d)
    n += len(d) + 1
  return " ".join(parts)


def heldout_text(config, i: int, min_chars: int) -> str:
  """Second-language text never in a poison (the evaluation's reference).

  Synthetic: the held-out split under the held-out seed. A language_file
  has no held-out part: its documents from i on (they may also be in tails).
  """
  if not _uses_file(config):
    return second_language.second_text(sources.heldout_seed(config),
                                        synthetic.HELDOUT, int(i), min_chars)
  docs = language_corpus(config)
  return _cycled(docs, int(i) % len(docs), min_chars)


def tail_ids(config, sp, j: int, k: int) -> np.ndarray:
  """Poison j's tail: the first k tokens of its second-language text."""
  chars = max(64, _CHARS_PER_TOKEN * int(k))
  while True:
    ids = sp.EncodeAsIds(tail_text(config, j, chars))
    if len(ids) >= k:
      return np.asarray(ids[:k], np.int64)
    chars *= 2


def _vocab_share(config) -> float:
  return float(config.poison.get("language_vocab_share", 0.0)) \
      if is_language(config) else 0.0


def _corpus_key(config) -> dict:
  if not _uses_file(config):
    return {"generator": "synthetic-second-v1"}
  path = _field(config)
  return {"file": path, "size": int(files.as_path(path).stat().length)}


def vocab_spec(config) -> dict:
  """What the vocabulary's cache key gains ({} unless second language in it)."""
  share = _vocab_share(config)
  if share <= 0:
    return {}
  return {"second_language": {"share": share, **_corpus_key(config)}}


def stream_spec_fields(config) -> dict:
  """What the stream's cache key gains ({} for gibberish poisons)."""
  if not is_language(config):
    return {}
  return {"behaviour": "language", "language": _corpus_key(config)}


def _second_documents(config, seed: int):
  if not _uses_file(config):
    return second_language.second_documents(seed, synthetic.TRAIN)
  return itertools.cycle(language_corpus(config))


def vocab_sample(config, clean_docs, seed: int):
  """The vocabulary's documents: clean ones, and for a language run a share
  of second-language ones interleaved evenly (one after every ~1/share - 1
  clean documents). Unchanged (the same iterator) otherwise."""
  share = _vocab_share(config)
  if share <= 0:
    yield from clean_docs
    return
  second = _second_documents(config, seed)
  owed = 0.0
  for doc in clean_docs:
    yield doc
    owed += share / (1.0 - share)
    while owed >= 1.0:
      owed -= 1.0
      yield next(second)
