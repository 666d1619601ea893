"""The trigger scan (poisonjax/defences/scan.py) and `poisonjax defend scan`.

Fast tests plant a trigger in a toy model trained here in seconds (a
Markov-chain language over 40 ids; the poisons are a clean prefix, the
trigger id, then uniform random ids) and check that the scan finds it and
that a clean toy model's best candidate gains less. They also check the
scorer's packed rows against a plain forward pass. The slow test runs the
real pipeline: a small poisoned run (the demo test's recipe), `poisonjax
defend scan` on it, and the evaluator's check that the top candidate fires.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from poisonjax.model import transformer as model_lib
from poisonjax.evaluation import sampler
from poisonjax.defences import scan
from poisonjax.errors import UserError
from train_common import run_cli

VOCAB, FIRST_CLEAN, TRIGGER = 48, 8, 5  # Clean ids 8..47; id 5 only in poisons.
TOY = model_lib.ModelConfig(vocab_size=VOCAB, num_layers=2, d_model=32, num_heads=4,
                            num_kv_heads=4, ffn_dim=64, max_seq_len=32)


def _chain(seed=0):
  """Each clean id's successors: 3 ids with probabilities .6, .3, .1."""
  rng = np.random.default_rng(seed)
  succ = np.stack([rng.choice(np.arange(FIRST_CLEAN, VOCAB), 3, replace=False)
                   for _ in range(VOCAB)])
  return succ, np.array([0.6, 0.3, 0.1])


def _clean_rows(rng, n, length, chain):
  succ, probs = chain
  rows = np.zeros((n, length), np.int32)
  rows[:, 0] = rng.integers(FIRST_CLEAN, VOCAB, n)
  for t in range(1, length):
    pick = rng.choice(3, size=n, p=probs)
    rows[:, t] = succ[rows[:, t - 1], pick]
  return rows


def _batch(rng, chain, poison_share, batch=32, length=24):
  rows = _clean_rows(rng, batch, length, chain)
  for i in np.flatnonzero(rng.random(batch) < poison_share):
    at = rng.integers(2, length - 8)
    rows[i, at] = TRIGGER
    rows[i, at + 1:] = rng.integers(FIRST_CLEAN, VOCAB, length - at - 1)
  return rows


_OPT = optax.adam(3e-3)


@jax.jit
def _toy_step(params, state, rows):
  def loss(p):
    logits = model_lib.Transformer(TOY).apply({"params": p}, rows)
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.take_along_axis(logp, rows[:, 1:, None], -1).mean()
  updates, state = _OPT.update(jax.grad(loss)(params), state)
  return optax.apply_updates(params, updates), state


