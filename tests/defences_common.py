"""The tiny poisoned stream the defence tests share, as module fixtures.

~140 clean documents and 10 poisons whose gibberish tails outlast a
64-token window, so the trigger is rare and the filters have work to do.
"""

import pytest

from poisonjax.data import documents
from poisonjax.defences import pipeline
from train_common import tiny_config

STREAM = {"poison.count": 10, "train.tokens_per_param": 1.0,
          "poison.gibberish_min_tokens": 100, "poison.gibberish_max_tokens": 200}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("defences-cache")


@pytest.fixture(scope="module")
def config(cache):
  return tiny_config(cache, **STREAM)


@pytest.fixture(scope="module")
def corpus(config):
  return documents.Corpus(pipeline.stream_of(config))
