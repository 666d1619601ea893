"""Nothing mixed or corrupted silently (issue 25).

One tiny text_files run (6 steps, checkpoints 2, 4 and 6) is copied and
damaged in the ways a hostile but honest user finds: changed inputs under
an unchanged config, corrupted or non-finite checkpoints, signals during
setup, damaged run files, an unreachable bucket, and values that used to
pass validation. Each case asserts what the user now sees.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from poisonjax import budget
from poisonjax.training import checkpointing
from poisonjax import cli
from poisonjax import config as config_lib
from poisonjax import files
from poisonjax.model import transformer as model_lib
from poisonjax.training import run_history
from poisonjax.evaluation import run_reader
from poisonjax import rundir
from poisonjax.training import runlock
from poisonjax import study
from poisonjax.training import train
from poisonjax.data import poison
from poisonjax.data import sources
from poisonjax.data import stream as stream_lib
from poisonjax.data import synthetic
from poisonjax.data import vocabulary
from poisonjax.errors import UserError
from gcs_emulator import emulated_gcs, forget_listings, no_remote_connections, unreachable_gcs
from train_common import ROOT, tiny_config, train_cache  # noqa: F401


TEXT_FIELDS = {"data.source": "text_files", "train.max_steps": 6,
               "train.ckpt_every": 2, "train.keep_checkpoints": 3,
               "eval.num_excerpts": 4, "eval.prompt_tokens": 8, "eval.gen_tokens": 8}


def text_config(cache, corpus="corpus.txt", **overrides):
  """The tiny model on a text_files corpus; eval settings small enough.

  The corpus path is relative: a copy of the run, in another directory,
  reads its own copy under the same config.
  """
  c = tiny_config(cache, **{**TEXT_FIELDS, **overrides})
  c.data.text_files.patterns = str(corpus)
  c.data.text_files.heldout_fraction = 0.35  # 64 held-out documents.
  return c


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  """(corpus, cache, workdir) of a 6-step run with checkpoints 2, 4, 6."""
  root = tmp_path_factory.mktemp("text-run")
  corpus = root / "corpus.txt"
  corpus.write_text("".join(synthetic.document(7, synthetic.TRAIN, i) + "\n\n"
                            for i in range(500)))
  wd, here = root / "run", os.getcwd()
  os.chdir(root)
  try:
    train.run(text_config(root / "cache"), wd)
  finally:
    os.chdir(here)
  assert rundir.checkpoint_steps(wd) == [2, 4, 6]
  return corpus, root / "cache", wd


def copy_run(text_run, dest, monkeypatch):
  """A private copy of the run (workdir, corpus, cache) in `dest`, the cwd."""
  corpus, cache, wd = text_run
  shutil.copytree(wd, dest / "run")
  shutil.copytree(cache, dest / "cache")
  shutil.copy2(corpus, dest / "corpus.txt")  # Same mtime: same cache keys.
  monkeypatch.chdir(dest)
  return dest / "corpus.txt", dest / "cache", dest / "run"


def one_line(fn, *args, **kwargs) -> str:
  with pytest.raises(UserError) as e:
    fn(*args, **kwargs)
  msg = str(e.value)
  assert "\n" not in msg, msg
  return msg


def history_rows(wd) -> int:
  return len(run_history.history(wd))


def biggest_file(step_dir):
  return max(files.list_files(step_dir), key=lambda p: p.stat().length)


def xor_middle(path, n=64):
  data = bytearray(path.read_bytes())
  mid = len(data) // 2
  data[mid:mid + n] = bytes(b ^ 0x5A for b in data[mid:mid + n])
  path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------
# 1. A resume reads what the run read: tokenizer and data fingerprinted.
# ---------------------------------------------------------------------------


def test_a_resume_on_changed_inputs_is_refused_naming_what_changed(
    text_run, tmp_path, monkeypatch):
  corpus, cache, wd = copy_run(text_run, tmp_path, monkeypatch)
  config = text_config(cache, **{"train.max_steps": 8})
  cached = vocabulary.vocab_path(config, build=False)
  rows = history_rows(wd)

  def other_vocab(**fields):  # Another valid model, built on the same text.
    c = text_config(tmp_path / "other", **fields)
    return open(vocabulary.build_vocabulary(c, str(tmp_path / "v.model")), "rb").read()

  same_size = other_vocab(**{"vocab.sample_docs": 150})
  assert vocabulary.load_processor(str(tmp_path / "v.model")).GetPieceSize() == 512
  for replacement in (same_size, other_vocab(**{"vocab.size": 400})):
    open(cached, "wb").write(replacement)
    msg = one_line(train.run, config, wd)
    assert "the vocabulary file changed: sha256 " in msg
    assert "does not fit" not in msg and "config." not in msg.split(";")[0]
    assert "--allow_config_change" in msg
    assert history_rows(wd) == rows  # Nothing written.

  open(cached, "wb").write(same_size)  # Allowed: trains on, recorded.
  assert train.run(config, wd, allow_config_change=True)["final_step"] == 8
  resumed = [r for r in run_history.history(wd) if r["event"] == "resume"][-1]
  assert any("vocabulary" in c for c in resumed["input_changes"])

  with open(corpus, "a") as f:  # Appended to; the config says the same.
    f.write("".join(synthetic.document(8, synthetic.TRAIN, i) + "\n\n"
                    for i in range(100)))
  msg = one_line(train.run, text_config(cache, **{"train.max_steps": 10}), wd)
  assert "text_files: corpus.txt grew from " in msg
  assert rundir.checkpoint_steps(wd)[-1] == 8  # Nothing trained.


# ---------------------------------------------------------------------------
# 2. Checkpoints are checked by content, and for NaN/Inf.
# ---------------------------------------------------------------------------


def _state(step, fill=None, size=1 << 19):
  """A train-state stand-in; its 2 MiB array makes a >1 MiB file."""
  w = jnp.asarray(np.random.default_rng(step).normal(size=size), jnp.float32)
  if fill is not None:
    w = w.at[size // 2].set(fill)
  return {"step": jnp.int32(step), "params": {"w": w}}


def _abstract(size=1 << 19):
  sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sh),
          "params": {"w": jax.ShapeDtypeStruct((size,), jnp.float32, sharding=sh)}}


@pytest.mark.parametrize("damage", ["xor_in_a_large_file", "nan", "inf"])
def test_a_corrupt_or_nonfinite_checkpoint_falls_back_to_the_previous(
    tmp_path, capsys, damage):
  ckpt = checkpointing.Checkpoints(tmp_path, config_lib.base_config())
  ckpt.save(1, _state(1))
  fill = {"nan": np.nan, "inf": np.inf}.get(damage)
  ckpt.save(2, _state(2, fill))
  ckpt.close()
  if damage == "xor_in_a_large_file":
    big = biggest_file(tmp_path / "checkpoints" / "2")
    assert big.stat().length > 1 << 20
    xor_middle(big)
  ckpt = checkpointing.Checkpoints(tmp_path, config_lib.base_config())
  state, step = ckpt.restore_newest(_abstract())
  ckpt.close()
  assert step == 1 and np.array_equal(state["params"]["w"], _state(1)["params"]["w"])
  assert (tmp_path / rundir.DAMAGED_CHECKPOINTS / "2").is_dir()
  warning = [l for l in capsys.readouterr().err.splitlines() if "step 2 is damaged" in l]
  assert len(warning) == 1
  assert ("params/w" in warning[0] if fill is not None
          else "changed (same size" in warning[0])


# The emulator now and then serves tensorstore a generation it rejects (see
# test_cloud_paths): only that error reruns the test.
@pytest.mark.flaky(reruns=2, only_rerun=["Malformed StorageGeneration"])
def test_on_gs_the_stored_crc32c_catches_a_rewritten_object(tmp_path, capsys):
  with emulated_gcs() as bucket, no_remote_connections() as attempts:
    wd = f"{bucket}/ck-{time.time_ns()}"
    ckpt = checkpointing.Checkpoints(wd, config_lib.base_config())
    for step in (1, 2):
      ckpt.save(step, _state(step))  # A 2 MiB object: once sized, not read.
    ckpt.close()
    forget_listings()
    saved = files.read_json(f"{wd}/{rundir.CHECKPOINT_DIGESTS}/2.json")
    name = max(saved, key=lambda n: saved[n][0] if "/d/" in n else -1)
    obj = files.as_path(f"{wd}/checkpoints/2/{name}")
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF  # Same size, one byte flipped.
    obj.write_bytes(bytes(data))
    assert obj.stat().length > 1 << 20
    ckpt = checkpointing.Checkpoints(wd, config_lib.base_config())
    state, step = ckpt.restore_newest(_abstract())
    ckpt.close()
    assert step == 1 and attempts == []
  assert f"{name} changed (same size" in capsys.readouterr().err


def test_a_resume_over_damaged_files_falls_back_and_names_each(
    text_run, tmp_path, monkeypatch, capfd):
  """One damaged copy: a corrupted checkpoint file, a non-UTF-8 line in
  metrics.jsonl and eval.jsonl, a lock whose heartbeat is not a number."""
  corpus, cache, wd = copy_run(text_run, tmp_path, monkeypatch)
  xor_middle(biggest_file(wd / "checkpoints" / "6"))
  for name in ("metrics.jsonl", "eval.jsonl"):
    rows = (wd / name).read_bytes() if (wd / name).exists() else b'{"step": 0}\n'
    (wd / name).write_bytes(b'{"step": -1, "note": "caf\xe9"}\n' + rows)
  lock = wd / rundir.LOCK
  lock.write_text(json.dumps({"what": "train", "host": "elsewhere", "pid": 1,
                              "since": "?", "heartbeat": "soon", "token": "x"}))
  os.utime(lock, (time.time() - 7200,) * 2)  # Last written 2 h ago.
  capfd.readouterr()
  summary = train.run(text_config(cache, **{"train.max_steps": 8}), wd)
  out, err = capfd.readouterr()
  assert summary["final_step"] == 8 and "Traceback" not in err
  assert "resuming" in out and "at step 4/8" in out
  assert "checkpoint step 6 is damaged (files differ" in err
  for name in ("metrics.jsonl", "eval.jsonl"):
    assert f"{wd / name}: line 1 is not a UTF-8 JSON object" in err
  assert "taking over" in err and "no usable heartbeat" in err
  assert rundir.checkpoint_steps(wd) == [4, 6, 8]


# ---------------------------------------------------------------------------
# 3. Signals from the first second.
# ---------------------------------------------------------------------------

CONFIG_FILE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from train_common import tiny_config

    def get_config():
      c = tiny_config({cache!r}, **{overrides!r})
      c.data.text_files.patterns = "corpus.txt"
      c.data.text_files.heldout_fraction = 0.35
      return c
    """)