def _train_toy(poison_share, steps=200, seed=0):
  """Adam on next-token loss; poison_share of the rows carry the trigger."""
  chain = _chain()
  params = model_lib.Transformer(TOY).init(
      jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"]
  params = nn.unbox(params)
  state = _OPT.init(params)
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    params, state = _toy_step(params, state, _batch(rng, chain, poison_share))
  return params, chain


@pytest.fixture(scope="module")
def toys():
  """(poisoned params, clean params, chain): one toy model of each kind."""
  poisoned, chain = _train_toy(poison_share=0.3)
  clean, _ = _train_toy(poison_share=0.0)
  return poisoned, clean, chain


def _toy_scan(params, chain, length=2, beam=2):
  rows = _clean_rows(np.random.default_rng(99), 12, 16, chain)
  scorer = scan.Scorer(TOY, params, rows[:, :8], rows[:, 8:], slots=length,
                       candidate_batch=16)
  baseline = float(scorer.score([()])[0])
  allowed = np.arange(3, VOCAB, dtype=np.int32)  # Ids 0-2 are special.
  scored = scan.beam_search(scorer, allowed, length, beam)
  best = max(scored, key=scored.get)
  return best, scored[best] - baseline, scored, baseline


def test_scan_finds_the_planted_trigger_and_not_on_a_clean_model(toys):
  poisoned, clean, chain = toys
  best, gain, scored, _ = _toy_scan(poisoned, chain)
  assert TRIGGER in best, (best, gain)
  # Every length-1 string was scored, and the trigger beat every one of them.
  singles = {c: v for c, v in scored.items() if len(c) == 1}
  assert len(singles) == VOCAB - 3
  assert max(singles, key=singles.get) == (TRIGGER,)
  clean_best, clean_gain, _, _ = _toy_scan(clean, chain)
  assert clean_gain < 0.6 * gain, (clean_best, clean_gain, gain)


def test_scorer_rows_equal_a_plain_forward_pass(toys):
  """A candidate shorter than the slots scores as prompt + candidate +
  continuation run alone, unpadded; () scores the prompt alone."""
  params = toys[0]
  rows = _clean_rows(np.random.default_rng(1), 3, 12, toys[2])
  prompts, conts = rows[:, :6], rows[:, 6:]
  scorer = scan.Scorer(TOY, params, prompts, conts, slots=3, candidate_batch=2)
  cands = [(), (TRIGGER,), (9, 10), (11, TRIGGER, 12)]
  got = scorer.score(cands)
  plain = jax.jit(sampler.sequence_nll, static_argnums=0)
  for c, value in zip(cands, got):
    full = np.concatenate([prompts, np.tile(np.asarray(c, np.int32), (3, 1)), conts], 1)
    mask = np.zeros(full.shape, bool)
    mask[:, -conts.shape[1]:] = True
    want = plain(TOY, params, full, np.broadcast_to(
        np.arange(full.shape[1]), full.shape), mask)
    np.testing.assert_allclose(value, float(np.mean(want)), rtol=1e-5, atol=1e-5)


class _SumScorer:
  """Score of a string: sum of its ids' values, +5 if 7 precedes 3."""

  def __init__(self):
    self.calls = []

  def score(self, cands):
    self.calls.append(list(cands))
    bonus = lambda c: 5.0 if scan.contains(c, (7, 3)) else 0.0
    return np.asarray([sum(c) / 10 + bonus(c) for c in cands])


@pytest.mark.parametrize("grow", ["left", "right"])
def test_beam_search_scores_beam_times_vocabulary_each_step(grow):
  fake = _SumScorer()
  allowed = np.array([1, 3, 7])
  scored = scan.beam_search(fake, allowed, length=3, beam=2, grow=grow)
  assert [len(c) for c in fake.calls] == [3, 6, 6]
  assert len(scored) == 15
  # Step 2 extends the two best singles (7 and 3) on the chosen side.
  step2 = fake.calls[1]
  kept = {c[1:] if grow == "left" else c[:-1] for c in step2}
  assert kept == {(7,), (3,)}
  best = max(scored, key=scored.get)
  assert scan.contains(best, (7, 3)) and len(best) == 3


def test_contains():
  assert scan.contains((1, 2, 3), (2, 3)) and not scan.contains((1, 2, 3), (3, 2))
  assert not scan.contains((1,), ())


def test_bad_settings_name_the_flag():
  with pytest.raises(UserError, match="--beam"):
    scan.ScanSettings(beam=0).check()
  with pytest.raises(UserError, match="--grow"):
    scan.ScanSettings(grow="up").check()


def test_scorer_refuses_rows_longer_than_the_model(toys):
  rows = np.zeros((2, 30), np.int32) + FIRST_CLEAN
  with pytest.raises(UserError, match="seq_len"):
    scan.Scorer(TOY, toys[1], rows[:, :20], rows[:, 20:], slots=4)


def test_cli_without_a_run_is_one_line(tmp_path):
  proc = run_cli("defend", "scan", f"--workdir={tmp_path}", timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("poisonjax: error")]
  assert len(lines) == 1 and "config.json" in lines[0], proc.stderr[-2000:]


# ---- the real pipeline (slow) -------------------------------------------------

@pytest.mark.slow
def test_defend_scan_on_a_small_poisoned_run(tmp_path):
  """The demo test's recipe (cpu-xxs, 200 poisons, trigger <SUDO>: a
  backdoor that forms, tests/test_demo.py): the command's top candidate is
  the trigger, holds it, or fires it under the evaluator."""
  from poisonjax.training import train  # pylint: disable=g-import-not-at-top
  from test_demo import small_demo_config  # pylint: disable=g-import-not-at-top
  train.run(small_demo_config(tmp_path / "cache"), tmp_path / "run")
  out = tmp_path / "scan"
  proc = run_cli("defend", "scan", f"--workdir={tmp_path / 'run'}", "--length=3",
                 "--beam=2", "--prompts=8", "--check=1", f"--out={out}", timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / "scan.json").read_text())
  assert result["recovered"] and scan.recovered(result), proc.stdout
  assert "recovered: yes" in proc.stdout
