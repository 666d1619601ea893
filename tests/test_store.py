"""The clean token store + poison overlay: the per-run cache's batches, shared."""

import argparse
import itertools
import json
import os

import numpy as np
import pytest

from poisonjax import files
from poisonjax.data import overlay, sources, store, store_build, stream, vocabulary
from poisonjax.errors import UserError
from test_data_common import run_cli, small_config

T = 40_000  # Clean budget of the small runs (~80 steps of 8 x 64).
SHARD_DOCS = 32  # Small shards, so a run spans several.


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


def _store_config(cache, **poison):
  c = small_config(cache, **poison)
  c.data.store = "auto"
  return c


def _prebuilt(c, tokens=T, **kw):
  kw.setdefault("docs_per_shard", SHARD_DOCS)
  return store_build.build(c, vocabulary.get_vocabulary(c), tokens, **kw)


def _files(path) -> dict:
  return {f: open(os.path.join(path, f), "rb").read() for f in sorted(os.listdir(path))}


@pytest.mark.parametrize("poison", [
    dict(count=0),
    dict(count=25, seed=3),
    # Many poisons share boundaries; the budget holds them; text mode.
    dict(count=60, budget_mode="replace", mode="text", gibberish_min_tokens=2,
         gibberish_max_tokens=5),
])
def test_overlay_gives_the_cache_batches(cache, tmp_path, poison):
  c = _store_config(cache, **poison)
  _prebuilt(c)
  old = stream.build_stream(c, T)
  new = overlay.training_stream(c, T)
  assert isinstance(new, overlay.OverlayStream)
  assert (new.num_steps, new.num_tokens, new.clean_tokens, new.poison_tokens) == \
      (old.num_steps, old.num_tokens, old.clean_tokens, old.poison_tokens)
  assert new.num_poisons == old.num_poisons == poison["count"]
  np.testing.assert_array_equal(new.spans, old.spans)
  assert new.manifest == old.manifest
  assert new.meta["num_clean_docs"] == old.meta["num_clean_docs"]
  new.write_manifest(tmp_path / "new.json")
  old.write_manifest(tmp_path / "old.json")
  assert json.loads((tmp_path / "new.json").read_text()) == \
      json.loads((tmp_path / "old.json").read_text())
  for k in range(old.num_steps + 1):
    assert new.poisons_seen(k) == old.poisons_seen(k)
  for processes in (1, 2, 4):
    for k in range(old.num_steps):
      for h in range(processes):
        a, b = old.batch(k, h, processes), new.batch(k, h, processes)
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        np.testing.assert_array_equal(a["poison_mask"], b["poison_mask"])