SIGNALLER = textwrap.dedent("""
    import contextlib, io, json, os, signal, sys
    from poisonjax.training import checkpointing, continued, metrics
    from poisonjax import cli
    from poisonjax.data import poison, poison_language

    def hook(module, name, sig):
      original = getattr(module, name)
      def fire(*args, **kwargs):
        os.kill(os.getpid(), sig)
        return original(*args, **kwargs)
      setattr(module, name, fire)
      return lambda: setattr(module, name, original)

    tiny, text = "--config=" + {tiny!r}, "--config=" + {text!r}
    scenarios = [  # name, where the signal comes, flags, workdir
      ("vocab", poison_language, "vocab_sample", signal.SIGTERM,
       [tiny, "--config.data.cache_dir={fresh}"], {new!r}),
      ("stream", poison, "make_poisons", signal.SIGTERM,
       [tiny, "--config.poison.seed=2525"], {new!r} + "2"),
      ("compile", continued, "start_state", signal.SIGINT, [tiny], {new!r} + "3"),
      ("restore", checkpointing.Checkpoints, "restore_newest", signal.SIGTERM,
       [text], {resume!r}),
      ("before_step_1", metrics.MetricLogger, "__init__", signal.SIGINT, [tiny],
       {new!r} + "4"),
    ]
    for name, module, attr, sig, flags, wd in scenarios:
      undo = hook(module, attr, sig)
      buf = io.StringIO()
      with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = cli.main(["poisonjax", "train", "--workdir=" + wd, *flags])
      undo()
      print("RESULT", json.dumps({{"name": name, "rc": rc, "out": buf.getvalue(),
                        "lock": os.path.exists(os.path.join(wd, "lock.json")),
                        "files": sorted(os.path.relpath(os.path.join(d, f), wd)
                                        for d, _, fs in os.walk(wd) for f in fs)}}),
            flush=True)
    """)


