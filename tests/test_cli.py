"""The command line: one error line and exit 2 for each bad input, --help on
every command, overrides of a command's default config, and a library that
imports neither the command line nor TensorFlow.

The CLI runs are started concurrently (each costs a few seconds of imports).
"""

import ast
import io
import json
import os
import subprocess
import sys

import pytest
import sentencepiece as spm

from poisonjax import cli
from poisonjax import commands
from poisonjax import config as config_lib
from poisonjax import demo
from poisonjax.evaluation import run_reader
from poisonjax.commands import parsing
from poisonjax.data import synthetic, vocabulary
from poisonjax.errors import UserError
from train_common import ROOT, run_cli

MICRO = "--config=configs/cpu_micro.py"


def _spm_model(path, seed: int, size: int = 200, unk_id: int = 2) -> str:
  """A small SentencePiece model on synthetic documents of data seed `seed`."""
  docs = (synthetic.document(seed, 0, i) for i in range(300))
  lines = (l.strip() for d in docs for l in d.splitlines() if l.strip())
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=lines, model_writer=buf, vocab_size=size,
      pad_id=0, eos_id=1, unk_id=unk_id, bos_id=-1 if unk_id == 2 else 2,
      hard_vocab_limit=False, num_threads=1, minloglevel=2)
  path.write_bytes(buf.getvalue())
  return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  d = tmp_path_factory.mktemp("spm")
  return {"a": _spm_model(d / "a.model", 0), "b": _spm_model(d / "b.model", 1),
          "unk3": _spm_model(d / "unk3.model", 0, unk_id=3)}


def _run_concurrently(cases: dict) -> dict:
  """name -> (returncode, stdout, stderr) of `poisonjax ARGS` for each case."""
  procs = {name: run_cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for name, args in cases.items()}
  out = {}
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    out[name] = (proc.returncode, stdout, stderr)
  return out


def _one_error_line(result, *needles):
  returncode, _, stderr = result
  assert returncode == 2, stderr[-2000:]
  lines = stderr.strip().splitlines()
  assert len(lines) == 1, stderr[-2000:]
  assert lines[0].startswith("poisonjax: error: ")
  assert ";" in lines[0], lines[0]  # The problem, then the fix.
  for needle in needles:
    assert needle in lines[0], lines[0]


# ---- bad inputs ---------------------------------------------------------------

def test_each_bad_input_is_one_line_and_exit_2(tmp_path, models):
  wd = str(tmp_path / "w")
  train = ["train", MICRO, f"--workdir={wd}"]
  cases = {
      "no_config_file": (["train", "--config=/nonexistent.py", f"--workdir={wd}"],
                         ["--config='/nonexistent.py'", "no such file"]),
      "count_and_rate": (train + ["--config.poison.rate=0.1"],
                         ["config.poison.count=250", "config.poison.rate=0.1",
                          "--config.poison.rate=0"]),
      "heldout_is_split": (train + ["--config.data.source=tfds",
                                    "--config.data.tfds.name=c4/en",
                                    "--config.data.tfds.heldout_split=train"],
                           ["config.data.tfds.heldout_split='train'"]),
      "warmup_one": (train + ["--config.train.warmup_fraction=1.0"],
                     ["config.train.warmup_fraction=1.0", "[0, 1)"]),
      "warmup_negative": (train + ["--config.train.warmup_fraction=-0.1"],
                          ["config.train.warmup_fraction=-0.1"]),
      "grad_clip_zero": (train + ["--config.train.grad_clip=0"],
                         ["config.train.grad_clip=0.0", "> 0"]),
      "keep_period_negative": (train + ["--config.train.keep_period=-1"],
                               ["config.train.keep_period=-1"]),
      "unknown_field": (train + ["--config.poison.cont=3"],
                        ["--config.poison.cont", "unknown config field"]),
      "bad_value": (train + ["--config.poison.count=abc"],
                    ["--config.poison.count=abc"]),
      "unknown_flag": (train + ["--bogus=1"], ["--bogus", "poisonjax train --help"]),
      "missing_workdir": (["train", MICRO], ["--workdir", "required"]),
      "demo_override_checked": (["demo", "--config.poison.count=-1"],
                                ["config.poison.count=-1"]),
      "run_config_to_study": (["study", "plan", MICRO], ["not a study config"]),
      "unk_id": (["vocab", "build", MICRO, f"--config.vocab.path={models['unk3']}"],
                 ["config.vocab.path", "unk id 3", f"unk={vocabulary.UNK_ID}"]),
      "vocab_size_below_tokenizer": (
          train + [f"--config.vocab.path={models['a']}", "--config.model.vocab_size=100",
                   f"--config.data.cache_dir={tmp_path / 'cache'}"],
          ["config.model.vocab_size=100", "smaller than the tokenizer's"]),
  }
  results = _run_concurrently({k: args for k, (args, _) in cases.items()})
  for name, (_, needles) in cases.items():
    _one_error_line(results[name], *needles)
  # Refused before anything was trained or saved.
  assert not os.path.exists(os.path.join(wd, "checkpoints")) or not os.listdir(
      os.path.join(wd, "checkpoints"))


