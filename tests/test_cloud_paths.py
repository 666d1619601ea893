"""gs:// paths end to end: workdir, cache, vocabulary, text files, study root.

Against a local GCS emulator (tests/gcs_emulator.py) for the libraries that
honour an emulator endpoint: gcsfs (epath's fsspec backend), tensorstore
(orbax's arrays) and google-cloud-storage (orbax's bucket look-ups).
TensorFlow's GCS file system has no endpoint setting; for it (epath's
default backend when TensorFlow is installed, and clu's TensorBoard writer)
the tests check that the gs:// string reaches it unchanged.
"""

import gzip
import json
import os
import threading
import uuid

import numpy as np
import pytest

from poisonjax import files
from poisonjax.training import run_history
from poisonjax.evaluation import run_reader
from poisonjax import rundir
from poisonjax.training import runlock
from poisonjax.training import train
from poisonjax.errors import UserError
from gcs_emulator import bucket_objects, emulated_gcs, no_remote_connections
from train_common import tiny_config


@pytest.fixture(scope="module")
def gcs():
  with emulated_gcs() as bucket:
    yield bucket


@pytest.fixture
def offline(tmp_path, monkeypatch):
  """No remote connection; the stream mirror and cwd under tmp_path."""
  monkeypatch.setenv("POISONJAX_MIRROR", str(tmp_path / "mirror"))
  monkeypatch.chdir(tmp_path)  # A `gs:` folder would appear here.
  with no_remote_connections() as attempts:
    yield attempts
  assert attempts == []
  assert not (tmp_path / "gs:").exists()


@pytest.fixture
def tensorboard_logdirs(monkeypatch):
  """clu's TensorBoard writer (tf.summary: TF's GCS client) records its logdir."""
  from clu import metric_writers
  from clu.metric_writers import utils

  logdirs = []

  class Recorded(metric_writers.LoggingWriter):
    def __init__(self, logdir):
      logdirs.append(logdir)
      super().__init__()

  monkeypatch.setattr(utils, "SummaryWriter", Recorded)
  return logdirs


