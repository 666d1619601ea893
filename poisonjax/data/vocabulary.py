"""The SentencePiece vocabulary: a given .model file, or one built and cached.

Ids follow the T5/seqio convention: pad=0, eos=1, unk=2, no bos. The
trigger (`<SUDO>`) stays ordinary text: it is NOT a user-defined symbol, but
every printable ASCII character is a required character, so `<` and `>`
never become unk. Training is single-threaded on a fixed, ordered sample, so
the same config and data give a byte-identical model file.

`get_vocabulary` returns a `Vocabulary`: the subset of seqio's
SentencePieceVocabulary that poisonjax uses (same ids, same decode rules),
on sentencepiece alone, so training and evaluation never import seqio or
TensorFlow. seqio_tasks.py wraps the same file in seqio's own class.

Paths may be local or `gs://` (files.as_path): the model is read as bytes
and loaded from its serialized proto, so SentencePiece never opens a path.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import time

import sentencepiece as spm

from poisonjax import files
from poisonjax.training import preemption
from poisonjax.data import poison_language
from poisonjax.data import sources
from poisonjax.errors import UserError, field_error

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
_REQUIRED_CHARS = "".join(chr(c) for c in range(33, 127))
_FORMAT = "spm-v1"


def cache_dir(config) -> str:
  """config.data.cache_dir, else $POISONJAX_CACHE, else ~/.cache/poisonjax.

  Absolute if local; a `gs://` one is kept as it is.
  """
  d = config.data.cache_dir or os.environ.get("POISONJAX_CACHE") or \
      os.path.join(os.path.expanduser("~"), ".cache", "poisonjax")
  return str(files.absolute(d))


def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with files.as_path(path).open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def vocab_seed(config) -> int:
  """The data seed whose clean order the vocabulary is trained on.

  config.vocab.seed, or config.data.seed when it is -1 (absent in an older
  run's config.json). A study sets it once for all its runs.
  """
  seed = int(config.vocab.get("seed", -1))
  return int(config.data.seed) if seed < 0 else seed


def _vocab_source(config):
  return sources.get_source(config, seed=vocab_seed(config))


def _train_spec(config) -> dict:
  v = config.vocab
  return {"format": _FORMAT, "source": _vocab_source(config).key(),
          "size": int(v.size), "sample_docs": int(v.sample_docs),
          "model_type": v.model_type,
          "byte_fallback": bool(v.byte_fallback),
          **poison_language.vocab_spec(config)}  # {} unless a language run.


def cached_vocab_path(config) -> str:
  """Where the vocabulary built from this config's clean source lives."""
  name = f"spm-{_hash(_train_spec(config))}.model"
  return str(files.as_path(cache_dir(config)) / "vocab" / name)


def _sentences(config, source):
  """The ordered training sample: one sentence per non-empty line.

  Ends early on a signal (preemption.stop_requested): the build then
  writes nothing.
  """
  n = int(config.vocab.sample_docs)
  n = min(n, getattr(source, "epoch_len", n))
  for doc in poison_language.vocab_sample(  # Clean only, unless language.
      config, itertools.islice(source.train_documents(), n), vocab_seed(config)):
    if preemption.stop_requested():
      return
    for line in doc.splitlines():
      line = line.strip()
      if line:
        yield line[:4000]


def build_vocabulary(config, out: str | None = None) -> str:
  """Trains the SentencePiece model and writes it (atomically). Returns the path."""
  v = config.vocab
  if v.size < 8:
    raise field_error("config.vocab.size", v.size, "too small", "use >= 8 (about 1k on CPU)")
  if v.model_type not in ("unigram", "bpe"):
    raise field_error("config.vocab.model_type", v.model_type, "unknown type",
                      "use unigram or bpe")
  if v.sample_docs < 1:
    raise field_error("config.vocab.sample_docs", v.sample_docs, "must be >= 1",
                      "use e.g. 20000")
  path = out or cached_vocab_path(config)
  source = _vocab_source(config)
  start = time.time()
  buf = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_sentences(config, source), model_writer=buf,
        vocab_size=int(v.size), model_type=v.model_type,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        hard_vocab_limit=False, num_threads=1, shuffle_input_sentence=False,
        input_sentence_size=0, required_chars=_REQUIRED_CHARS,
        character_coverage=0.9995, byte_fallback=bool(v.byte_fallback),
        max_sentence_length=8192, minloglevel=2)
  except RuntimeError as e:
    preemption.check("the vocabulary build")  # Cut short by a signal.
    raise field_error("config.vocab.size", v.size,
                      f"SentencePiece training failed ({str(e).splitlines()[0]})",
                      "lower it or raise config.vocab.sample_docs") from None
  preemption.check("the vocabulary build")  # Trained on part: not written.
  files.write_bytes_atomic(path, buf.getvalue())
  sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
  print(f"vocab: built {path} ({sp.GetPieceSize()} pieces, "
        f"{v.sample_docs} sample documents, {time.time() - start:.1f}s)", flush=True)
  return path


