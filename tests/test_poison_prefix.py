"""Poison prefixes are really L ~ U[min, max] characters, on every source."""

import numpy as np
import pytest
import scipy.stats

from poisonjax.data import poison, sources, vocabulary
from poisonjax.errors import UserError
from test_data_common import small_config

LO, HI = 0, 1000


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


def _prefix_config(cache, **extra):
  # A 1-token tail: only the prefixes matter here, and they are fast.
  return small_config(cache, prefix_min_chars=LO, prefix_max_chars=HI,
                      gibberish_min_tokens=1, gibberish_max_tokens=1, **extra)


def _ks_uniform(lengths) -> float:
  """KS p-value of integer lengths against U{LO..HI} (mid-point continuity)."""
  x = (np.asarray(lengths, float) - LO + 0.5) / (HI - LO + 1)
  return scipy.stats.kstest(x, "uniform").pvalue


def _check_prefixes(c, source, n):
  """KS-tests the n poisons' prefix lengths, then checks their documents."""
  sp = vocabulary.get_vocabulary(c).tokenizer
  ps = poison.make_poisons(c, sp, source, range(n))
  assert _ks_uniform([len(p.prefix) for p in ps]) > 0.01
  for p in ps:  # Each is the first L characters of the document it names.
    if p.prefix:
      assert source.pool_document(c.poison.seed, p.id, len(p.prefix)).startswith(p.prefix)


def test_synthetic_prefix_lengths_are_uniform(cache):
  c = _prefix_config(cache)
  _check_prefixes(c, sources.get_source(c), 400)
  # The control: doc[:L] of pool document j whatever its length is not.
  rng = lambda j: np.random.default_rng([0, poison._CONTENT_STREAM, j])
  cut = [len(sources.get_source(c).pool_document(0, j)[:int(rng(j).integers(LO, HI + 1))])
         for j in range(400)]
  assert _ks_uniform(cut) < 1e-4


def test_finite_pool_draws_among_long_enough_documents(cache, tmp_path):
  # A pool where most documents are shorter than most prefixes.
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
  docs = [" ".join(rng.choice(words, size=int(k))) for k in rng.integers(5, 250, 1200)]
  (tmp_path / "corpus.txt").write_text("\n\n".join(docs))
  c = _prefix_config(cache)
  c.data.source = "text_files"
  c.data.text_files.patterns = str(tmp_path / "corpus.txt")
  c.data.text_files.heldout_fraction = 0.5
  c.vocab.path = vocabulary.vocab_path(_prefix_config(cache))  # The synthetic one.
  src = sources.get_source(c)
  pool = src._heldout_docs()[1::2]  # pylint: disable=protected-access
  assert np.mean([len(d) < HI for d in pool]) > 0.5
  _check_prefixes(c, src, 300)
  with pytest.raises(UserError, match=r"^config.poison.prefix_max_chars=.*longest"):
    src.pool_document(0, 0, max(len(d) for d in pool) + 1)


def test_a_prefix_no_pool_document_can_give_is_one_line_error(cache):
  c = _prefix_config(cache)
  with pytest.raises(UserError, match=r"^config.poison.prefix_max_chars=5000"):
    sources.get_source(c).pool_document(0, 0, 5000)