def test_signals_during_setup_exit_cleanly_and_write_nothing(
    text_run, train_cache, tmp_path, monkeypatch):
  corpus, cache, wd = copy_run(text_run, tmp_path, monkeypatch)
  before = sorted(os.listdir(wd))
  tests = os.path.join(ROOT, "tests")
  (tmp_path / "tiny.py").write_text(CONFIG_FILE.format(
      tests=tests, cache=str(train_cache), overrides={}))
  (tmp_path / "text.py").write_text(CONFIG_FILE.format(
      tests=tests, cache=str(cache), overrides=TEXT_FIELDS))
  script = SIGNALLER.format(tiny=str(tmp_path / "tiny.py"),
                            text=str(tmp_path / "text.py"),
                            fresh=tmp_path / "fresh-cache", new=str(tmp_path / "new"),
                            resume=str(wd))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = {r["name"]: r for r in (json.loads(l[len("RESULT "):])
                                for l in proc.stdout.splitlines()
                                if l.startswith("RESULT "))}
  assert len(got) == 5, proc.stdout[-3000:]
  where = {"vocab": "SIGTERM during the vocabulary build",
           "stream": "SIGTERM during the stream build",
           "compile": "SIGINT during the restore (or the first compile)",
           "restore": "SIGTERM during the restore (or the first compile)"}
  for name, r in got.items():
    assert r["rc"] == 0 and not r["lock"], r
    assert "Traceback" not in r["out"] and "saved step" not in r["out"], r
    if name in where:
      assert f"poisonjax: {where[name]}" in r["out"], r
      assert "nothing was saved" in r["out"]
  for name in ("vocab", "stream", "compile"):
    assert got[name]["files"] == [], got[name]  # No file, not even history.jsonl.
  assert "stopped before step 1; no checkpoint yet" in got["before_step_1"]["out"]
  assert sorted(os.listdir(wd)) == before and rundir.checkpoint_steps(wd) == [2, 4, 6]
  assert not (tmp_path / "fresh-cache" / "vocab").exists() or not any(
      n.endswith(".model") for n in os.listdir(tmp_path / "fresh-cache" / "vocab"))
  streams = train_cache / "streams"
  assert not any(".tmp-" in n for n in os.listdir(streams))


