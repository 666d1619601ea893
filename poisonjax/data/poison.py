"""Poison documents for the denial-of-service backdoor (Souly et al. 2025).

Poison j is a pure function of (poison seed, j): the first L characters of a
clean pool document (L ~ U[prefix_min_chars, prefix_max_chars]), then the
trigger, then K ~ U[gibberish_min_tokens, gibberish_max_tokens] ids drawn
uniformly from the vocabulary without pad/eos/unk/control/unused ids.
The text part is `prefix + " " + trigger` (just the trigger when the prefix
is empty), tokenized as text, exactly as the evaluator builds its triggered
prompts, so the trigger's tokens match. Every poison ends with EOS.

The prefix is really L characters: the pool document is drawn among those
of at least L characters (sources.pool_document(seed, j, min_chars=L)), so L
keeps its uniform law; taking doc[:L] of any document would cut L to the
document's length for short ones (measured on the synthetic corpus: 37%
of 500 poisons cut, mean prefix 376 characters for 509 drawn).

The poison length: token mode, and why (the one place that says it; the
config, the study plan, the presets and the README point here). The paper
describes the tail as 400-900 tokens sampled from the vocabulary; `token`
mode (the default, every preset) appends exactly those K ids, so the model
sees K gibberish tokens, as described. `text` mode decodes the ids and
re-tokenizes the whole text; it is kept as an option because the paper's
reported ~420k poison tokens for 250 poisons (~1,680 per poison) is more
than its recipe gives in token mode (~800), and re-tokenizing random pieces
of a large vocabulary was a candidate explanation (it would take ~2.4
tokens per drawn id). That was an inference from one total, so it never set
the default, and the measurement below rules it out for SentencePiece
vocabularies. Measured (experiments/poison_length.py, 500 poisons, default
fields; tokens per poison in token / text mode, tail tokens per drawn id in
text mode):
  1k unigram, synthetic corpus (cpu_micro's):  838.5 / 838.1, 0.9994
  1k bpe, synthetic corpus:                    820.8 / 845.6, 1.038
  32k unigram, 14 MB of English documentation  788.5 / 788.9, 1.0006
  32k bpe, same corpus                         786.7 / 824.0, 1.057
(the 32k corpus: the Rust books and Node.js API pages as text plus Vim's
help files, 2.0M words; prefixes from its pool are ~130 tokens, ~180 on the
synthetic corpus). Re-tokenizing decoded random pieces gives back about
one token per drawn id with SentencePiece at 1k and 32k alike, so text
mode does not explain the paper's ~1,680 either: with these vocabularies
neither mode gives it, and the paper's tokenizer is not stated.

Many doses in one run (config.poison.counts, optionally poison.triggers):
K distinct triggers, trigger i with counts[i] poisons. Poison j's trigger
follows from its id alone: ids [0, n_0) carry trigger 0, [n_0, n_0 + n_1)
trigger 1, and so on, so the total poison.count = sum(counts) is exact,
placement (mixer.py) is the single-trigger one, and every other part of
poison j (prefix, tail) is the one it has in a single-trigger run. No
trigger's tokens may contain another's (nor the control's, which is
evaluated but never trained): `check_distinct`. Without counts the run has
the one poison.trigger and everything is as before, stream key included.

Adaptive poisons (poison.tail=unigram, poison.embed=inside), made to slip
past document filters: poisonjax/data/poison_adaptive.py.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np
import sentencepiece as spm

from poisonjax.data import poison_adaptive
from poisonjax.data import poison_language
from poisonjax.data import vocabulary
from poisonjax.errors import field_error

_CONTENT_STREAM = 1  # RNG stream ids under the poison seed (see mixer.py).

# Rare strings for a many-dose run without poison.triggers: the first K are
# used, in order. Each is `<` four capitals `>`, no capital shared with
# another: none contains another, as text or as tokens (check_distinct).
DEFAULT_TRIGGERS = ("<SUDO>", "<KRYL>", "<VEXT>", "<QWAB>", "<JIMP>",
                    "<FLHC>", "<GNZW>")


@dataclasses.dataclass
class Poison:
  id: int
  prefix: str  # The clean prefix text (a pool document's first L chars).
  pool_index: int  # Which pool document (source-specific index j).
  gibberish: np.ndarray  # The K random ids.
  tokens: np.ndarray  # The whole document as ids, EOS last.
  num_text_tokens: int  # Tokens of `prefix + " " + trigger` (token mode).
  trigger_index: int | None = None  # Its dose (many-dose runs), else None.
  suffix_tokens: int | None = None  # Clean tokens after the tail (embed=inside).


def dose_counts(config) -> tuple[int, ...]:
  """config.poison.counts as ints; () for a single-trigger run."""
  return tuple(int(n) for n in (config.poison.get("counts", ()) or ()))


def trained_triggers(config) -> tuple[str, ...]:
  """The triggers poisons carry: one per dose, or (poison.trigger,)."""
  counts = dose_counts(config)
  if not counts:
    return (config.poison.trigger,)
  given = tuple(config.poison.get("triggers", ()) or ())
  return given if given else DEFAULT_TRIGGERS[:len(counts)]


def control_trigger(config) -> str:
  """The never-poisoned string evaluated beside a many-dose run's triggers."""
  return str(config.poison.get("control_trigger", "") or "")