def test_runs_with_other_poisons_and_budgets_share_one_store(cache, monkeypatch):
  base = _store_config(cache, count=10)
  base.data.seed = 5  # A store of its own for this test.
  built = []
  real = store_build._build_shard
  monkeypatch.setattr(store_build, "_build_shard", lambda i: built.append(i) or real(i))
  first = overlay.training_stream(base, T)  # Creates the store.
  assert built and first.store.num_tokens >= T
  d = first.dir
  stamp = {f: os.stat(os.path.join(d, f)).st_mtime_ns for f in os.listdir(d)}
  built.clear()
  others = []
  for count, seed, budget in [(30, 0, T), (10, 1, T), (0, 0, T // 2)]:
    c = _store_config(cache, count=count, seed=seed)
    c.data.seed = 5
    others.append(overlay.training_stream(c, budget))
  assert not built  # Nothing rebuilt, the same directory, untouched.
  assert {s.dir for s in others} == {d}
  assert {f: os.stat(os.path.join(d, f)).st_mtime_ns for f in os.listdir(d)} == stamp
  assert [s.num_poisons for s in others] == [30, 10, 0]
  # A bigger budget (bigger model) appends shards; the old ones stay as they are.
  bigger = overlay.training_stream(base, 3 * T)
  assert built and bigger.dir == d and bigger.clean_tokens == 3 * T
  assert all(os.stat(os.path.join(d, f)).st_mtime_ns == t
             for f, t in stamp.items() if f.startswith("shard-"))


def test_store_bytes_do_not_depend_on_the_worker_count(cache, tmp_path):
  c = small_config(cache)
  one = _prebuilt(c, 60_000, path=tmp_path / "one", workers=1)
  two = _prebuilt(c, 60_000, path=tmp_path / "two", workers=2)
  assert len(one.shards) >= 4
  assert _files(tmp_path / "one") == _files(tmp_path / "two")
  np.testing.assert_array_equal(one.read(0, one.num_tokens), two.read(0, two.num_tokens))


@pytest.mark.parametrize("in_order", [False, True])
def test_a_split_build_equals_a_single_build(cache, tmp_path, monkeypatch, in_order):
  c = small_config(cache)
  vocab = vocabulary.get_vocabulary(c)
  one = _prebuilt(c, 100_000, path=tmp_path / "one", workers=1)
  assert len(one.shards) >= 4
  if in_order:  # As for TFDS: each part reads the split, skipping others' shards.
    monkeypatch.setattr(store_build, "_indexed_documents", lambda source, start: None)
  built = []
  real = store_build._build_shard
  monkeypatch.setattr(store_build, "_build_shard", lambda t: built.append(t[0]) or real(t))
  split = tmp_path / "split"
  part = lambda h: store_build.build_part(c, vocab, 100_000, h, 2, path=split,
                                    docs_per_shard=SHARD_DOCS)
  assert part(0) is None  # Part 1's shards are missing: no index yet.
  assert built == list(range(0, len(one.shards), 2))
  assert not (split / "index.json").exists()
  with pytest.raises(UserError) as e:
    store_build.finalize(c, vocab, 100_000, path=split, parts=2, docs_per_shard=SHARD_DOCS)
  odd = len(one.shards) // 2
  assert "\n" not in str(e.value)
  assert f"{odd} of the {len(one.shards)} planned shards" in str(e.value)
  assert "part(s) 1/2:" in str(e.value)
  built.clear()
  assert part(0) is None and built == []  # A rerun resumes: nothing rebuilt.
  done = part(1)  # The last part to finish writes index.json.
  assert built == list(range(1, len(one.shards), 2))
  assert done is not None and done.num_tokens == one.num_tokens
  assert _files(tmp_path / "one") == _files(split)
  (split / "index.json").unlink()  # The explicit finalize writes the same.
  store_build.finalize(c, vocab, 100_000, path=split, parts=2, docs_per_shard=SHARD_DOCS)
  assert _files(tmp_path / "one") == _files(split)


def test_part_flag_errors(cache, tmp_path):
  from poisonjax.commands import Args
  from poisonjax.commands import data as data_cmd
  assert data_cmd.parse_part("3/4") == (3, 4) and data_cmd.parse_part(None) is None
  for bad in ("4/4", "-1/2", "1/0", "1", "a/b", "1/2/3"):
    with pytest.raises(UserError, match=r"--part=.*0 <= H < N"):
      data_cmd.parse_part(bad)
  c = small_config(cache)
  c.data.store = str(tmp_path / "s")
  fl = lambda **kw: argparse.Namespace(**{**dict(
      workers=1, docs_per_shard=SHARD_DOCS, tokens="30000", part=None,
      finalize=0), **kw})
  cli = lambda **kw: data_cmd.data_build_store(Args(fl(**kw), c, None, {}))
  with pytest.raises(UserError, match="give one"):
    cli(part="0/2", finalize=2)
  with pytest.raises(UserError, match=r"not built: 0, 1\b.*part\(s\) 0/3, 1/3\b"):
    cli(finalize=3)  # Nothing built yet.
  assert cli(part="0/2") == 0
  assert cli(part="1/2") == 0  # Finalizes.
  assert cli(finalize=2) == 0  # Already complete: nothing to do.


def test_a_batch_reads_only_its_own_clean_tokens(cache, monkeypatch):
  c = _store_config(cache, count=25, seed=3)
  _prebuilt(c)
  reads = []
  real = store.read_bytes
  monkeypatch.setattr(store, "read_bytes",
                      lambda p, o, n: reads.append((p.name, o, n)) or real(p, o, n))
  s = overlay.training_stream(c, T)
  # Building the overlay reads one block of document ends per poison (+1).
  assert all(name.endswith(".ends") for name, _, _ in reads)
  assert len(reads) == s.num_poisons + 1
  itemsize = s.store.dtype.itemsize
  for k, h, processes in [(0, 0, 1), (5, 1, 2), (40, 3, 4), (s.num_steps - 1, 0, 2)]:
    reads.clear()
    out = s.batch(k, h, processes)
    rows = len(out["tokens"])
    a = (k * 8 + h * rows) * 64
    in_stream = max(0, min(rows * 64, s.num_tokens - a))
    clean = in_stream - int(out["poison_mask"].sum())
    assert all(name.endswith(".tokens") for name, _, _ in reads)
    assert sum(n for _, _, n in reads) == clean * itemsize  # Nothing more.
    # Only the shards holding those clean tokens are opened.
    c0 = a - sum(min(e, a) - min(b, a) for b, e, _ in s.spans)
    first = int(np.searchsorted(s.store.cum_tokens, c0, side="right")) - 1
    last = int(np.searchsorted(s.store.cum_tokens, c0 + clean, side="left")) - 1
    names = {s.store.shards[i]["name"] + ".tokens" for i in range(first, last + 1)}
    assert {name for name, _, _ in reads} <= names


def test_store_refuses_another_source_and_rate_mode(cache, tmp_path):
  c = small_config(cache)
  _prebuilt(c, 5_000, path=tmp_path / "s")
  other = small_config(cache)
  other.data.seed = 9
  other.data.store = str(tmp_path / "s")
  with pytest.raises(UserError, match="another clean source or vocabulary"):
    overlay.training_stream(other, 5_000)
  rate = small_config(cache, count=0, rate=0.01)
  rate.data.store = "auto"
  with pytest.raises(UserError, match="rate mode"):
    overlay.training_stream(rate, 5_000)
  c.data.store = str(tmp_path / "s")
  with pytest.raises(UserError, match="build-store"):
    store_build.open_store(c, vocabulary.get_vocabulary(c), 10 ** 9, may_build=False)


def test_document_ends_match_a_scan_of_the_tokens(cache, tmp_path, monkeypatch):
  monkeypatch.setattr(store_build, "BLOCK_DOCS", 8)  # Full and partial blocks.
  c = small_config(cache)
  s = _prebuilt(c, 20_000, path=tmp_path / "s", docs_per_shard=20)
  assert s.index["block_docs"] == 8 and len(s.shards) >= 2
  tokens = s.read(0, s.num_tokens)
  ends = np.flatnonzero(tokens == vocabulary.EOS_ID) + 1  # EOS closes each doc.
  assert len(ends) == s.num_docs
  positions = sorted({0, s.num_tokens, *ends.tolist(), *(ends - 1).tolist(),
                      *(ends[:-1] + 1).tolist()})
  found, docs = s.document_ends(positions)
  want = np.searchsorted(ends, positions, side="left")  # First end >= p.
  np.testing.assert_array_equal(docs, want)
  np.testing.assert_array_equal(found, ends[want])


def test_cli_build_store_then_inspect_reads_it(tmp_path):
  base = ["--config=configs/cpu_micro.py", f"--config.data.cache_dir={tmp_path}",
          "--config.vocab.size=512", "--config.vocab.sample_docs=300",
          "--config.train.data_multiplier=0.02", "--config.poison.count=20"]
  built = run_cli("data", "build-store", *base, "--workers=2")
  assert built.returncode == 0, built.stderr
  assert "built" in built.stdout and "with 2 worker(s)" in built.stdout
  runs = {store_field: run_cli("data", "inspect", *base, "--steps=0:3",
                               f"--config.data.store={store_field}")
          for store_field in ("auto", "")}
  for r in runs.values():
    assert r.returncode == 0, r.stderr
  assert "store:" not in runs["auto"].stdout  # Read, not rebuilt.
  drop = lambda out: [l.split("; cache ")[0] for l in out.splitlines()
                      if not l.startswith(("manifest: ", "vocab: ", "building"))]
  assert drop(runs["auto"].stdout) == drop(runs[""].stdout)


def test_text_files_documents_are_reached_by_index(cache, tmp_path):
  for f in range(3):
    (tmp_path / f"{f}.txt").write_text("\n\n".join(
        f"document {f}-{k} " + "word " * k for k in range(7)))
  c = small_config(cache)
  c.data.source = "text_files"
  c.data.text_files.patterns = str(tmp_path / "*.txt")
  c.data.text_files.heldout_fraction = 0.2
  src = sources.get_source(c)
  n = len(src.train)
  for start in (0, 3, n - 1, n, 2 * n + 5):
    want = list(itertools.islice(src.train_documents(), start, start + 2 * n))
    got = list(itertools.islice(store_build._indexed_documents(src, start), 2 * n))
    assert got == want


def test_in_order_sources_are_read_once_by_the_parent(cache, tmp_path, monkeypatch):
  c = small_config(cache)
  _prebuilt(c, 30_000, path=tmp_path / "indexed")
  # As for TFDS: no random access, so no worker may read documents itself
  # (in-process, a worker asking would get None and fail).
  monkeypatch.setattr(store_build, "_indexed_documents", lambda source, start: None)
  for workers in (1, 2):
    built = _prebuilt(c, 30_000, path=tmp_path / f"in_order_{workers}",
                      workers=workers)
    assert len(built.shards) >= 3
    assert _files(tmp_path / "indexed") == _files(tmp_path / f"in_order_{workers}")


def test_a_store_on_gs_gives_the_local_batches(cache, tmp_path):
  from gcs_emulator import bucket_objects, emulated_gcs, no_remote_connections
  c = _store_config(cache, count=10)
  c.data.store = str(tmp_path / "local")
  _prebuilt(c, 20_000, path=c.data.store)
  local = overlay.training_stream(c, 20_000)
  with emulated_gcs() as bucket, no_remote_connections() as attempts:
    c.data.store = f"{bucket}/store"
    _prebuilt(c, 20_000, path=c.data.store)
    remote = overlay.training_stream(c, 20_000)
    names = {k.split("/", 1)[1] for k in bucket_objects() if k.startswith("store/")}
    assert _files(tmp_path / "local") == {  # The same bytes, no temporaries.
        n: (files.as_path(c.data.store) / n).read_bytes() for n in names}
    for k in range(local.num_steps):
      for a, b in zip(local.batch(k, 1, 2).values(), remote.batch(k, 1, 2).values()):
        np.testing.assert_array_equal(a, b)
  assert attempts == []