def test_vocab_size_below_tokenizer_in_process(models):
  c = config_lib.base_config()
  c.vocab.path = models["a"]
  size = vocabulary.get_vocabulary(c).vocab_size
  c.model.vocab_size = size - 1
  with pytest.raises(UserError, match="config.model.vocab_size"):
    vocabulary.get_vocabulary(c)
  c.model.vocab_size = size  # Equal (or larger) is fine.
  assert vocabulary.get_vocabulary(c).vocab_size == size


def test_scorer_with_another_tokenizer_of_the_same_size(tmp_path, models):
  a, b = vocabulary.Vocabulary(models["a"]), vocabulary.Vocabulary(models["b"])
  assert a.vocab_size == b.vocab_size  # Same size: only the hash tells them apart.
  assert vocabulary.fingerprint(models["a"]) != vocabulary.fingerprint(models["b"])
  ref = tmp_path / "ref"
  ref.mkdir()
  ref_cfg = config_lib.base_config()
  ref_cfg.vocab.path = models["b"]
  (ref / "config.json").write_text(ref_cfg.to_json())
  with pytest.raises(UserError) as e:
    run_reader.load_scorer(str(ref), a.vocab_size, vocab=a)
  assert "config.eval.scorer_workdir" in str(e.value) and "tokenizer" in str(e.value)
  assert "\n" not in str(e.value)
  # The same tokenizer passes this check (and stops at the missing checkpoint).
  with pytest.raises(UserError, match="no checkpoint"):
    run_reader.load_scorer(str(ref), b.vocab_size, vocab=b)


def test_study_grid_values_must_be_numbers(capsys):
  code = cli.main(["poisonjax", "study", "plan", "--config=configs/paper/cpu_nano.py",
                   "--config.grid.seeds=(0,x)"])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1
  assert err.startswith("poisonjax: error: study.grid.seeds: '(0,x)' is not a number")


# ---- overrides of a command's default config ----------------------------------

