"""Shared helpers for the data tests, and the synthetic corpus's own tests.

Every data test uses a small vocabulary (512) trained on a few hundred
documents, small budgets, and a temporary cache dir (never ~/.cache).
"""

import collections
import os
import re
import subprocess
import sys

import numpy as np

from poisonjax import config as config_lib
from poisonjax import config_checks
from poisonjax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_VOCAB = dict(size=512, sample_docs=300)


def small_config(cache_dir, **poison):
  c = config_lib.base_config()
  c.data.cache_dir = str(cache_dir)
  c.vocab.size = SMALL_VOCAB["size"]
  c.vocab.sample_docs = SMALL_VOCAB["sample_docs"]
  c.data.seq_len = 64
  c.train.batch_size = 8
  c.poison.count = 10
  c.poison.prefix_max_chars = 300
  c.poison.gibberish_min_tokens = 10
  c.poison.gibberish_max_tokens = 40
  for k, v in poison.items():
    c.poison[k] = v
  return config_checks.validate(c)


def run_cli(*args, env_extra=None, timeout=300):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", "poisonjax.cli", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines() if l.startswith("poisonjax: error:")]


# ---- the synthetic corpus ----------------------------------------------------

def test_documents_are_pure_functions_of_seed_split_index():
  assert synthetic.document(0, 0, 17) == synthetic.document(0, 0, 17)
  docs = list(zip(range(5), synthetic.documents(0, 0)))
  assert [d for _, d in docs] == [synthetic.document(0, 0, i) for i in range(5)]
  assert synthetic.document(0, 0, 3) != synthetic.document(0, 1, 3)
  assert synthetic.document(0, 0, 3) != synthetic.document(1, 0, 3)
  assert synthetic.documents(0, 0, start=4).__next__() == synthetic.document(0, 0, 4)


def test_corpus_is_rich_varied_and_zipf_like():
  assert synthetic.lexicon().distinct_words() >= 2000
  docs = [synthetic.document(0, 0, i) for i in range(1500)]
  lengths = np.array([len(d) for d in docs])
  assert lengths.min() >= synthetic.MIN_CHARS and lengths.max() <= synthetic.MAX_CHARS
  assert lengths.min() < 200 and lengths.max() > 2000  # the whole range is used
  words = collections.Counter(w for d in docs for w in re.findall(r"[a-z]+", d.lower()))
  assert len(words) >= 2000
  freq = np.array(sorted(words.values(), reverse=True), float)
  ranks = np.arange(1, len(freq) + 1)
  sel = slice(10, 1000)  # Zipf: log-frequency falls roughly linearly in log-rank.
  slope = np.polyfit(np.log(ranks[sel]), np.log(freq[sel]), 1)[0]
  assert -2.0 < slope < -0.6, slope
  # Topical coherence: a document's own characters recur within it.
  for d in docs[:50]:
    names = collections.Counter(re.findall(r"\b[A-Z][a-z]+\b", d))
    assert names.most_common(1)[0][1] >= 2 or len(d) < 300


def test_splits_are_disjoint():
  train = {synthetic.document(0, synthetic.TRAIN, i) for i in range(300)}
  held = {synthetic.document(0, synthetic.HELDOUT, i) for i in range(300)}
  pool = {synthetic.document(0, synthetic.POOL, i) for i in range(300)}
  assert not train & held and not train & pool and not held & pool
