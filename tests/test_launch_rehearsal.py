"""A rehearsal of `poisonjax launch tpu --babysit` on this machine.

The launcher's own code (Slice, setup, detached start, babysitter) runs
unchanged as a subprocess; only `gcloud` is the stand-in of
tests/fake_cloud_tpu.py (TPU API state in files, each worker a local
process), and the workdirs are on the local GCS emulator. A grid of two
runs, each on its own 2-worker slice (v5p-16: 2 hosts x 4 CPU devices),
that differ only in how often they log, so their final checkpoints must be
identical. Slice A is preempted mid-run: the babysitter deletes and
recreates it, bootstraps it again and restarts the run, which resumes.
Then the launcher itself is killed (SIGKILL) and started again: it finds
the slices and the runs as they are and starts nothing twice.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import fake_cloud_tpu
from gcs_emulator import BUCKET, emulated_gcs
from poisonjax import files
from train_common import ROOT, run_cli, train_cache  # noqa: F401

pytestmark = pytest.mark.slow

STUDY = """
from poisonjax import config as config_lib
from poisonjax import study as study_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.data.cache_dir = {cache!r}
  c.vocab.size, c.vocab.sample_docs = 512, 300
  c.data.seq_len, c.train.batch_size = 32, 8
  c.train.tokens_per_param = 0.1
  c.train.log_every, c.train.ckpt_every = 5, 10
  c.train.tensorboard = False  # TensorFlow's GCS client ignores the emulator.
  c.poison.prefix_max_chars = 100
  c.poison.gibberish_min_tokens, c.poison.gibberish_max_tokens = 10, 30
  c.eval.num_evals = 0
  s = study_lib.study_config("rehearsal", c)
  s.grid = study_lib.grid(("cpu-xxs",), (5,), (0,), (1.0,))
  study_lib.set_variants(s, {{"a": {{}}, "b": {{"train": {{"log_every": 2}}}}}})
  return study_lib.config_for_arg(s, arg)
"""
TIMEOUT_S = 420


def _launcher(study_file, root, env, log_path):
  cmd = [sys.executable, "-m", "poisonjax.cli", "launch", "tpu", "--babysit",
         "--name=rh", "--zone=us-east5-a", "--accelerator=v5p-16",
         "--project=rehearsal-project", "--git=https://example.invalid/pj@rev",
         f"--config={study_file}", f"--root={root}", "--poll_s=0.5",
         "--heartbeat_s=2"]
  log = open(log_path, "a")
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                          stderr=subprocess.STDOUT, text=True)


def _wait(what, predicate, deadline, procs=()):
  while not predicate():
    for p in procs:
      assert p.poll() is None, f"launcher exited ({p.returncode}) before {what}"
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.5)


def _objects(prefix: str) -> dict:
  """{name under prefix: bytes} of the bucket, listed fresh (gcsfs, behind
  files.as_path, caches listings)."""
  from google.cloud import storage
  bucket = storage.Client().bucket(BUCKET)
  return {b.name[len(prefix):]: b for b in bucket.list_blobs(prefix=prefix)}


def _checkpoint_steps(run: str) -> list[int]:
  names = _objects(f"rehearsal/{run}/checkpoints/")
  return sorted({int(n.split("/")[0]) for n in names if n.split("/")[0].isdigit()})


def _state_digest(run: str, step: int, local) -> dict:
  """sha256 of every array of a checkpoint step, restored from a local copy
  (the files' bytes differ between runs: OCDBT names its data files at
  random; tensorstore's own reads of the emulator are what is flaky)."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  for name, blob in _objects(f"rehearsal/{run}/checkpoints/{step}/").items():
    target = local / run / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(blob.download_as_bytes())
  checkpointer, path = ocp.PyTreeCheckpointer(), local / run / "default"
  meta = checkpointer.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  as_numpy = jax.tree_util.tree_map(
      lambda _: ocp.RestoreArgs(restore_type=np.ndarray), getattr(meta, "tree", meta))
  tree = checkpointer.restore(path, restore_args=as_numpy)
  return {jax.tree_util.keystr(k): hashlib.sha256(np.asarray(v).tobytes()).hexdigest()
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _starts(state_dir, slice_name: str) -> int:
  """Supervisors started on worker 0 of a slice (from the ssh transcript)."""
  with open(os.path.join(state_dir, "transcript.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return sum("started (supervisor pid" in r["output"] for r in rows
             if r["slice"] == slice_name and r["worker"] == 0)


def test_preempted_slice_is_recreated_and_its_run_resumes_exactly(
    tmp_path, train_cache):
  with emulated_gcs() as bucket:
    root = f"{bucket}/rehearsal"
    study_file = tmp_path / "study_rehearsal.py"
    study_file.write_text(STUDY.format(cache=str(train_cache / "rehearsal")))
    run_a = "size=cpu-xxs_n=5_seed=0_data=1.0_var=a"
    run_b = "size=cpu-xxs_n=5_seed=0_data=1.0_var=b"
    # Both slices would otherwise build the vocabulary at once.
    built = run_cli("vocab", "build", f"--config={study_file}:run={run_a}")
    assert built.returncode == 0, built.stderr
    state_dir = str(tmp_path / "tpu-api")
    env = dict(os.environ, **fake_cloud_tpu.install(tmp_path / "bin", state_dir))
    log_path = tmp_path / "launcher.log"
    deadline = time.monotonic() + TIMEOUT_S
    launcher = _launcher(study_file, root, env, log_path)
    try:
      _wait("a checkpoint of run a", lambda: _checkpoint_steps(run_a),
            deadline, [launcher])
      fake_cloud_tpu.preempt(state_dir, "rh-cpu-xxs-n5-s0-d1p0-a")
      _wait("the run a restart", lambda: _starts(state_dir, "rh-cpu-xxs-n5-s0-d1p0-a") >= 2,
            deadline, [launcher])
      launcher.send_signal(signal.SIGKILL)
      launcher.wait()
      launcher = _launcher(study_file, root, env, log_path)
      launcher.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
      if launcher.poll() is None:
        launcher.kill()
      fake_cloud_tpu.shutdown(state_dir)
    log = log_path.read_text()
    assert launcher.returncode == 0, log[-3000:]
    slices = {"a": "rh-cpu-xxs-n5-s0-d1p0-a", "b": "rh-cpu-xxs-n5-s0-d1p0-b"}
    assert _starts(state_dir, slices["a"]) == 2, log[-3000:]
    assert _starts(state_dir, slices["b"]) == 1, log[-3000:]
    for run in (run_a, run_b):
      assert (files.as_path(f"{root}/{run}") / "summary.json").exists()
      assert (files.as_path(f"{root}/{run}") / "logs" / "host-0.log").exists()
    last_a, last_b = _checkpoint_steps(run_a)[-1], _checkpoint_steps(run_b)[-1]
    assert last_a == last_b
    digest_a = _state_digest(run_a, last_a, tmp_path / "restored")
    assert len(digest_a) > 3
    assert digest_a == _state_digest(run_b, last_b, tmp_path / "restored")
    # Both slices were deleted once their runs finished.
    assert not os.path.exists(os.path.join(state_dir, slices["a"], "state.json")) or \
        json.load(open(os.path.join(state_dir, slices["a"], "state.json")))["state"] == "DELETING"
