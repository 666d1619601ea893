"""The poisoned training stream: exact counts, uniform placement, O(1) access."""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from poisonjax.data import mixer, poison, sources, stream
from poisonjax.errors import UserError
from test_data_common import ROOT, small_config


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("n", [0, 1, 100, 250, 500])
def test_exact_count(cache, n):
  c = small_config(cache, count=n, gibberish_min_tokens=5, gibberish_max_tokens=20)
  s = stream.build_stream(c, 300_000)
  assert s.num_poisons == n == len(s.manifest)
  assert sorted(m["id"] for m in s.manifest) == list(range(n))
  assert s.clean_tokens == 300_000
  assert s.num_tokens == 300_000 + s.poison_tokens
  assert s.poisons_seen(s.num_steps) == n
  if n in (0, 100):  # The mask marks exactly the poison tokens.
    total = sum(int(s.batch(k)["poison_mask"].sum()) for k in range(s.num_steps))
    assert total == s.poison_tokens


def test_placement_is_uniform_and_shared_across_sizes(cache):
  c = small_config(cache, count=500, gibberish_min_tokens=5, gibberish_max_tokens=10)
  small = stream.build_stream(c, 300_000)
  fr = np.array([m["clean_offset"] / small.clean_tokens for m in small.manifest])
  assert scipy.stats.kstest(fr, "uniform").pvalue > 0.01
  steps = np.array([m["step"] / small.num_steps for m in small.manifest])
  assert scipy.stats.kstest(steps, "uniform").pvalue > 0.01
  # A bigger model (bigger T): same poisons, same fractions, same clean prefix.
  big = stream.build_stream(c, 600_000)
  by_id = lambda s: {m["id"]: m for m in s.manifest}
  a, b = by_id(small), by_id(big)
  assert a.keys() == b.keys()
  for j in a:
    assert a[j]["fraction"] == b[j]["fraction"]
    assert a[j]["num_tokens"] == b[j]["num_tokens"]
    sa, sb = a[j]["start"], b[j]["start"]
    np.testing.assert_array_equal(small.tokens[sa:sa + a[j]["num_tokens"]],
                                  big.tokens[sb:sb + b[j]["num_tokens"]])
  clean = lambda s: np.delete(np.asarray(s.tokens), np.concatenate(
      [np.arange(x, y) for x, y, _ in s.spans]))
  ca, cb = clean(small), clean(big)
  np.testing.assert_array_equal(ca[:-500], cb[:len(ca) - 500])  # last doc is cut
  # The 250-poison run's poisons are the first 250 of the 500-poison run's.
  np.testing.assert_array_equal(mixer.fractions(0, 250), mixer.fractions(0, 500)[:250])


def _manifest_mask(s) -> np.ndarray:
  """The poison mask of the whole stream, from the manifest alone."""
  mask = np.zeros(s.num_tokens, np.bool_)
  for m in s.manifest:
    mask[m["start"]:m["start"] + m["num_tokens"]] = True
  return mask


def test_batches_in_order_reproduce_the_token_file(cache):
  c = small_config(cache, count=30)
  s = stream.build_stream(c, 40_000)
  # The token file read directly, not through the stream's memmap.
  want = np.fromfile(os.path.join(s.dir, "tokens.bin"), dtype=s.meta["dtype"])
  assert len(want) == s.num_tokens
  in_order = [s.batch(k) for k in range(s.num_steps)]
  flat = np.concatenate([b["tokens"].ravel() for b in in_order])
  assert len(flat) == s.num_steps * s.batch_size * s.seq_len >= s.num_tokens
  np.testing.assert_array_equal(flat[:s.num_tokens], want)
  assert not flat[s.num_tokens:].any()  # the final partial batch is padded with 0
  mask = np.concatenate([b["poison_mask"].ravel() for b in in_order])
  np.testing.assert_array_equal(mask[:s.num_tokens], _manifest_mask(s))
  assert not mask[s.num_tokens:].any()
  for b in in_order:
    assert b["tokens"].dtype == np.int32 and b["poison_mask"].dtype == np.bool_
    assert b["tokens"].shape == b["poison_mask"].shape == (s.batch_size, s.seq_len)