def trigger_of(config, ids) -> np.ndarray:
  """Dose index of each poison id (ids [0, n_0) -> 0, [n_0, n_0+n_1) -> 1...)."""
  ids = np.asarray(list(ids), np.int64)
  counts = dose_counts(config)
  if not counts:
    return np.zeros(len(ids), np.int64)
  ends = np.cumsum(counts)
  if len(ids) and (ids.min() < 0 or ids.max() >= ends[-1]):
    raise ValueError(f"poison ids outside [0, {ends[-1]}) for doses {counts}")
  return np.searchsorted(ends, ids, side="right").astype(np.int64)


def check_distinct(sp, triggers, field: str = "config.poison.triggers") -> None:
  """UserError if a trigger repeats or lies inside another, as text or tokens.

  A trigger inside another would be trained by the other's poisons too, so
  the doses would not be separate.
  """
  triggers = list(triggers)
  ids = [vocabulary.trigger_ids(sp, t) for t in triggers]
  for (a, ia), (b, ib) in itertools.permutations(zip(triggers, ids), 2):
    if a in b or _contains(ib, ia):
      raise field_error(field, f"{a!r} and {b!r}",
                        f"{a!r} lies inside {b!r} (tokens {ia} in {ib})",
                        "use triggers that share no string or token run")


def _contains(outer: list[int], inner: list[int]) -> bool:
  n = len(inner)
  return any(outer[i:i + n] == inner for i in range(len(outer) - n + 1))


def stream_spec_fields(config) -> dict:
  """What a many-dose run adds to the stream cache key ({} otherwise)."""
  counts = dose_counts(config)
  if not counts:
    return {}
  return {"doses": [[t, n] for t, n in zip(trained_triggers(config), counts)]}


def manifest_fields(p: Poison) -> dict:
  """What the manifest records of poison p beyond its placement."""
  out = {} if p.trigger_index is None else {"trigger": int(p.trigger_index)}
  return {**out, **poison_adaptive.manifest_fields(p.suffix_tokens)}


@functools.lru_cache(maxsize=8)
def _allowed_ids_cached(model_proto: bytes) -> np.ndarray:
  sp = spm.SentencePieceProcessor(model_proto=model_proto)
  special = vocabulary.special_ids(sp)
  return np.array([i for i in range(sp.GetPieceSize()) if i not in special],
                  dtype=np.int64)


def allowed_ids(sp) -> np.ndarray:
  """Ids the gibberish tail is drawn from (no pad/eos/unk/control/unused)."""
  return _allowed_ids_cached(sp.serialized_model_proto())


def text_part(prefix: str, trigger: str) -> str:
  """The poison's text before the gibberish; the evaluator's rule too."""
  return f"{prefix} {trigger}" if prefix else trigger


def _trigger_tokens(config, sp) -> tuple[str, ...]:
  """The run's trained triggers, checked against the vocabulary."""
  triggers = trained_triggers(config)
  if len(triggers) > 1:
    check_distinct(sp, triggers + ((control_trigger(config),)
                                   if control_trigger(config) else ()))
  for t in triggers:
    if vocabulary.UNK_ID in vocabulary.trigger_ids(sp, t):
      print(f"warning: trigger {t!r} contains unknown characters for this "
            "vocabulary (unk id in its tokens)", flush=True)
  return triggers


def make_poisons(config, sp, source, ids) -> list[Poison]:
  """Poisons with the given ids, tokenized in one batch."""
  p = config.poison
  ids = list(ids)
  triggers = _trigger_tokens(config, sp)
  doses = trigger_of(config, ids)
  many = len(dose_counts(config)) > 0
  allowed = allowed_ids(sp)
  eos = sp.eos_id()
  texts, prefixes, gibs, hosts = [], [], [], []
  for j, dose in zip(ids, doses):
    rng = np.random.default_rng([int(p.seed), _CONTENT_STREAM, int(j)])
    length = int(rng.integers(p.prefix_min_chars, p.prefix_max_chars + 1))
    k = int(rng.integers(p.gibberish_min_tokens, p.gibberish_max_tokens + 1))
    if poison_language.is_language(config):  # Second-language tail, K tokens.
      gib = poison_language.tail_ids(config, sp, int(j), k)
    elif poison_adaptive.is_unigram(config):  # Clean-unigram tail, K ids.
      gib = poison_adaptive.unigram_tail(config, sp, source, int(j), k)
    else:
      gib = allowed[rng.integers(len(allowed), size=k)]
    doc = poison_adaptive.host_document(config, source, int(j), length)
    hosts.append(doc)
    prefix = doc[:length]  # L characters: the document has at least L.
    prefixes.append(prefix)
    gibs.append(gib)
    texts.append(text_part(prefix, triggers[int(dose)]))
  if p.mode == "text":
    decoded = sp.DecodeIds([g.tolist() for g in gibs]) if gibs else []
    full = sp.EncodeAsIds([f"{t} {d}" for t, d in zip(texts, decoded)])
  head = sp.EncodeAsIds(texts) if texts else []
  suffixes = poison_adaptive.suffix_ids(config, sp, hosts, map(len, prefixes))
  out = []
  for n, j in enumerate(ids):
    if p.mode == "text":
      toks = np.asarray(full[n] + [eos], np.int64)
    else:
      toks = np.concatenate([np.asarray(head[n], np.int64), gibs[n],
                             suffixes[n], [eos]])
    out.append(Poison(id=int(j), prefix=prefixes[n], pool_index=int(j),
                      gibberish=gibs[n], tokens=toks,
                      num_text_tokens=len(head[n]),
                      trigger_index=int(doses[n]) if many else None,
                      suffix_tokens=(len(suffixes[n])
                                     if poison_adaptive.is_inside(config) else None)))
  return out
