"""Poison placement (config.poison.placement): counts, positions, keys, both paths.

Every placement is read back from the stream's manifest: exact counts, the
positions the placement promises (first/last X%, bursts in their windows,
periodic at the right steps with the right number per batch), uniform
unchanged, and the cache and the store + overlay placing them identically;
the placement ablation's report (poisonjax/ablations/placement.py) from
made-up runs.
"""

import collections
import json
import os

import numpy as np
import pytest

from poisonjax import config_checks
from poisonjax import study
from poisonjax.data import mixer, overlay, store_build, stream, synthetic, vocabulary
from poisonjax.errors import UserError
from test_data_common import small_config
from train_common import ROOT

T = 300_000  # Clean budget: ~73 steps of 64 x 64 tokens.
N = 30
TPS = 64 * 64  # Tokens per step of the configs below.
# A poison follows the first document boundary at or after its offset, so
# it can slip by up to one clean document (every piece holds >= 1 character;
# + the dummy-prefix piece and EOS).
MAX_DOC_TOKENS = synthetic.MAX_CHARS + 2
PLACEMENTS = {
    "uniform": {},
    "first": dict(placement_fraction=0.1),
    "last": dict(placement_fraction=0.2),
    "bursts": dict(placement_bursts=3, placement_fraction=0.15),
    "periodic": dict(poisons_per_batch=3, placement_every_steps=6),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


def _config(cache, placement, **poison):
  fields = dict(count=N, gibberish_min_tokens=10, gibberish_max_tokens=40,
                placement=placement, **PLACEMENTS[placement], **poison)
  c = small_config(cache, **fields)
  c.train.batch_size = 64  # One step (4096 tokens) holds a periodic event.
  return config_checks.validate(c)


@pytest.fixture(scope="module")
def streams(cache):
  return {k: stream.build_stream(_config(cache, k), T) for k in PLACEMENTS}


def _by_id(s) -> list[dict]:
  return sorted(s.manifest, key=lambda m: m["id"])


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_every_placement_has_the_exact_count(streams, placement):
  s = streams[placement]
  assert s.num_poisons == N == len(s.manifest)
  assert sorted(m["id"] for m in s.manifest) == list(range(N))
  assert s.poisons_seen(s.num_steps) == N
  total = sum(int(s.batch(k)["poison_mask"].sum()) for k in range(s.num_steps))
  assert total == s.poison_tokens == sum(m["num_tokens"] for m in s.manifest)
  with open(s.manifest_path) as f:
    assert json.load(f)["placement"]["kind"] == placement


def _check_slip(s, m):
  """The poison follows its target offset by less than one clean document."""
  target = int(np.ceil(m["fraction"] * s.clean_tokens))
  assert 0 <= m["clean_offset"] - target <= MAX_DOC_TOKENS


def test_first_and_last_hold_every_poison_in_their_share(streams):
  C = streams["first"].clean_tokens
  first = _by_id(streams["first"])
  assert all(0 <= m["fraction"] < 0.1 for m in first)
  assert max(m["clean_offset"] for m in first) <= 0.1 * C + MAX_DOC_TOKENS
  s = streams["last"]
  last = _by_id(s)
  assert all(0.8 <= m["fraction"] <= 1.0 for m in last)
  assert min(m["clean_offset"] for m in last) >= 0.8 * s.clean_tokens
  assert min(m["step"] for m in last) >= int(0.8 * s.clean_tokens) // TPS
  for name in ("first", "last"):
    for m in streams[name].manifest:
      _check_slip(streams[name], m)


def test_bursts_are_narrow_disjoint_windows(streams):
  s = streams["bursts"]
  B, f = 3, 0.15
  width = f / B
  windows = collections.defaultdict(list)
  for m in s.manifest:
    windows[m["id"] % B].append(m)
    _check_slip(s, m)
  assert sorted(len(w) for w in windows.values()) == [N // B] * B
  for b, ms in windows.items():
    u = np.array([m["fraction"] for m in ms])
    assert u.max() - u.min() < width
    assert b / B <= u.min() and u.max() < (b + 1) / B  # One per segment.
    offsets = [m["clean_offset"] for m in ms]
    assert max(offsets) - min(offsets) <= width * s.clean_tokens + MAX_DOC_TOKENS


def test_periodic_puts_k_poisons_in_every_mth_step(streams):
  s = streams["periodic"]
  k, M = 3, 6
  ms = _by_id(s)
  assert collections.Counter(m["step"] for m in ms) == {
      e * M: k for e in range(N // k)}
  for e in range(N // k):
    event = ms[e * k:(e + 1) * k]
    start = event[0]["start"]
    assert e * M * TPS <= start <= e * M * TPS + MAX_DOC_TOKENS
    for a, b in zip(event, event[1:]):  # Back to back, in id order.
      assert b["start"] == a["start"] + a["num_tokens"]
  # Seen only once their step is done: k more every M steps.
  assert [s.poisons_seen(e * M + 1) for e in range(N // k)] == [
      k * (e + 1) for e in range(N // k)]


def test_uniform_schedule_and_cache_key_are_unchanged(cache):
  u = mixer.fractions(7, 50)  # The draws before placements existed.
  order, offsets, got_u = mixer.schedule(7, 50, 12_345)
  np.testing.assert_array_equal(got_u, u)
  np.testing.assert_array_equal(order, np.argsort(u, kind="stable"))
  np.testing.assert_array_equal(offsets, np.ceil(u[order] * 12_345).astype(np.int64))
  plain = small_config(cache)
  assert "placement" not in stream._poison_spec(plain)
  # Placement fields that uniform does not read leave the key alone.
  tweaked = small_config(cache, placement_fraction=0.5, placement_bursts=2,
                         poisons_per_batch=4, placement_every_steps=3)
  assert stream._poison_spec(tweaked) == stream._poison_spec(plain)
  keys = {json.dumps(stream._poison_spec(_config(cache, k)), sort_keys=True)
          for k in PLACEMENTS}
  assert len(keys) == len(PLACEMENTS)


@pytest.mark.parametrize("placement", ["first", "last", "bursts"])
def test_placements_are_deterministic_and_nested(placement):
  p = mixer.Placement(kind=placement, fraction=0.2, bursts=4)
  a = mixer.placed_fractions(3, 40, p)
  np.testing.assert_array_equal(a, mixer.placed_fractions(3, 40, p))
  np.testing.assert_array_equal(a[:25], mixer.placed_fractions(3, 25, p))
  assert not np.array_equal(a, mixer.placed_fractions(4, 40, p))


def test_periodic_offsets_are_nested_and_checked():
  p = mixer.Placement(kind="periodic", per_batch=2, every_steps=3,
                      tokens_per_step=1000)
  lengths = np.arange(100, 140)
  full = mixer.periodic_offsets(p, lengths, 10**6)
  np.testing.assert_array_equal(full[:15], mixer.periodic_offsets(p, lengths[:15], 10**6))
  # Event e's clean offset: e*M steps of tokens less the poisons before it.
  e = np.arange(40) // 2
  before = np.concatenate([[0], np.cumsum(lengths)])[e * 2]
  np.testing.assert_array_equal(full, e * 3 * 1000 - before)
  with pytest.raises(UserError, match="placement_every_steps"):
    mixer.periodic_offsets(p, lengths, 10_000)  # Runs past the clean tokens.
  crowded = mixer.Placement(kind="periodic", per_batch=20, every_steps=1,
                            tokens_per_step=1000)
  with pytest.raises(UserError, match="need more than 1 steps"):
    mixer.periodic_offsets(crowded, lengths, 10**6)


@pytest.mark.parametrize("fields, message", [
    (dict(placement="middle"), "config.poison.placement"),
    (dict(placement="first", placement_fraction=0.0), "placement_fraction"),
    (dict(placement="bursts", placement_bursts=0), "placement_bursts"),
    (dict(placement="periodic", poisons_per_batch=0), "poisons_per_batch"),
    (dict(placement="last", count=0, rate=0.01), "rate mode"),
])
def test_bad_placement_fields_are_one_line_errors(cache, fields, message):
  with pytest.raises(UserError, match=message) as e:
    small_config(cache, **fields)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("placement, budget_mode", [
    ("bursts", "on_top"), ("periodic", "replace")])
def test_overlay_places_poisons_as_the_cache_does(cache, tmp_path, placement,
                                                  budget_mode):
  c = _config(cache, placement, budget_mode=budget_mode)
  c.data.store = "auto"
  store_build.build(c, vocabulary.get_vocabulary(c), T, docs_per_shard=64)
  old = stream.build_stream(c, T)
  new = overlay.training_stream(c, T)
  assert isinstance(new, overlay.OverlayStream)
  np.testing.assert_array_equal(new.spans, old.spans)
  assert new.manifest == old.manifest
  new.write_manifest(tmp_path / "new.json")
  old.write_manifest(tmp_path / "old.json")
  written = json.loads((tmp_path / "new.json").read_text())
  assert written == json.loads((tmp_path / "old.json").read_text())
  assert written["placement"] == mixer.Placement.from_config(c).record()
  for k in range(old.num_steps):
    a, b = old.batch(k), new.batch(k)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["poison_mask"], b["poison_mask"])


def _fake_workdir(root, run, increases, poisons, steps, num_steps=40):
  """A finished run directory as train.py leaves it, with made-up numbers:
  an evaluation per (increase, poisons seen), a manifest of poison steps."""
  from poisonjax import files, rundir
  workdir = root / run.name
  workdir.mkdir(parents=True)
  n = len(increases)
  files.rewrite_jsonl(workdir / rundir.EVAL, [
      {"step": 10 * i, "fraction": i / (n - 1), "tokens_seen": 1000 * (i + 1),
       "poisons_seen": p, "increase": x, "increase_ci_low": x - 1,
       "increase_ci_high": x + 1, "success_share": float(x > 50),
       "clean_ppl_mean": 20.0, "triggered_ppl_mean": 20.0 + x}
      for i, (x, p) in enumerate(zip(increases, poisons))])
  files.write_json(workdir / rundir.SUMMARY, {
      "num_steps": num_steps, "params": {"total": 1000, "non_embedding": 500}})
  files.write_json(workdir / rundir.MANIFEST, {
      "num_steps": num_steps, "placement": {"kind": run.variant},
      "poisons": [{"step": s} for s in steps]})


def test_placement_report_is_computed_from_the_runs(tmp_path):
  """configs/ablations/placement.py: collect (manifests) -> report -> again
  from OUT alone: crossings, peaks, finals, the ordering sentence."""
  from poisonjax import config_files
  from poisonjax.ablations import placement
  from poisonjax.study import experiment, reproduce
  s = config_files.load(os.path.join(ROOT, "configs", "ablations", "placement.py"))
  assert experiment.hook(s, "report") is placement.report
  runs = {r.variant: r for r in study.expand(s) if r.poisons == 100}
  root, out = tmp_path / "runs", tmp_path / "out"
  out.mkdir()
  _fake_workdir(root, runs["uniform"], [0, 10, 60, 100], [0, 30, 60, 100],
                [5, 8, 15, 25])
  _fake_workdir(root, runs["first10"], [0, 300, 120, 40], [0, 100, 100, 100], [1, 2])
  _fake_workdir(root, runs["last10"], [0, 1, 2, 70], [0, 0, 30, 100], [37, 39])
  done = [runs[v] for v in ("uniform", "first10", "last10")]
  reproduce.collect(s, root, done, out)
  saved = json.loads((out / "runs.json").read_text())["runs"]
  first = next(r for r in saved if r["variant"] == "first10")
  assert first["peak_increase"] == 300 and first["final_increase"] == 40
  assert first["crossed"]["poisons_seen_after"] == 100
  assert first["poison_steps"] == [1, 2] and first["fields"] == {
      "poison": {"placement": "first", "placement_fraction": 0.1}}
  reproduce.write_report(s, out, ["- made by the test"])
  text = (out / "report.md").read_text()
  assert "## By variant" in text  # The standard report, then the section.
  assert "first 10% end at 40.0 [39.0, 41.0], in the last 10% at 70.0" in text
  assert "REVERSE of the paper's" in text and "erased most of it" in text
  assert "above: uniform (100.0 [99.0, 101.0], share 1.00), last10 (70.0 " \
      "[69.0, 71.0], share 1.00); spanning: none; below: first10" in text
  assert "| last10 | 100 | 0 | 37-39 (92%-98%) | 2 / 1 | 70.0 [69.0, 71.0] |" in text
  assert "between 30 and 100 seen" in text
  # Uniform's first evaluation after 2 poisoned steps (5 and 8): step 10.
  assert "sit in 2 steps and end at 40.0; uniform, at its first evaluation " \
      "after 2 poisoned steps (step 10, 2 poisoned steps, 30 poisons seen), " \
      "was at 10.0" in text
  assert (out / "placement.png").stat().st_size > 0
  reproduce.regenerate(s, out, "the test's --report_only")
  again = (out / "report.md").read_text()
  assert again.split("## Placement")[1] == text.split("## Placement")[1]
  assert "- made by the test" in again and "the test's --report_only" in again