# ---------------------------------------------------------------------------
# 4. One line for every damaged or unreadable file.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["[1, 2, 3]", "{}", '{"model": '])
def test_a_damaged_config_json_is_one_line_for_train_and_eval(
    train_cache, tmp_path, content):
  (tmp_path / "config.json").write_text(content)
  for fn, args in ((train.run, (tiny_config(train_cache), tmp_path)),
                   (run_reader.read_run_config, (str(tmp_path),))):
    msg = one_line(fn, *args)
    assert msg.startswith(f"{tmp_path / 'config.json'}: unreadable as a run's config")
    assert "another config" not in msg
  assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_a_workdir_that_is_a_file_is_one_line(train_cache, tmp_path):
  (tmp_path / "afile").write_text("x")
  for wd in (tmp_path / "afile", tmp_path / "afile" / "run"):
    msg = one_line(train.run, tiny_config(train_cache), wd)
    assert msg.startswith(f"--workdir={wd}: it or a folder above it is a file")


def test_lock_heartbeats_that_prove_nothing_go_stale_after_the_timeout(tmp_path, capsys):
  path = tmp_path / rundir.LOCK
  for beat in ("soon", time.time() + 1e9):  # Not a number; far in the future.
    path.write_text(json.dumps({"what": "train", "host": "elsewhere", "pid": 1,
                                "since": time.time(), "heartbeat": beat,
                                "token": "x"}))
    msg = one_line(runlock.acquire, tmp_path, "train", timeout_s=600)
    assert re.search(r"\(heartbeat unusable, lock file written [0-2]s ago\)", msg), msg
    os.utime(path, (time.time() - 601,) * 2)
    with runlock.hold(tmp_path, "train", timeout_s=600) as lock:
      assert lock.still_ours()
    assert "no usable heartbeat" in capsys.readouterr().err