def _under(objects: dict, prefix: str) -> dict:
  return {k[len(prefix):]: v for k, v in objects.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------
# Against the emulator.
# ---------------------------------------------------------------------------


# gcp-storage-emulator now and then answers tensorstore's read of an OCDBT
# manifest with a generation tensorstore rejects ("Malformed StorageGeneration",
# seen in 1 of ~6 runs here; real GCS does not): only that error reruns the
# test, in a fresh workdir, and every assertion must then pass.
@pytest.mark.flaky(reruns=2, only_rerun=["Malformed StorageGeneration"])
def test_gs_workdir_and_cache_train_resume_and_read_back(
    gcs, offline, tensorboard_logdirs, tmp_path, capsys):
  name = f"runs/tiny-{uuid.uuid4().hex[:8]}"
  workdir, cache = f"{gcs}/{name}", f"{gcs}/cache"
  first = train.run(tiny_config(cache, **{"train.max_steps": 20}), workdir)
  assert first["final_step"] == 20 and not first["finished"]
  run = _under(bucket_objects(), f"{name}/")
  assert "lock.json" not in run  # Released.
  assert {"config.json", "metrics.jsonl", "history.jsonl", "manifest.json",
          "checkpoint_digests/20.json"} <= set(run)
  assert any(k.startswith("checkpoints/20/") for k in run)

  config = tiny_config(cache)
  second = train.run(config, workdir)
  out = capsys.readouterr().out
  assert f"resuming {workdir} at step 20" in out
  last = second["final_step"]
  assert second["finished"] and last == second["num_steps"] > 20

  objects = bucket_objects()
  run = _under(objects, f"{name}/")
  assert "lock.json" not in run
  assert {"config.json", "summary.json"} <= set(run)
  t = config.train  # Saved every ckpt_every and at the end; the newest kept.
  kept = sorted({*range(t.ckpt_every, last, t.ckpt_every), last})[-t.keep_checkpoints:]
  assert {k.split("/")[1] for k in run if k.startswith("checkpoints/")} == {
      str(s) for s in kept}
  assert {k for k in run if k.startswith("checkpoint_digests/")} == {
      f"checkpoint_digests/{s}.json" for s in kept}
  steps = [r["step"] for r in files.read_jsonl(f"{workdir}/metrics.jsonl")]
  assert steps == sorted(set(steps)) and steps[-1] == last  # Each step once.
  history = run_history.history(workdir)
  assert [r["event"] for r in history][-2:] == ["resume", "finished"]
  assert history[-2]["step"] == 20
  assert files.read_json(f"{workdir}/summary.json")["final_step"] == last
  assert tensorboard_logdirs == [workdir, workdir]  # gs:// reached clu as is.

  # The cache: vocabulary and stream on the store, the stream mirrored here.
  cached = _under(objects, "cache/")
  assert any(k.startswith("vocab/spm-") and k.endswith(".model") for k in cached)
  streams = {k.split("/")[1] for k in cached if k.startswith("streams/")}
  assert len(streams) == 1
  key = streams.pop()
  for name in ("tokens.bin", "spans.npy", "meta.json", "manifest.json", "checksum.json"):
    assert f"streams/{key}/{name}" in cached
  mirror = tmp_path / "mirror" / "gs" / gcs[5:] / "cache" / "streams" / key
  assert (mirror / "tokens.bin").read_bytes() == files.as_path(
      f"{cache}/streams/{key}/tokens.bin").read_bytes()

  # Readers (eval, a scorer workdir) restore from the gs:// workdir.
  assert rundir.checkpoint_steps(workdir) == kept
  from poisonjax.data import vocabulary
  vocab = vocabulary.get_vocabulary(config)
  ref_cfg, params = run_reader.load_scorer(workdir, vocab.vocab_size, vocab=vocab)
  assert ref_cfg.vocab_size == vocab.vocab_size
  embed = np.asarray(params["embed"]["embedding"])
  assert embed.shape[0] == vocab.vocab_size and np.isfinite(embed).all()


def test_a_stream_on_the_store_is_downloaded_not_rebuilt(gcs, offline, tmp_path,
                                                         monkeypatch, capsys):
  from poisonjax.data import stream
  c = tiny_config(f"{gcs}/stream-cache", **{"poison.count": 3})
  built = stream.build_stream(c, 4000)
  assert "uploaded" in capsys.readouterr().out
  monkeypatch.setenv("POISONJAX_MIRROR", str(tmp_path / "second-host"))
  again = stream.build_stream(c, 4000)
  out = capsys.readouterr().out
  assert "downloaded" in out and "building stream" not in out
  assert again.dir.startswith(str(tmp_path / "second-host"))
  for k in (0, again.num_steps - 1):
    for a, b in zip(built.batch(k).values(), again.batch(k).values()):
      np.testing.assert_array_equal(a, b)


def _corpus(root):
  """Two .txt files (one in a subfolder) and a .jsonl.gz, under root."""
  docs = [f"document {i}: " + " ".join(f"word{(i * j) % 37}" for j in range(40))
          for i in range(60)]
  files.write_text_atomic(f"{root}/a.txt", "\n".join(docs[:20]))
  files.write_text_atomic(f"{root}/deep/b.txt", "\n".join(docs[20:40]))
  rows = "".join(json.dumps({"text": d}) + "\n" for d in docs[40:])
  files.write_bytes_atomic(f"{root}/c.jsonl.gz", gzip.compress(rows.encode()))
  files.write_text_atomic(f"{root}/skip.md", "not matched")


def test_text_file_patterns_and_vocab_path_on_gs(gcs, offline, tmp_path):
  from poisonjax.data import sources, vocabulary
  local, remote = str(tmp_path / "corpus"), f"{gcs}/corpus"
  _corpus(local)
  _corpus(remote)
  pattern = "{}/**/*.txt,{}/*.jsonl.gz"
  rel = lambda paths, root: sorted(os.fspath(p)[len(root):] for p in paths)
  for glob in ("**/*.txt", "*.jsonl.gz", "*/b.*", "[ab].txt", "?.txt", "a.txt"):
    assert rel(files.glob(f"{remote}/{glob}"), remote) == rel(
        files.glob(f"{local}/{glob}"), local), glob

  def source(root):
    c = tiny_config(tmp_path / "cache", **{"data.source": "text_files"})
    c.data.text_files.split = "line"
    c.data.text_files.patterns = pattern.format(root, root)
    return c, sources.TextFilesSource(c)

  _, here = source(local)
  c, there = source(remote)
  assert len(there.paths) == 3 and all(p.startswith("gs://") for p in there.paths)
  assert (there.train, there.held) == (here.train, here.held)
  assert there.key()["files"][0][0].startswith(f"{remote}/")

  model = vocabulary.build_vocabulary(c, str(tmp_path / "v.model"))
  files.copy_file(model, f"{gcs}/vocab/v.model")
  c.vocab.path = f"{gcs}/vocab/v.model"
  vocab = vocabulary.get_vocabulary(c)
  assert vocab.encode(there.train[0]) == vocabulary.Vocabulary(model).encode(there.train[0])
  assert vocabulary.fingerprint(c) == vocabulary.fingerprint(model)


def test_workdir_lock_on_gs(gcs, offline, monkeypatch):
  monkeypatch.setattr(runlock, "OBJECT_SETTLE_S", 0.3)
  d = f"{gcs}/locks/a"
  with runlock.hold(d, "train", timeout_s=60) as lock:
    assert lock.still_ours()
    with pytest.raises(UserError) as e:
      runlock.acquire(d, "study run", timeout_s=60)
    assert "\n" not in str(e.value) and f"pid {os.getpid()}" in str(e.value)
  assert not files.as_path(f"{d}/{rundir.LOCK}").exists()

  won, refused = [], []
  barrier = threading.Barrier(4)

  def start():
    barrier.wait()
    try:
      won.append(runlock.acquire(f"{gcs}/locks/race", "train", timeout_s=60))
    except UserError:
      refused.append(1)

  threads = [threading.Thread(target=start) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(won) == 1 and len(refused) == 3
  won[0].release()

  stale = {"what": "train", "host": "elsewhere", "pid": 1, "since": 0.0,
           "heartbeat": 0.0, "token": "dead"}
  files.write_json(f"{gcs}/locks/b/{rundir.LOCK}", stale)
  lock = runlock.acquire(f"{gcs}/locks/b", "train", timeout_s=60)
  assert lock.still_ours() and lock.token != "dead"
  lock.release()


@pytest.mark.slow
def test_study_collect_and_figures_on_a_gs_root(gcs, offline, tmp_path):
  from poisonjax import study
  from test_study import PNG_MAGIC, _fake_root
  runs = [study.Run(s, n, 0, 1.0) for s in ("cpu-xxs", "cpu-xs") for n in (10, 100)]
  local, remote = str(tmp_path / "root"), f"{gcs}/study"
  _fake_root(local, runs)
  for path in files.list_files(local):
    files.copy_file(path, remote + os.fspath(path)[len(local):])
  assert study.collect(remote) == study.collect(local)
  made = study.make_figures(remote)
  for name, paths in made["figures"].items():
    assert paths["png"].startswith(f"{remote}/figures/")
    assert files.as_path(paths["png"]).read_bytes()[:8] == PNG_MAGIC
  assert files.as_path(f"{remote}/results.csv").exists()
  assert "(progress.png)" in files.as_path(f"{remote}/figures/report.md").read_text()


# ---------------------------------------------------------------------------
# TensorFlow's GCS client (no emulator endpoint): the path reaches it as is.
# ---------------------------------------------------------------------------


class _RecordingGfile:
  """tf.io.gfile with gs://BUCKET mapped onto a local folder; records paths."""

  def __init__(self, bucket: str, root: str):
    import tensorflow as tf
    self._gfile, self._bucket, self._root = tf.io.gfile, bucket, root
    self.paths = []

  def _in(self, path):
    path = os.fspath(path)
    self.paths.append(path)
    assert path.startswith(self._bucket + "/") or path == self._bucket, path
    return self._root + path[len(self._bucket):]

  def _out(self, path):
    return self._bucket + os.fspath(path)[len(self._root):]

  def GFile(self, path, mode="r"):  # pylint: disable=invalid-name
    return self._gfile.GFile(self._in(path), mode)

  def glob(self, pattern):
    return [self._out(p) for p in self._gfile.glob(self._in(pattern))]

  def walk(self, top, **kwargs):
    for d, dirs, names in self._gfile.walk(self._in(top), **kwargs):
      yield self._out(d), dirs, names

  def rename(self, src, dst, overwrite=False):
    return self._gfile.rename(self._in(src), self._in(dst), overwrite)

  def copy(self, src, dst, overwrite=False):
    return self._gfile.copy(self._in(src), self._in(dst), overwrite)

  def __getattr__(self, name):  # exists, isdir, listdir, makedirs, stat...
    fn = getattr(self._gfile, name)
    return lambda path, *a, **kw: fn(self._in(path), *a, **kw)


def test_gs_paths_reach_tf_gfile_unchanged(tmp_path, monkeypatch, capsys):
  """epath's default backend with TensorFlow installed, on the data path."""
  from etils.epath import backend, gpath
  from poisonjax.data import stream, vocabulary

  bucket = "gs://tf-bucket"
  fake = _RecordingGfile(bucket, str(tmp_path / "bucket"))
  monkeypatch.setenv("EPATH_USE_TF", "true")
  monkeypatch.setenv("POISONJAX_MIRROR", str(tmp_path / "mirror"))
  monkeypatch.chdir(tmp_path)
  gpath._is_tf_installed.cache_clear()
  monkeypatch.setattr(gpath, "_is_zonal_gcs_bucket", lambda bucket: False)
  monkeypatch.setattr(backend._TfBackend, "gfile", property(lambda self: fake))
  try:
    assert isinstance(files.as_path(bucket)._backend, backend._TfBackend)
    files.as_path(f"{bucket}/run").mkdir(parents=True)  # As train does.
    files.append_jsonl(f"{bucket}/run/log.jsonl", {"step": 1})
    files.append_jsonl(f"{bucket}/run/log.jsonl", {"step": 2})
    assert files.read_jsonl(f"{bucket}/run/log.jsonl") == [{"step": 1}, {"step": 2}]
    monkeypatch.setattr(runlock, "OBJECT_SETTLE_S", 0.0)
    with runlock.hold(f"{bucket}/run", "train", timeout_s=60):
      assert files.read_json(f"{bucket}/run/{rundir.LOCK}")["what"] == "train"
    assert not files.as_path(f"{bucket}/run/{rundir.LOCK}").exists()

    c = tiny_config(f"{bucket}/cache", **{"poison.count": 2})
    vocab = vocabulary.get_vocabulary(c)  # Built, written to the bucket.
    s = stream.build_stream(c, 3000)  # Built in the mirror, uploaded.
    assert s.dir.startswith(str(tmp_path / "mirror" / "gs" / "tf-bucket"))
    assert "checksum.json" in {p.name for p in files.list_files(f"{bucket}/cache")}
    assert vocab.vocab_size > 0
  finally:
    gpath._is_tf_installed.cache_clear()
  assert fake.paths and all(p.startswith(bucket + "/") for p in fake.paths)
  assert not (tmp_path / "gs:").exists()
  assert sorted(os.listdir(tmp_path / "bucket")) == ["cache", "run"]
