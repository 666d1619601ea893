"""A grid seed varies what it names (init, poisons, data order), nothing else.

Every run of a study shares one vocabulary file and one set of evaluation
prompts; `study.vary` holds any of the three varied things fixed.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from poisonjax.evaluation import evaluate, heldout
from poisonjax.model import transformer as model_lib
from poisonjax import study
from poisonjax.data import sources, stream, vocabulary
from poisonjax.errors import UserError
from test_data_common import small_config

T = 30_000  # Clean tokens of each test stream.


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


def _study(cache, vary=None):
  base = small_config(cache, count=10)
  base.eval.num_excerpts = 16
  base.model.d_model, base.model.num_heads = 32, 4
  base.model.num_layers, base.model.ffn_dim = 1, 64
  s = study.study_config("seeds", base)
  s.grid = study.grid(("cpu-xxs",), (10,), (0, 1), (1.0,))
  if vary is not None:
    s.vary = vary
  return s


def _runs(s):
  return [study.run_config(s, study.Run("cpu-xxs", 10, k, 1.0)) for k in (0, 1)]


def _init_embeddings(configs, vocab_size):
  """Each config's initial token embedding (init from jax.random.key(seed))."""
  mcfg = model_lib.ModelConfig.from_config(configs[0], vocab_size)
  init = jax.jit(model_lib.Transformer(mcfg).init)
  tokens = np.zeros((1, 8), np.int32)
  return [np.asarray(nn.unbox(init(jax.random.key(c.seed), tokens))
                     ["params"]["embed"]["embedding"]) for c in configs]


def _first_docs(c, n=5):
  return [d for d, _ in zip(sources.get_source(c).train_documents(), range(n))]


def _poison_tokens(c):
  s = stream.build_stream(c, T)
  return [m["fraction"] for m in s.manifest], [
      np.asarray(s.tokens[a:b]).tolist() for a, b, _ in s.spans]


def test_two_seeds_share_vocabulary_and_prompts_not_poisons_or_init(cache):
  a, b = _runs(_study(cache))
  # One vocabulary file and one prompt set for the study.
  assert vocabulary.vocab_path(a) == vocabulary.vocab_path(b)
  va, vb = vocabulary.get_vocabulary(a), vocabulary.get_vocabulary(b)
  assert vocabulary.fingerprint(va) == vocabulary.fingerprint(vb)
  assert evaluate.build_prompts(a, va) == evaluate.build_prompts(b, vb)
  np.testing.assert_array_equal(heldout.heldout_sequences(a, va, 8),
                                heldout.heldout_sequences(b, vb, 8))
  # What the seed names differs: poison contents and placement, clean data
  # order, model initialisation.
  (fa, pa), (fb, pb) = _poison_tokens(a), _poison_tokens(b)
  assert len(pa) == len(pb) == 10
  assert not set(fa) & set(fb)
  assert all(x != y for x, y in zip(pa, pb))
  assert not set(_first_docs(a)) & set(_first_docs(b))
  assert a.model.to_dict() == b.model.to_dict()
  ea, eb = _init_embeddings([a, b], va.vocab_size)
  assert not np.allclose(ea, eb)


def test_vary_holds_the_unnamed_things_fixed(cache):
  a, b = _runs(_study(cache, vary=("init",)))
  assert _poison_tokens(a) == _poison_tokens(b)
  assert _first_docs(a) == _first_docs(b)
  assert a.seed != b.seed
  assert vocabulary.vocab_path(a) == vocabulary.vocab_path(b)
  a, b = _runs(_study(cache, vary=("poisons",)))
  assert (a.seed, a.data.seed) == (b.seed, b.data.seed)
  assert a.poison.seed != b.poison.seed


def test_derived_seeds_are_distinct_and_documented_things_only(cache):
  seeds = {study.derived_seed(k, t) for k in range(3) for t in study.SEED_THINGS}
  assert len(seeds) == 9 and all(0 <= s < 2**31 for s in seeds)
  with pytest.raises(UserError, match=r"^study.vary: unknown 'tokenizer'"):
    _runs(_study(cache, vary=("init", "tokenizer")))
  # A launched run reads vary from the study file: an override is refused.
  with pytest.raises(UserError, match=r"^--config.vary"):
    study.launch_command("s.py", "NAME", "w", {"vary": "('init',)"})


def test_a_single_run_keeps_its_own_vocabulary_and_prompts(cache):
  """Outside a study (vocab.seed = eval.heldout_seed = -1) the data seed
  still picks both, as before: old runs resume on the same files."""
  c = small_config(cache)
  c.data.seed = 4
  same = small_config(cache)
  same.data.seed, same.vocab.seed, same.eval.heldout_seed = 4, 4, 4
  assert vocabulary.cached_vocab_path(c) == vocabulary.cached_vocab_path(same)
  assert vocabulary.vocab_seed(c) == 4 and sources.heldout_seed(c) == 4
  assert sources.heldout_documents(c, 3) == sources.heldout_documents(same, 3)
  assert sources.heldout_documents(c, 3) != sources.heldout_documents(
      small_config(cache), 3)
