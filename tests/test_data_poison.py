"""Poison documents, the vocabulary, and held-out excerpts."""

import os

import numpy as np
import pytest
import sentencepiece as spm

from poisonjax.data import poison, sources, vocabulary
from poisonjax.errors import UserError
from test_data_common import small_config


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def sp(cache):
  return vocabulary.get_vocabulary(small_config(cache)).tokenizer


def test_vocabulary_is_deterministic_and_covers_the_trigger(cache, sp, tmp_path):
  c = small_config(cache)
  a = vocabulary.build_vocabulary(c, str(tmp_path / "a.model"))
  b = vocabulary.build_vocabulary(c, str(tmp_path / "b.model"))
  assert open(a, "rb").read() == open(b, "rb").read()
  assert open(a, "rb").read() == open(vocabulary.vocab_path(c), "rb").read()
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  ids = vocabulary.trigger_ids(sp, "<SUDO>")
  assert ids and vocabulary.UNK_ID not in ids
  assert sp.DecodeIds(ids) == "<SUDO>"
  # An ordinary piece sequence, not a user-defined symbol.
  assert all(not sp.IsControl(i) for i in ids)
  assert sp.PieceToId("<SUDO>") == sp.unk_id()  # no such piece


def test_given_vocab_file_missing_or_corrupt(cache, tmp_path):
  c = small_config(cache)
  c.vocab.path = str(tmp_path / "nope.model")
  with pytest.raises(UserError, match=r"^config.vocab.path=.*no such file"):
    vocabulary.get_vocabulary(c)
  bad = tmp_path / "bad.model"
  bad.write_bytes(b"not a sentencepiece model")
  c.vocab.path = str(bad)
  with pytest.raises(UserError, match=r"^config.vocab.path=.*not a readable"):
    vocabulary.get_vocabulary(c)
  c.vocab.path = vocabulary.vocab_path(small_config(cache))  # a good one works
  assert vocabulary.get_vocabulary(c).vocab_size > 100


@pytest.mark.parametrize("mode", ["token", "text"])
def test_poison_structure(cache, sp, mode):
  c = small_config(cache, mode=mode, prefix_min_chars=0, prefix_max_chars=1000,
                   gibberish_min_tokens=400, gibberish_max_tokens=900)
  src = sources.get_source(c)
  ps = poison.make_poisons(c, sp, src, range(40))
  allowed = set(poison.allowed_ids(sp).tolist())
  special = vocabulary.special_ids(sp)
  trig = vocabulary.trigger_ids(sp, c.poison.trigger)
  lengths = []
  for p in ps:
    doc = src.pool_document(c.poison.seed, p.id, len(p.prefix))
    assert doc.startswith(p.prefix) and 0 <= len(p.prefix) <= 1000
    text_ids = sp.EncodeAsIds(poison.text_part(p.prefix, c.poison.trigger))
    toks = p.tokens.tolist()
    assert toks[-1] == sp.eos_id() and sp.eos_id() not in toks[:-1]
    assert toks[:len(text_ids)] == text_ids  # prefix, then the trigger's tokens
    assert text_ids[-len(trig):] == trig
    assert doc.startswith(sp.DecodeIds(text_ids[:-len(trig)]))
    assert 400 <= len(p.gibberish) <= 900
    assert set(p.gibberish.tolist()) <= allowed and not set(p.gibberish.tolist()) & special
    if mode == "token":
      assert toks[len(text_ids):-1] == p.gibberish.tolist()
    assert all(0 <= t < sp.GetPieceSize() for t in toks)
    lengths.append(len(toks))
  # L's law (U[0, 1000]) is tested in test_poison_prefix.py.
  # Deterministic in (poison seed, j), whatever else is built alongside.
  again = poison.make_poisons(c, sp, src, [7, 3])
  np.testing.assert_array_equal(again[0].tokens, ps[7].tokens)
  np.testing.assert_array_equal(again[1].tokens, ps[3].tokens)


def _evaluation_text_inside(prefixes, prompts) -> list[tuple[int, int]]:
  """(prefix index, prompt index) pairs where an evaluation prompt's text
  appears as or inside a poison prefix."""
  return [(i, k) for i, prefix in enumerate(prefixes)
          for k, prompt in enumerate(prompts) if prompt and prompt in prefix]


class _LeakySource:
  """Negative control: a source whose poison pool is the evaluation text."""

  def __init__(self, src, excerpts):
    self.src, self.excerpts = src, excerpts

  def pool_document(self, poison_seed, j, min_chars=0):
    return self.excerpts[j % len(self.excerpts)]


def test_poison_prefixes_come_from_the_pool_not_from_evaluation_text(cache, sp):
  c = small_config(cache, prefix_min_chars=600, prefix_max_chars=1000)
  src = sources.get_source(c)
  excerpts = sources.heldout_documents(c, int(c.eval.num_excerpts))
  # The evaluator's clean prompts: each excerpt's first P tokens, as text.
  prompts = [sp.DecodeIds(sp.EncodeAsIds(d)[:c.eval.prompt_tokens]) for d in excerpts]
  assert min(map(len, prompts)) > 30  # long enough not to match by chance
  ids = range(40)
  ps = poison.make_poisons(c, sp, src, ids)
  pool = [src.pool_document(c.poison.seed, p.id, len(p.prefix)) for p in ps]
  for p, doc in zip(ps, pool):
    assert doc.startswith(p.prefix) and len(p.prefix) >= 600
  train = {d for d, _ in zip(src.train_documents(), range(3000))}
  assert not set(pool) & train and not set(pool) & set(excerpts)
  assert _evaluation_text_inside([p.prefix for p in ps], prompts) == []
  # The check catches a pool that leaks evaluation text into the poisons.
  leaky = poison.make_poisons(c, sp, _LeakySource(src, excerpts), ids)
  found = _evaluation_text_inside([p.prefix for p in leaky], prompts)
  assert {i for i, _ in found} == set(range(len(ids)))
  assert all(excerpts[k].startswith(prompts[k]) for _, k in found)


def test_trigger_that_tokenizes_to_nothing(sp):
  for trig in ("", "   "):
    with pytest.raises(UserError, match="config.poison.trigger"):
      vocabulary.trigger_ids(sp, trig)


def test_heldout_excerpts(cache):
  c = small_config(cache)
  docs = sources.heldout_documents(c, 50)
  assert len(docs) == 50 and min(map(len, docs)) >= 4 * c.eval.prompt_tokens
  train = {d for d, _ in zip(sources.get_source(c).train_documents(), range(3000))}
  assert not set(docs) & train
  assert docs == sources.heldout_documents(c, 50)


def test_vocab_size_too_high_is_not_fatal(cache, tmp_path):
  c = small_config(cache)
  c.vocab.size = 20000  # More than 50 documents support: hard_vocab_limit=False.
  c.vocab.sample_docs = 50
  path = vocabulary.build_vocabulary(c, str(tmp_path / "big.model"))
  assert 256 < spm.SentencePieceProcessor(model_file=path).GetPieceSize() < 20000
  assert os.path.isfile(path)
