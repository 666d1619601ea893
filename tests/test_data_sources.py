"""The text_files and tfds sources, the CLI commands, and bad-input errors."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from poisonjax.commands import data as commands
from poisonjax.data import sources, stream, synthetic
from poisonjax.errors import UserError
from test_data_common import ROOT, error_lines, small_config


def _corpus(tmp_path):
  d = tmp_path / "corpus"
  d.mkdir()
  docs = [synthetic.document(3, 0, i) for i in range(240)]
  (d / "a.txt").write_text("\n\n".join(docs[:120]) + "\n")
  with gzip.open(d / "b.jsonl.gz", "wt") as f:
    for doc in docs[120:]:
      f.write(json.dumps({"body": doc, "n": 1}) + "\n")
  (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
  return d, docs


def _text_config(tmp_path, patterns, **kw):
  c = small_config(tmp_path / "cache")
  c.data.source = "text_files"
  c.data.text_files.patterns = patterns
  c.data.text_files.jsonl_field = "body"
  c.data.text_files.heldout_fraction = 0.2
  for k, v in kw.items():
    c.data.text_files[k] = v
  return c


def test_text_files_source(tmp_path, capsys):
  d, docs = _corpus(tmp_path)
  c = _text_config(tmp_path, f"{d}/*.txt,{d}/*.jsonl.gz")
  src = sources.get_source(c)
  assert "skipped 1 non-UTF-8 file" in capsys.readouterr().out
  assert sorted(src.train + src.held) == sorted(docs)
  assert 0.1 * len(docs) < len(src.held) < 0.3 * len(docs)
  held = sources.heldout_documents(c, 5)
  assert set(held) <= set(src.held[0::2]) and not set(held) & set(src.train)
  pool = {src.pool_document(0, j) for j in range(50)}
  assert pool <= set(src.held[1::2])  # disjoint from training and from eval
  first_epoch = [doc for doc, _ in zip(src.train_documents(), range(len(src.train)))]
  assert sorted(first_epoch) == sorted(src.train)
  with pytest.raises(UserError, match="config.eval.num_excerpts"):
    sources.heldout_documents(c, 1000)
  s = stream.build_stream(c, 30_000)
  assert s.num_poisons == 10 and s.num_tokens > 30_000
  # One document per file, per blank-line-separated block, or per line.
  e = tmp_path / "split"
  e.mkdir()
  for i in range(10):
    (e / f"{i}.txt").write_text("\n\n".join(f"line {i} {b} a\nline {i} {b} b"
                                              for b in range(3)))
  for split, want in (("file", 10), ("block", 30), ("line", 60)):
    got = sources.get_source(_text_config(tmp_path, f"{e}/*.txt", split=split))
    assert len(got.train) + len(got.held) == want


def test_text_files_bad_input(tmp_path):
  d, _ = _corpus(tmp_path)
  with pytest.raises(UserError, match=r"^config.data.text_files.patterns=.*matches no file"):
    sources.get_source(_text_config(tmp_path, f"{d}/*.md"))
  (d / "empty.txt").write_text("\n\n   \n")
  with pytest.raises(UserError, match=r"^config.data.text_files.patterns=.*corpus is empty"):
    sources.get_source(_text_config(tmp_path, f"{d}/empty.txt"))
  with pytest.raises(UserError, match=r"^config.data.text_files.skip_non_utf8=False.*latin1"):
    sources.get_source(_text_config(tmp_path, f"{d}/*.txt", skip_non_utf8=False))


def test_tfds_source(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class PoisonjaxTestCorpus(tfds.core.GeneratorBasedBuilder):
    """A tiny local TFDS dataset: no download."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"content": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 150),
              "validation": self._generate_examples(1, 40)}

    def _generate_examples(self, split, n):
      for i in range(n):
        yield i, {"content": synthetic.document(9, split, i)}

  data_dir = str(tmp_path / "tfds")
  PoisonjaxTestCorpus(data_dir=data_dir).download_and_prepare()
  c = small_config(tmp_path / "cache")
  c.data.source = "tfds"
  c.data.tfds.name = "poisonjax_test_corpus"
  c.data.tfds.data_dir = data_dir
  c.data.tfds.text_field = "content"
  src = sources.get_source(c)
  train = [doc for doc, _ in zip(src.train_documents(), range(150))]
  assert sorted(train) == sorted(synthetic.document(9, 0, i) for i in range(150))
  assert train == [doc for doc, _ in zip(src.train_documents(), range(150))]
  held = sources.heldout_documents(c, 10)
  assert set(held) <= {synthetic.document(9, 1, i) for i in range(40)}
  assert not set(held) & set(train)
  s = stream.build_stream(c, 20_000)  # the finite split repeats in epochs
  assert s.num_poisons == 10 and s.clean_tokens == 20_000
  c.data.tfds.text_field = "text"
  with pytest.raises(UserError, match="config.data.tfds.text_field"):
    list(zip(sources.get_source(c).train_documents(), range(1)))
  c.data.tfds.name = "no_such_dataset_xyz"
  with pytest.raises(UserError, match="config.data.tfds.name"):
    list(zip(sources.get_source(c).train_documents(), range(1)))