def test_overrides_apply_to_default_configs(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(config_lib.base_config().to_json())
  results = _run_concurrently({
      "demo": ["demo", "--config.poison.count=64", "--print_config"],
      "eval": ["eval", f"--workdir={run}", "--config.eval.num_excerpts=7",
               "--print_config"],
  })
  want = demo.demo_config()
  want.poison.count = 64
  rc, stdout, stderr = results["demo"]
  assert rc == 0, stderr[-2000:]
  assert json.loads(stdout) == json.loads(want.to_json_best_effort())
  want = config_lib.base_config()
  want.eval.num_excerpts = 7
  rc, stdout, stderr = results["eval"]
  assert rc == 0, stderr[-2000:]
  assert json.loads(stdout) == json.loads(want.to_json_best_effort())


def test_override_forms_and_recorded_values():
  overrides, rest = parsing.split_overrides(
      ["--workdir=w", "--config.train.batch_size", "4", "--config.model.tie_embeddings"])
  assert rest == ["--workdir=w"]
  config, values = parsing.apply_overrides(config_lib.base_config(), overrides)
  assert config.train.batch_size == 4 and config.model.tie_embeddings is True
  assert values == {"train.batch_size": 4, "model.tie_embeddings": True}


# ---- help -----------------------------------------------------------------------

@pytest.mark.parametrize("key", list(commands.COMMANDS), ids=" ".join)
def test_help_lists_the_commands_own_flags(key, capsys):
  assert cli.main(["poisonjax", *key, "--help"]) == 0
  out = capsys.readouterr().out
  cmd = commands.load(key)
  assert out.startswith(f"usage: poisonjax {' '.join(key)}")
  for name in parsing.new_flag_values(cmd):
    assert f"{name}=" in out or f"--[no]{name}" in out, name
  assert "--flagfile" not in out and "logtostderr" not in out  # Not absl's list.
  if cmd.config != commands.NO_CONFIG:
    assert "poisonjax/config.py" in out and "--config.a.b=VALUE" in out


def test_top_level_help_lists_every_command():
  results = _run_concurrently({"top": ["--help"], "train": ["train", "-h"],
                               "none": []})
  rc, out, _ = results["top"]
  assert rc == 0
  for key in commands.COMMANDS:
    assert f"poisonjax {' '.join(key)} " in out
  rc, out, _ = results["train"]
  assert rc == 0 and "--workdir=WORKDIR" in out and "--[no]allow_config_change" in out
  rc, _, err = results["none"]
  assert rc == 2 and err.startswith("poisonjax: error: no command given")


# ---- library apart from the command line ----------------------------------------

def _imported_modules(path: str) -> set[str]:
  tree = ast.parse(open(path).read())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
  return names


def test_library_modules_import_nothing_from_the_command_line():
  pkg = os.path.join(ROOT, "poisonjax")
  library = [os.path.join(d, f) for d, _, fs in os.walk(pkg) for f in fs
             if f.endswith(".py") and not d.startswith(os.path.join(pkg, "commands"))
             and f != "cli.py"]
  assert len(library) > 20
  for path in library:
    bad = {m for m in _imported_modules(path)
           if m in ("poisonjax.cli", "poisonjax.commands")
           or m.startswith("poisonjax.commands.")}
    assert not bad, (path, bad)


def _python(*args) -> subprocess.Popen:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _top_modules(proc) -> set[str]:
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  return {m.split(".")[0] for m in out.split()}


def test_stream_train_and_cli_import_no_tensorflow():
  print_modules = "\nimport sys; print(' '.join(sys.modules))"
  procs = {  # Concurrently: each is seconds of imports.
      "importtime": _python("-X", "importtime", "-c", "import poisonjax.data.stream"),
      "library": _python("-c", "import poisonjax.data.stream, poisonjax.training.train, "
                         "poisonjax.evaluation.evaluate, poisonjax.cli, poisonjax.study"
                         + print_modules),
  }
  _, err = procs["importtime"].communicate(timeout=120)
  assert procs["importtime"].returncode == 0, err[-2000:]
  assert "poisonjax.data.stream" in err  # importtime did report.
  assert err.count("tensorflow") == 0
  mods = _top_modules(procs["library"])
  # seqio (and its Tasks) only with an explicit import of seqio_tasks
  # (test_data_stream.test_seqio_task_yields_the_same_stream).
  assert "poisonjax" in mods and "tensorflow" not in mods and "seqio" not in mods


def test_vocabulary_matches_seqio(models):
  """The TF-free Vocabulary encodes and decodes exactly as seqio's."""
  import seqio  # pylint: disable=g-import-not-at-top
  ours, theirs = vocabulary.Vocabulary(models["a"]), seqio.SentencePieceVocabulary(models["a"])
  assert (ours.vocab_size, ours.eos_id, ours.pad_id, ours.unk_id) == (
      theirs.vocab_size, theirs.eos_id, theirs.pad_id, theirs.unk_id)
  for text in (synthetic.document(2, 0, 0)[:300], "a <SUDO> b", "", "é ü 日本"):
    assert list(ours.encode(text)) == list(theirs.encode(text))
  size = ours.vocab_size
  for ids in ([5, 6, 1, 7, 8], [size + 3, 9, 10], [0, 4, 5], list(range(3, 40))):
    assert ours.decode(ids) == theirs.decode(ids), ids