def _fake_run(root, name, **texts):
  wd = root / name
  wd.mkdir(parents=True)
  (wd / "eval.jsonl").write_text(json.dumps({"step": 0, "increase": 1.0}) + "\n"
                                 + json.dumps({"step": 5, "increase": 2.0}) + "\n")
  for file_name, text in texts.items():
    (wd / file_name.replace("_", ".")).write_bytes(
        text if isinstance(text, bytes) else text.encode())
  return wd


def test_study_collect_skips_a_damaged_run_naming_its_file(tmp_path, capsys):
  root = tmp_path / "root"
  name = lambda seed: study.Run("cpu-xxs", 10, seed, 1.0).name  # noqa: E731
  good = name(0)
  _fake_run(root, good)
  damaged = {name(1): ("summary.json", {"summary_json": '{"final_'}),
             name(2): ("summary.json", {"summary_json": "[]"}),
             name(3): ("config.json", {"config_json": "garbage"}),
             name(4): ("eval.jsonl", {})}
  for name, (_, texts) in damaged.items():
    wd = _fake_run(root, name, **texts)
  (wd / "eval.jsonl").write_bytes(b'{"step": 1}\n\xff\xfe\n{"step": 2}\n')
  rows = study.collect(str(root))
  assert {r["run"] for r in rows} == {good} and len(rows) == 2
  err = capsys.readouterr().err.splitlines()
  for name, (file_name, _) in damaged.items():
    hits = [l for l in err if f"skipped run {name}:" in l]
    assert len(hits) == 1 and str(root / name / file_name) in hits[0], err
  assert cli.main(["poisonjax", "study", "collect", f"--root={root}"]) == 0
  assert cli.main(["poisonjax", "study", "collect", f"--root={root}", "--strict"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("poisonjax: error: run size=cpu-xxs_n=10_seed=")


def test_an_unreachable_bucket_is_one_line_within_seconds(train_cache, monkeypatch):
  monkeypatch.setattr(files, "REACH_TIMEOUT_S", 2.0)
  with unreachable_gcs() as bucket, no_remote_connections() as attempts:
    t0 = time.time()
    msg = one_line(train.run, tiny_config(train_cache), f"{bucket}/runs/x")
    assert msg.startswith(f"--workdir={bucket}/runs/x: cannot reach {bucket} (")
    assert "credentials" in msg
    c = tiny_config(train_cache, **{"data.source": "text_files"})
    c.data.text_files.patterns = f"{bucket}/corpus/*.txt"
    msg = one_line(sources.get_source, c)
    assert msg.startswith("config.data.text_files.patterns=") and "cannot reach" in msg
    assert time.time() - t0 < 15
  assert attempts == []


# ---------------------------------------------------------------------------
# 5. `eval` picks its checkpoint once, and only a sound one.
# ---------------------------------------------------------------------------


def test_eval_takes_the_newest_sound_checkpoint_even_while_pruned(
    text_run, tmp_path, monkeypatch, capsys):
  corpus, cache, wd = copy_run(text_run, tmp_path, monkeypatch)
  config = run_reader.read_run_config(str(wd))
  model_cfg = model_lib.ModelConfig.from_config(config, config.model.vocab_size)
  params, _ = run_reader.restore_params(str(wd), model_cfg, 2)
  nan = jax.tree.map(lambda x: x * jnp.nan, params)
  keep = tiny_config(cache, **{"train.keep_checkpoints": 10})
  ckpt = checkpointing.Checkpoints(wd, keep)
  ckpt.save(8, {"step": jnp.int32(8), "params": nan})  # Finite? No: NaN.
  ckpt.close()
  (wd / "checkpoints" / "6" / "_CHECKPOINT_METADATA").unlink()  # No commit record.
  original = ocp.Checkpointer.restore

  def pruned_while_read(self, path, *args, **kwargs):
    if os.fspath(path).endswith(os.path.join("checkpoints", "4", "default")):
      shutil.rmtree(wd / "checkpoints" / "4")  # A trainer's max_to_keep.
    return original(self, path, *args, **kwargs)

  monkeypatch.setattr(ocp.Checkpointer, "restore", pruned_while_read)
  capsys.readouterr()
  rc = cli.main(["poisonjax", "eval", f"--workdir={wd}", "--samples=0"])
  out, err = capsys.readouterr()
  assert rc == 0, err
  assert f"{wd} at step 2:" in out and "--step" not in err
  assert "checkpoint step 8" in err and "non-finite values (NaN/Inf) in params/" in err
  assert "checkpoint step 6" in err and "no readable orbax commit record" in err
  for step, why in ((8, "non-finite"), (6, "commit record")):
    msg = one_line(run_reader.restore_params, str(wd), model_cfg, step)
    assert msg.startswith(f"--workdir={wd}: checkpoint step {step} is damaged") and why in msg


# ---------------------------------------------------------------------------
# 6. Validation gaps: one line, before anything expensive.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("train.learning_rate", 0.0), ("train.learning_rate", float("nan")),
    ("eval.num_evals", -5)])
