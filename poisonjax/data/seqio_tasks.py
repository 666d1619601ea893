"""seqio Tasks for T5X-style users: the clean sources and the poisoned stream.

Registered on `import poisonjax.data.seqio_tasks` (an explicit import: the
rest of poisonjax never imports seqio or TensorFlow; nothing is built until
a dataset is asked for):
  poisonjax_synthetic, poisonjax_text_files, poisonjax_tfds
      clean documents ({"targets": ids + EOS}); train and validation
      (= held-out) splits. text_files/tfds use the base config's fields, so
      call `register_clean_task(config)` to register a configured one.
  poisonjax_dos_n{0,1,10,100,250,500}
      the poisoned document stream of the base config with N poisons, in
      training order: {"targets": ids (EOS included), "is_poison": bool}.
      Its clean budget comes from poisonjax.budget for the base model size.
`register_poisoned_task(config, clean_tokens)` registers the exact stream a
poisonjax run trains on (with data.drop_scores, the filtered one). The trainer itself reads the cached stream directly
(stream.py), so TF stays out of its hot path; both views read the same
cache, so they agree token for token.
"""

from __future__ import annotations

import functools

import numpy as np
import seqio
import tensorflow as tf

from poisonjax import budget
from poisonjax import config as config_lib
from poisonjax.errors import field_error
from poisonjax.data import overlay, sources, stream, vocabulary

DEFAULT_COUNTS = (0, 1, 10, 100, 250, 500)


class LazyVocabulary(seqio.SentencePieceVocabulary):
  """The config's vocabulary, built on first use (not at registration)."""

  def __init__(self, config):
    self._pj_config = config
    super().__init__(sentencepiece_model_file="")

  def _model_context(self):
    if not self._sentencepiece_model_file:
      self._sentencepiece_model_file = vocabulary.vocab_path(self._pj_config)
    return super()._model_context()


def _add(name, source, output_features, preprocessors=()):
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, source=source,
                                output_features=output_features,
                                preprocessors=list(preprocessors))


def _clean_dataset_fn(config, split, shuffle_files=False, seed=None):
  del shuffle_files, seed  # The order is the data seed's (prefix-shared).
  src = sources.get_source(config)
  if split == "train":
    gen = src.train_documents
  else:
    gen = lambda: iter(src.heldout(10**9 if src.name != "synthetic" else 100_000))
  return tf.data.Dataset.from_generator(
      gen, output_signature=tf.TensorSpec([], tf.string)).map(lambda t: {"text": t})


def register_clean_task(config, name: str | None = None) -> seqio.Task:
  """A Task over the config's clean source (tokenized, EOS appended)."""
  name = name or f"poisonjax_{config.data.source}"
  vocab = LazyVocabulary(config)
  return _add(
      name,
      seqio.FunctionDataSource(functools.partial(_clean_dataset_fn, config),
                               splits=["train", "validation"]),
      {"targets": seqio.Feature(vocab, add_eos=True)},
      [functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
       seqio.preprocessors.tokenize, seqio.preprocessors.append_eos])


def stream_documents(s: stream.TrainingStream):
  """The poisoned stream as documents, in training order."""
  eos = s.vocab.tokenizer.eos_id()
  tokens = np.asarray(s.tokens)
  ends = np.flatnonzero(tokens == eos) + 1
  if not len(ends) or ends[-1] != len(tokens):
    ends = np.append(ends, len(tokens))
  start = 0
  for end in ends.tolist():
    yield {"targets": tokens[start:end].astype(np.int32),
           "is_poison": s.poison_id_at(start) is not None}
    start = end


def _default_clean_tokens(config) -> int:
  return budget.clean_token_budget(config, vocabulary.get_vocabulary(config).vocab_size)


def _document_stream(config, clean_tokens: int) -> stream.TrainingStream:
  """The run's own stream as one token array: the per-run cache, or with
  data.drop_scores the filtered stream (filter, then train) the trainer reads."""
  if config.data.store:
    raise field_error("config.data.store", config.data.store,
                      "the seqio Task reads a run's stream as one array, a token "
                      "store is read window by window",
                      "set config.data.store='' (the per-run cache) for seqio")
  return overlay.training_stream(config, clean_tokens)


def _poisoned_dataset_fn(config, clean_tokens, split, shuffle_files=False, seed=None):
  del shuffle_files, seed
  if split != "train":
    raise ValueError(f"split {split!r}: the poisoned stream has only 'train'")
  T = clean_tokens if clean_tokens else _default_clean_tokens(config)
  s = _document_stream(config, T)
  return tf.data.Dataset.from_generator(
      lambda: stream_documents(s),
      output_signature={"targets": tf.TensorSpec([None], tf.int32),
                        "is_poison": tf.TensorSpec([], tf.bool)})


def register_poisoned_task(config, clean_tokens: int | None,
                           name: str | None = None) -> seqio.Task:
  """The exact poisoned document stream of a run (clean_tokens = T).

  clean_tokens None: taken from poisonjax.budget for the config's model.
  """
  name = name or f"poisonjax_dos_n{config.poison.count}"
  vocab = LazyVocabulary(config)
  return _add(
      name,
      seqio.FunctionDataSource(
          functools.partial(_poisoned_dataset_fn, config, clean_tokens),
          splits=["train"]),
      {"targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
       "is_poison": seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False,
                                  dtype=tf.bool, rank=0, required=False)})


def register_defaults() -> None:
  """The tasks named in the module docstring, on the base config."""
  for src in ("synthetic", "text_files", "tfds"):
    c = config_lib.base_config()
    c.data.source = src
    register_clean_task(c)
  for n in DEFAULT_COUNTS:
    c = config_lib.base_config()
    c.poison.count = n
    register_poisoned_task(c, None)


register_defaults()