def test_random_access_and_process_slices_equal_the_in_order_batches(cache):
  c = small_config(cache, count=30)
  s = stream.build_stream(c, 40_000)
  in_order = [s.batch(k) for k in range(s.num_steps)]
  # The same steps read in a shuffled order, by this object (after other
  # indices) and by a fresh object on the same cache directory.
  fresh = stream.TrainingStream(c, s.vocab, s.dir)
  order = np.random.default_rng(0).permutation(s.num_steps).tolist()
  for reader in (s, fresh):
    for k in order:
      b = reader.batch(k)
      np.testing.assert_array_equal(b["tokens"], in_order[k]["tokens"])
      np.testing.assert_array_equal(b["poison_mask"], in_order[k]["poison_mask"])
  for k in order[:6]:
    for p in (2, 4, 8):  # process slices concatenate to the global batch
      parts = [fresh.batch(k, h, p) for h in reversed(range(p))][::-1]
      for key in ("tokens", "poison_mask"):
        assert all(x[key].shape == (s.batch_size // p, s.seq_len) for x in parts)
        np.testing.assert_array_equal(np.concatenate([x[key] for x in parts]),
                                      in_order[k][key])
  with pytest.raises(UserError, match="config.train.batch_size"):
    s.batch(0, 0, 3)
  with pytest.raises(IndexError):
    s.batch(s.num_steps)
  for m in s.manifest:
    assert m["sequence"] == m["start"] // c.data.seq_len
    assert m["step"] == m["sequence"] // c.train.batch_size
  assert json.load(open(s.manifest_path))["poisons"] == s.manifest


def _view_with_a_poison_ending_on_a_step_boundary(c, s):
  """The same cached stream seen with (S, B) such that some poison's last
  token is the last token of a step (the off-by-one case)."""
  ends = [m["start"] + m["num_tokens"] for m in s.manifest]
  S, B = next((S, B) for S in range(16, 256) for B in (1, 2, 4)
              if any(e % (S * B) == 0 for e in ends))
  view = copy.deepcopy(c)
  view.data.seq_len, view.train.batch_size = S, B
  return stream.TrainingStream(view, s.vocab, s.dir)


def test_poisons_seen_counts_poisons_finished_before_the_step(cache):
  c = small_config(cache, count=30)
  s = stream.build_stream(c, 40_000)
  for view in (s, _view_with_a_poison_ending_on_a_step_boundary(c, s)):
    tokens_per_step = view.batch_size * view.seq_len
    starts = np.array([m["start"] for m in view.manifest])
    last_token = starts + np.array([m["num_tokens"] for m in view.manifest]) - 1
    # Some poison straddles a step boundary ("started" and "finished" differ).
    assert (starts // tokens_per_step < last_token // tokens_per_step).any()
    # The batches' masks end each poison where the manifest says it ends.
    mask = np.concatenate([view.batch(k)["poison_mask"].ravel()
                           for k in range(view.num_steps)])
    after = [e + 1 for e in last_token
             if e + 1 not in set(starts) and e + 1 < view.num_tokens]
    assert mask[last_token].all() and after and not mask[after].any()
    for k in range(view.num_steps + 1):
      want = int((last_token < k * tokens_per_step).sum())
      assert view.poisons_seen(k) == want, (view.seq_len, view.batch_size, k)
    assert view.poisons_seen(view.num_steps) == view.num_poisons == 30


def test_poisons_in_stream_match_their_construction(cache):
  c = small_config(cache, count=20)
  s = stream.build_stream(c, 40_000)
  src = sources.get_source(c)
  built = {p.id: p for p in poison.make_poisons(c, s.vocab.tokenizer, src, range(20))}
  for start, end, j in s.spans:
    np.testing.assert_array_equal(s.tokens[start:end], built[j].tokens)
    assert s.tokens[start - 1] == 1  # inserted at a document boundary (after EOS)


def test_replace_budget_and_rate_mode(cache):
  c = small_config(cache, count=20, budget_mode="replace")
  s = stream.build_stream(c, 40_000)
  assert s.num_tokens == 40_000 and s.num_poisons == 20
  r = small_config(cache, count=0, rate=0.05)
  s = stream.build_stream(r, 200_000)
  docs = s.meta["num_clean_docs"]
  assert 0.02 * docs < s.num_poisons < 0.09 * docs


def test_too_many_poisons_and_tiny_budget(cache):
  c = small_config(cache, count=100)
  with pytest.raises(UserError, match=r"config.poison.count=100: more poisons than"):
    stream.build_stream(c, 5_000)
  with pytest.raises(UserError, match="config.data.seq_len"):
    stream.build_stream(c, 10)
  c = small_config(cache, count=100, budget_mode="replace", gibberish_min_tokens=400,
                   gibberish_max_tokens=400)
  with pytest.raises(UserError, match="config.poison.count"):
    stream.build_stream(c, 20_000)


def test_checksum_mismatch_rebuilds(cache, capsys):
  c = small_config(cache, count=5)
  s = stream.build_stream(c, 20_000)
  want = np.array(s.tokens)
  path = os.path.join(s.dir, "tokens.bin")
  del s
  data = bytearray(open(path, "rb").read())
  data[100] ^= 0xFF
  open(path, "wb").write(bytes(data))
  capsys.readouterr()
  s = stream.build_stream(c, 20_000)
  out = capsys.readouterr().out
  assert "tokens.bin checksum mismatch; rebuilding" in out
  np.testing.assert_array_equal(np.asarray(s.tokens), want)


_DETERMINISM_SCRIPT = """
import hashlib, json, sys
from test_data_common import small_config
from poisonjax.data import stream, vocabulary
c = small_config(sys.argv[1], count=40)
s = stream.build_stream(c, 60_000)
h = lambda p: hashlib.sha256(open(p, 'rb').read()).hexdigest()
print(json.dumps({"vocab": h(s.vocab.sentencepiece_model_file),
                  "tokens": h(s.dir + '/tokens.bin'), "manifest": s.manifest,
                  "batch": s.batch(3)["tokens"].tolist()}))
"""


def test_two_processes_build_identical_streams(tmp_path):
  env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests"),
             TF_CPP_MIN_LOG_LEVEL="3")
  procs = [subprocess.Popen([sys.executable, "-c", _DETERMINISM_SCRIPT,
                             str(tmp_path / f"c{i}")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True) for i in range(2)]
  outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1])
          for p in procs]
  assert outs[0] == outs[1]
  assert len(outs[0]["manifest"]) == 40


def test_seqio_task_yields_the_same_stream(cache):
  import seqio  # pylint: disable=g-import-not-at-top
  from poisonjax.data import seqio_tasks  # pylint: disable=g-import-not-at-top
  assert "poisonjax_dos_n250" in seqio.TaskRegistry.names()
  assert "poisonjax_synthetic" in seqio.TaskRegistry.names()
  c = small_config(cache, count=7)
  task = seqio_tasks.register_poisoned_task(c, 20_000, name="poisonjax_test_n7")
  docs = list(task.get_dataset(sequence_length=None, split="train",
                               shuffle=False).as_numpy_iterator())
  s = stream.build_stream(c, 20_000)
  np.testing.assert_array_equal(np.concatenate([d["targets"] for d in docs]),
                                np.asarray(s.tokens))
  assert sum(bool(d["is_poison"]) for d in docs) == 7