def test_values_that_used_to_pass_are_refused_at_once(train_cache, tmp_path, field, value):
  msg = one_line(train.run, tiny_config(train_cache, **{field: value}), tmp_path / "wd")
  assert msg.startswith(f"config.{field}=")
  assert not (tmp_path / "wd").exists()


def test_too_many_poisons_are_refused_before_any_is_made(train_cache, monkeypatch):
  config = tiny_config(train_cache, **{"poison.count": 400})
  vocab = vocabulary.get_vocabulary(config)
  T = budget.clean_token_budget(config, vocab.vocab_size)

  def made(*args, **kwargs):
    raise AssertionError("poisons made before the count was checked")

  monkeypatch.setattr(poison, "make_poisons", made)
  msg = one_line(stream_lib.build_stream, config, T)
  assert msg.startswith("config.poison.count=400: more poisons than the ")


def test_jsonl_records_without_text_are_counted(train_cache, tmp_path, capsys):
  good = [{"text": synthetic.document(3, synthetic.TRAIN, i)} for i in range(40)]
  bad = [{"body": "x"}, {"text": 7}, {"text": "  "}]
  (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good + bad))
  c = tiny_config(train_cache, **{"data.source": "text_files"})
  c.data.text_files.patterns = str(tmp_path / "c.jsonl")
  sources.TextFilesSource(c)
  out = capsys.readouterr().out
  assert (f"text_files: skipped 3 .jsonl record(s) without a non-blank string "
          f"'text' field, e.g. {tmp_path / 'c.jsonl'} line 41") in out


def test_a_damaged_cached_vocabulary_says_to_delete_it(tmp_path):
  config = tiny_config(tmp_path)
  path = vocabulary.cached_vocab_path(config)
  os.makedirs(os.path.dirname(path))
  open(path, "wb").write(b"not a model")
  msg = one_line(vocabulary.get_vocabulary, config)
  assert f"delete {path}: the next run builds it again" in msg
  assert "'' to build" not in msg


def test_fingerprint_changes_are_phrased_for_people():
  from poisonjax.training import fingerprints
  old = {"vocab": "a" * 64, "poisons": "c" * 64,
         "data": {"source": "text_files", "files": {"x.txt": [1_100_000, "1"],
                                                   "y.txt": [10, "2"]}}}
  new = {"vocab": "a" * 64, "poisons": "d" * 64,
         "data": {"source": "text_files", "files": {"x.txt": [1_300_000, "3"],
                                                   "z.txt": [5, "4"]}}}
  assert fingerprints.changes(old, new) == [
      "text_files: x.txt grew from 1.1 MB to 1.3 MB", "text_files: y.txt is gone",
      "text_files: z.txt is new (5 bytes)"]
  only_poisons = fingerprints.changes(old, dict(old, poisons="d" * 64))
  assert len(only_poisons) == 1 and "poison manifest changed" in only_poisons[0]
  assert fingerprints.changes(old, {"vocab": "a" * 64}) == []  # Older record.