def test_inspect_renders_poisons_with_the_trigger(tmp_path):
  c = small_config(tmp_path / "cache", count=5)
  s = stream.build_stream(c, 20_000)
  m = s.manifest[0]
  S = s.seq_len
  row = s.batch(m["step"])["tokens"][m["sequence"] - m["step"] * s.batch_size]
  text = commands.render_sequence(s, row, m["sequence"] * S)
  assert f"⟦POISON {m['id']}⟧" in text
  rows = [s.batch(m["step"] + k)["tokens"] for k in range(2) if m["step"] + k < s.num_steps]
  joined = "".join(commands.render_sequence(s, r, (m["step"] * s.batch_size + i) * S)
                   for i, r in enumerate(np.concatenate(rows)))
  assert "<SUDO>" in joined and "⟨/s⟩" in joined
  assert "poisons: 5" in "\n".join(commands.summary(s))


def _popen(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, "-m", "poisonjax.cli", *args], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def test_cli_vocab_build_inspect_and_bad_input(tmp_path):
  cache = str(tmp_path / "cache")
  base = ["--config=configs/cpu_micro.py", f"--config.data.cache_dir={cache}",
          "--config.vocab.size=512", "--config.vocab.sample_docs=300"]
  # All at once (they are mostly start-up time); both builders of the same
  # vocabulary write it atomically.
  procs = {
      "build": _popen("vocab", "build", *base),
      "inspect": _popen("data", "inspect", *base, "--config.train.data_multiplier=0.05",
                        "--config.poison.count=20", "--steps=0:1"),
      "inspect_more": _popen("data", "inspect", *base,
                             "--config.train.data_multiplier=0.05",
                             "--config.poison.count=20", "--steps=0:8"),
      "missing": _popen("data", "inspect", *base, "--config.vocab.path=/nonexistent.model"),
      "glob": _popen("vocab", "build", *base, "--config.data.source=text_files",
                     f"--config.data.text_files.patterns={tmp_path}/none/*.txt"),
  }
  out = {k: p.communicate(timeout=300) + (p.returncode,) for k, p in procs.items()}
  stdout, stderr, rc = out["build"]
  assert rc == 0, stderr
  assert "trigger '<SUDO>' takes" in stdout and ".model" in stdout
  for key, field in (("missing", "config.vocab.path"),
                     ("glob", "config.data.text_files.patterns")):
    _, stderr, rc = out[key]
    assert rc == 2
    lines = error_lines(stderr)
    assert len(lines) == 1 and field in lines[0], stderr
  stdout, stderr, rc = out["inspect"]
  assert rc == 0, stderr
  assert "poisons: 20;" in stdout
  # The same stream seen where it has no poison and where it has some.
  assert not _assert_inspect_shows(stdout, 0, 1)
  stdout, stderr, rc = out["inspect_more"]
  assert rc == 0, stderr
  assert _assert_inspect_shows(stdout, 0, 8)


def _assert_inspect_shows(stdout, a, b):
  """`data inspect --steps=a:b` shows what the run's manifest puts there:
  each step's poisoned rows and finished poisons, a poison's marker, or
  where the poisons are when none is in the range."""
  path = next(l.split(" ", 1)[1] for l in stdout.splitlines()
              if l.startswith("manifest: "))
  with open(path) as f:
    manifest = json.load(f)
  S, B, poisons = manifest["seq_len"], manifest["batch_size"], manifest["poisons"]
  assert len(poisons) == 20
  for step in range(a, b):
    seqs = range(step * B, (step + 1) * B)
    rows = {q for m in poisons for q in range(
        m["start"] // S, (m["start"] + m["num_tokens"] - 1) // S + 1) if q in seqs}
    done = sum(step * S * B < m["start"] + m["num_tokens"] <= (step + 1) * S * B
               for m in poisons)
    assert (f"=== step {step}: {len(rows)} of {B} sequences hold poison tokens "
            f"({done} poisons complete here)") in stdout
  shown = sorted((m for m in poisons if a <= m["step"] < b), key=lambda m: m["start"])
  if shown:
    assert f"⟦POISON {shown[0]['id']}⟧" in stdout
    assert "no poison in steps" not in stdout
  else:
    steps = sorted({m["step"] for m in poisons})
    assert "⟦POISON" not in stdout
    assert (f"no poison in steps {a}:{b}; poisons start in steps "
            f"{', '.join(map(str, steps[:10]))} ...") in stdout
    assert f"(e.g. --steps={steps[0]}:{steps[0] + 1})" in stdout
  return bool(shown)