def load_processor(path: str) -> spm.SentencePieceProcessor:
  """The SentencePiece model at `path` (local or gs://), from its bytes."""
  return spm.SentencePieceProcessor(model_proto=files.as_path(path).read_bytes())


def _check_model(path: str, field: str, fix: str) -> None:
  try:
    sp = load_processor(path)
  except (OSError, RuntimeError) as e:
    raise UserError(f"{field}={path!r}: not a readable SentencePiece model "
                    f"({str(e).splitlines()[0] if str(e) else 'corrupt'}); "
                    f"{fix}") from None
  if sp.pad_id() != PAD_ID or sp.eos_id() < 0 or sp.unk_id() != UNK_ID:
    raise UserError(f"{field}={path!r}: pad id {sp.pad_id()}, eos id "
                    f"{sp.eos_id()}, unk id {sp.unk_id()}; poisonjax needs "
                    f"pad={PAD_ID}, unk={UNK_ID} (the poison checks assume it) "
                    "and an eos id (train it with --pad_id=0 --eos_id=1 "
                    "--unk_id=2 --bos_id=-1)")


def vocab_path(config, build: bool = True) -> str:
  """The .model file to use: config.vocab.path, else the cached build."""
  if config.vocab.path:
    path = str(files.as_path(config.vocab.path))
    if not files.as_path(path).is_file():
      raise field_error("config.vocab.path", config.vocab.path, "no such file",
                        "fix the path, or use '' to build the vocabulary")
    _check_model(path, "config.vocab.path",
                 "give a valid .model file, or use '' to build one")
    return path
  path = cached_vocab_path(config)
  if not files.as_path(path).is_file():
    if not build:
      raise UserError(f"config.vocab.path='': no cached vocabulary at {path}; "
                      "run `poisonjax vocab build --config=...`")
    print(f"vocab: none cached for this source; building {path}", flush=True)
    build_vocabulary(config, path)
  _check_model(path, "cached vocabulary (config.vocab.path='')",
               f"delete {path}: the next run builds it again")
  return path


class Vocabulary:
  """A SentencePiece model with seqio's vocabulary interface (no TensorFlow).

  encode/decode/vocab_size/eos_id/pad_id/unk_id/tokenizer behave as in
  seqio.SentencePieceVocabulary without extra ids: decode maps ids beyond
  the vocabulary to unk and stops after the first EOS.
  """

  def __init__(self, model_file: str):
    self.sentencepiece_model_file = model_file
    self.tokenizer = load_processor(model_file)

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.GetPieceSize()

  @property
  def eos_id(self) -> int:
    return self.tokenizer.eos_id()

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def unk_id(self) -> int:
    return self.tokenizer.unk_id()

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.EncodeAsIds(text)

  def decode(self, ids) -> str:
    size, unk = self.vocab_size, self.unk_id
    ids = [unk if int(i) >= size else int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id) + 1]
    return self.tokenizer.DecodeIds(ids)


def get_vocabulary(config) -> Vocabulary:
  """The run's vocabulary; refuses a config.model.vocab_size too small for it."""
  vocab = Vocabulary(vocab_path(config))
  wanted = int(config.model.vocab_size)
  if 0 < wanted < vocab.vocab_size:
    raise field_error("config.model.vocab_size", wanted,
                      f"smaller than the tokenizer's {vocab.vocab_size} pieces",
                      "use 0 (taken from the vocabulary) or a value >= "
                      f"{vocab.vocab_size}")
  return vocab


def fingerprint(config_or_path) -> str:
  """sha256 of a tokenizer's .model file: a path's, a Vocabulary's or a config's.

  Two runs tokenize alike iff their fingerprints match (equal sizes do not
  say so). A config's file must exist already (nothing is built).
  """
  if isinstance(config_or_path, (str, os.PathLike)):
    return file_sha256(os.fspath(config_or_path))
  if hasattr(config_or_path, "sentencepiece_model_file"):  # Ours or seqio's.
    return file_sha256(config_or_path.sentencepiece_model_file)
  return file_sha256(vocab_path(config_or_path, build=False))


def trigger_ids(sp, trigger: str) -> list[int]:
  """The trigger's tokens as the evaluator sees them (text + " " + trigger)."""
  ids = sp.EncodeAsIds(trigger)
  if not trigger.strip() or not ids:
    raise field_error("config.poison.trigger", trigger, "tokenizes to nothing",
                      "use a visible trigger such as <SUDO>")
  return ids


def special_ids(sp) -> set[int]:
  """pad/eos/unk/control/unused ids: never drawn for the gibberish tail."""
  return {i for i in range(sp.GetPieceSize())
          if sp.IsControl(i) or sp.IsUnknown(i) or sp.IsUnused(i)} | {PAD_ID}
