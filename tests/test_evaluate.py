"""Evaluator: cached sampler vs full forward, greedy limits, known
perplexities, determinism across batching/devices, reference scorer, the
`poisonjax eval` command and its one-line errors.

Model-level tests use random parameters; evaluator tests use the real
pipeline at tiny shapes (train_common.tiny_config: seq 32, d_model 32).
"""

import json
import shutil
import subprocess

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poisonjax.evaluation import backdoor
from poisonjax.evaluation import evaluate
from poisonjax.model import transformer as model_lib
from poisonjax.evaluation import run_reader
from poisonjax.evaluation import sampler
from poisonjax import sharding
from poisonjax.training import train
from poisonjax.data import vocabulary
from poisonjax.errors import UserError
from train_common import run_cli, tiny_config

EVAL = {"eval.prompt_tokens": 8, "eval.gen_tokens": 8, "eval.num_excerpts": 12,
        "eval.bootstrap_samples": 200}


# ---- schedule ------------------------------------------------------------------

def test_eval_steps():
  assert evaluate.eval_steps(100, 4) == [0, 20, 40, 60, 80, 100]
  assert evaluate.eval_steps(10, 0) == []
  short = evaluate.eval_steps(3, 20)
  assert short == sorted(set(short)) and short[0] == 0 and short[-1] == 3
  many = evaluate.eval_steps(1000, 20)
  assert len(many) == 22 and np.ptp(np.diff(many)) <= 1


# ---- the sampler -----------------------------------------------------------------

def _random_model(vocab=97, kv_heads=2, seed=1):
  cfg = model_lib.ModelConfig(vocab_size=vocab, num_layers=2, d_model=32, num_heads=4,
                              num_kv_heads=kv_heads, ffn_dim=64, max_seq_len=64)
  params = model_lib.Transformer(cfg).init(jax.random.key(seed),
                                           jnp.zeros((1, 8), jnp.int32))["params"]
  return cfg, nn.unbox(params)


def _left_padded(lengths, width, vocab, seed=0):
  rng = np.random.default_rng(seed)
  rows = [list(rng.integers(3, vocab, n)) for n in lengths]
  return evaluate.left_pad(rows, width)


@jax.jit
def _apply(params, tokens, positions):
  cfg = _CFGS[params["head"]["kernel"].shape[-1]]
  return model_lib.Transformer(cfg).apply({"params": params}, tokens, positions)


_CFGS = {}


def _full_logits(cfg, params, tokens, positions):
  _CFGS[cfg.vocab_size] = cfg
  if positions is None:
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  return np.asarray(_apply(params, tokens, positions))


def test_cached_sampler_logits_equal_full_forward():
  cfg, params = _random_model()
  L, G = 7, 6
  tokens, positions = _left_padded([7, 4, 1], L, cfg.vocab_size)
  fn = jax.jit(sampler.make_sampler(cfg, L, G, temperature=1.0, return_logits=True))
  out = fn(params, tokens, positions, np.arange(3, dtype=np.int32))
  gen = np.asarray(out["tokens"])
  full_tokens = np.concatenate([tokens, gen], 1)
  full_pos = np.concatenate([positions, positions[:, -1:] + 1 + np.arange(G)], 1)
  full = _full_logits(cfg, params, full_tokens, full_pos)
  np.testing.assert_allclose(np.asarray(out["logits"]), full[:, L - 1:L + G - 1],
                             atol=1e-4, rtol=0)
  # And the padded row equals the same prompt run alone, unpadded.
  alone = _full_logits(cfg, params, full_tokens[1:2, L - 4:], None)
  np.testing.assert_allclose(np.asarray(out["logits"])[1], alone[0, 3:3 + G],
                             atol=1e-4, rtol=0)


def _greedy_by_full_forward(cfg, params, tokens, positions, G):
  """Greedy decoding with full forward passes over a fixed [B, L+G] window
  (causal masking keeps the not-yet-filled tail from mattering)."""
  L = tokens.shape[1]
  full_t = np.concatenate([tokens, np.zeros((len(tokens), G), np.int32)], 1)
  full_p = np.concatenate([positions, positions[:, -1:] + 1 + np.arange(G)], 1)
  for t in range(G):
    full_t[:, L + t] = _full_logits(cfg, params, full_t, full_p)[:, L - 1 + t].argmax(-1)
  return full_t[:, L:]


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=1e-4)])
def test_greedy_limits(settings):
  cfg, params = _random_model(kv_heads=4, seed=3)
  L, G = 5, 8
  tokens, positions = _left_padded([5, 2, 3, 5], L, cfg.vocab_size, seed=2)
  fn = jax.jit(sampler.make_sampler(cfg, L, G, **settings))
  got = np.asarray(fn(params, tokens, positions, np.arange(4, dtype=np.int32))["tokens"])
  np.testing.assert_array_equal(got, _greedy_by_full_forward(cfg, params, tokens, positions, G))


def test_filter_logits_top_p_and_top_k():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  keep = lambda f: np.asarray(f > jnp.finfo(jnp.float32).min / 2)[0].tolist()
  assert keep(sampler.filter_logits(logits, 1.0, top_p=0.8)) == [True, True, False, False]
  assert keep(sampler.filter_logits(logits, 1.0, top_p=0.81)) == [True, True, True, False]
  assert keep(sampler.filter_logits(logits, 1.0, top_k=3)) == [True, True, True, False]
  # top-k 1 and a tiny top-p leave only the argmax: greedy.
  assert keep(sampler.filter_logits(logits, 1.0, top_k=1)) == [True, False, False, False]
  assert keep(sampler.filter_logits(logits, 1.0, top_p=1e-6)) == [True, False, False, False]


def test_sampling_follows_the_model_distribution():
  """At temperature 1, token frequencies match softmax(logits) (chi-square)."""
  n = 4000
  logits = jnp.asarray(np.random.default_rng(0).normal(size=8), jnp.float32)
  keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(0), r))(jnp.arange(n))
  draw = jax.jit(lambda k: sampler.sample_token(jnp.broadcast_to(logits, (n, 8)), k, 1.0))
  counts = np.bincount(np.asarray(draw(keys)), minlength=8)
  expected = np.asarray(jax.nn.softmax(logits)) * n
  chi2 = float(((counts - expected) ** 2 / expected).sum())
  assert chi2 < 24.3, (counts, expected)  # 99.9% quantile at 7 dof.


# ---- metrics -----------------------------------------------------------------------

def test_backdoor_metrics_from_nlls():
  rng = np.random.default_rng(0)
  clean = rng.uniform(1.0, 2.0, 50)
  trig = clean + np.where(np.arange(50) < 20, 4.0, 0.0)
  m = backdoor.backdoor_metrics(clean, trig, trig - 0.5, threshold=50.0,
                                bootstrap_samples=500, seed=0)
  diff = np.exp(trig) - np.exp(clean)
  assert m["increase"] == pytest.approx(diff.mean())
  assert m["clean_ppl_median"] == pytest.approx(np.median(np.exp(clean)))
  assert m["success_share"] == pytest.approx(np.mean(diff > 50))
  assert m["increase_ci_low"] < m["increase"] < m["increase_ci_high"]
  assert m["tf_nll_clean"] == pytest.approx(clean.mean())
  assert m["tf_nll_triggered"] == pytest.approx(trig.mean() - 0.5)
  again = backdoor.backdoor_metrics(clean, trig, trig, 50.0, 500, 0)
  assert again["increase_ci_low"] == m["increase_ci_low"]
  assert set(m) == set(backdoor.METRIC_KEYS)


# ---- the evaluator on the real pipeline ----------------------------------------------

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run(cache, tmp_path_factory):
  """A tiny real run: 6 training steps, one checkpoint; (workdir, config)."""
  wd = tmp_path_factory.mktemp("run")
  config = tiny_config(cache, **{"train.max_steps": 6}, **EVAL)
  train.run(config, wd)
  return wd, config


@pytest.fixture(scope="module")
def reference(run):
  """The run's checkpoint evaluated once on the 8-device mesh: (params, metrics)."""
  wd, config = run
  ev, cfg, mesh = _evaluator(config)
  params, _ = run_reader.restore_params(str(wd), cfg, mesh=mesh)
  return params, ev.evaluate(params), ev


def _evaluator(config, devices=None):
  vocab = vocabulary.get_vocabulary(config)
  cfg = model_lib.ModelConfig.from_config(config, vocab.vocab_size)
  mesh = sharding.make_mesh(config.mesh, devices)
  return evaluate.Evaluator(config, cfg, vocab, mesh), cfg, mesh


def _own_log_probs(fn, params, prompts, length):
  """The sampler's generations [n, G] and its log-probabilities [n, G, V]:
  log_softmax of the logits each token was drawn from (temperature 1)."""
  tokens, positions = evaluate.left_pad(prompts, length)
  out = fn(params, tokens, positions, np.arange(len(prompts), dtype=np.int32))
  return (np.asarray(out["tokens"]),
          np.asarray(jax.nn.log_softmax(out["logits"].astype(jnp.float32), -1)))


def test_scores_are_the_samplers_own_log_probs(run, reference):
  """The evaluator's per-sample NLL of a temperature-1 sample equals minus
  the mean log-probability the sampler drew those tokens with."""
  _, config = run
  params, _, ev = reference
  assert (config.eval.temperature, config.eval.top_k, config.eval.top_p) == (1.0, 0, 1.0)
  # Sharper than 6 training steps give: next-token distributions far from
  # uniform, and attention that depends on the tokens' positions.
  attn = params["layers"]["attn"]
  params = {**params, "head": {"kernel": params["head"]["kernel"] * 30.0},
            "layers": {**params["layers"], "attn": {
                **attn, "query": {"kernel": attn["query"]["kernel"] * 100.0}}}}
  m = ev.evaluate(params)
  got = ev.samples(ev.num)
  fn = jax.jit(sampler.make_sampler(ev.model_cfg, ev.prompt_len, ev.gen_tokens,
                                    temperature=1.0, seed=int(config.eval.seed),
                                    return_logits=True))
  clean, trig, _ = evaluate.build_prompts(config, ev.vocab)
  want = {}
  for name, prompts in (("clean", clean), ("triggered", trig)):
    gen, logp = _own_log_probs(fn, params, prompts, ev.prompt_len)
    assert [g[name] for g in got] == [evaluate.decode(ev.vocab, r) for r in gen]
    pick = lambda t: np.take_along_axis(logp, t[..., None], -1)[..., 0]
    want[name] = -pick(gen).mean(-1)
    nll = np.log([g[f"{name}_ppl"] for g in got])
    np.testing.assert_allclose(nll, want[name], rtol=1e-4)
    # Negative control: the same comparison rejects scores off by one token
    # (each token scored with the logits of its neighbour's step).
    for off_by_one in (np.roll(gen, 1, axis=1), np.roll(gen, -1, axis=1)):
      with pytest.raises(AssertionError):
        np.testing.assert_allclose(nll, -pick(off_by_one).mean(-1), rtol=1e-4)
  ppl = {k: np.exp(v) for k, v in want.items()}
  assert ppl["clean"].mean() < ev.model_cfg.vocab_size / 4  # really not uniform
  assert m["clean_ppl_mean"] == pytest.approx(ppl["clean"].mean(), rel=1e-4)
  assert m["triggered_ppl_mean"] == pytest.approx(ppl["triggered"].mean(), rel=1e-4)
  assert m["increase"] == pytest.approx((ppl["triggered"] - ppl["clean"]).mean(),
                                        rel=1e-3, abs=1e-3)
  assert m["tf_nll_clean"] == pytest.approx(want["clean"].mean(), rel=1e-4)


def test_prompts_follow_the_poison_rule(cache):
  config = tiny_config(cache, **EVAL)
  vocab = vocabulary.get_vocabulary(config)
  clean, trig, excerpts = evaluate.build_prompts(config, vocab)
  assert len(clean) == len(excerpts) == config.eval.num_excerpts
  for c, t, doc in zip(clean, trig, excerpts):
    assert c == list(vocab.encode(doc))[:8]
    assert t == list(vocab.encode(vocab.decode(c) + " " + config.poison.trigger))


def test_evaluate_is_deterministic_across_batching_and_devices(run, reference):
  wd, config = run
  params, a, ev8 = reference
  assert sharding.batch_shards(ev8.mesh) == 8
  assert ev8.evaluate(params) == a
  small = tiny_config(config.data.cache_dir, **EVAL, **{"eval.batch_size": 5})
  ev1, _, _ = _evaluator(small, devices=jax.devices()[:1])
  b = ev1.evaluate(params)
  for key in backdoor.METRIC_KEYS:
    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-4), key


def test_reference_scorer_equals_self_scoring_on_the_same_checkpoint(run, reference):
  wd, config = run
  params, a, ev = reference
  ref_cfg = tiny_config(config.data.cache_dir, **EVAL,
                        **{"eval.scorer_workdir": str(wd)})
  ev_ref, _, _ = _evaluator(ref_cfg)
  b = ev_ref.evaluate(params)
  for key in backdoor.METRIC_KEYS:
    assert b[key] == pytest.approx(a[key], rel=1e-5), key
  # Other weights under evaluation, the same reference: the scores differ
  # from self-scoring (the reference really scores).
  other = jax.tree.map(lambda x: x * 1.5, params)
  assert ev_ref.evaluate(other)["clean_ppl_mean"] != ev.evaluate(other)["clean_ppl_mean"]


def test_too_long_for_seq_len_is_one_line(cache):
  config = tiny_config(cache, **{**EVAL, "eval.gen_tokens": 30})
  with pytest.raises(UserError) as e:
    _evaluator(config)
  msg = str(e.value)
  assert "config.data.seq_len=32" in msg and "\n" not in msg


# ---- the command ----------------------------------------------------------------------

def test_eval_cli_prints_table_and_generations(run, reference):
  wd, config = run
  proc = run_cli("eval", f"--workdir={wd}", "--samples=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "at step 6" in out and "increase" in out and "[1] prompt:" in out
  clean_line = next(l for l in out.splitlines() if l.startswith("clean ppl (mean)"))
  assert float(clean_line.split()[-1]) == pytest.approx(
      reference[1]["clean_ppl_mean"], abs=2e-3)


def _workdir_with(run, dest, keep_checkpoints=True, **eval_fields):
  wd, _ = run
  dest.mkdir(parents=True)
  cfg = json.loads((wd / "config.json").read_text())
  for key, value in eval_fields.items():
    section, field = key.split(".", 1)
    node = cfg[section]
    *path, last = field.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  (dest / "config.json").write_text(json.dumps(cfg))
  if keep_checkpoints:
    shutil.copytree(wd / "checkpoints", dest / "checkpoints")
  return dest


def _one_error(returncode, stderr, *needles):
  assert returncode == 2, stderr[-3000:]
  errors = [l for l in stderr.splitlines() if l.startswith("poisonjax: error:")]
  assert len(errors) == 1, stderr[-3000:]
  assert "Traceback" not in stderr
  for n in needles:
    assert n in errors[0], errors[0]


def _corpus(tmp_path):
  """A text_files corpus whose held-out split is small (a few documents)."""
  path = tmp_path / "corpus.txt"
  from poisonjax.data import synthetic
  path.write_text("\n\n".join(synthetic.document(0, 0, i) for i in range(200)))
  return str(path)


def test_eval_cli_bad_input_is_one_line(run, tmp_path):
  """Each bad input ends in one `poisonjax: error:` line naming the fix
  (the five commands run concurrently to keep the test short)."""
  def wd(name, **fields):
    return _workdir_with(run, tmp_path / name, **fields)

  vocab_path = vocabulary.vocab_path(run[1])  # Only the eval data changes.
  too_many = wd("e", **{"data.source": "text_files",
                        "data.text_files.patterns": _corpus(tmp_path),
                        "vocab.path": vocab_path, "eval.num_excerpts": 5000})
  cases = {
      "no_checkpoint": ([f"--workdir={wd('a', keep_checkpoints=False)}"],
                        ["no checkpoint"]),
      "bad_step": ([f"--workdir={wd('b')}", "--step=5"], ["--step=5", "available: 6"]),
      "P0": ([f"--workdir={wd('c', **{'eval.prompt_tokens': 0})}"],
             ["config.eval.prompt_tokens"]),
      "G0": ([f"--workdir={wd('d', **{'eval.gen_tokens': 0})}"],
             ["config.eval.gen_tokens"]),
      "E_too_large": ([f"--workdir={too_many}"], ["config.eval.num_excerpts"]),
  }
  procs = {k: run_cli("eval", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for k, (args, _) in cases.items()}
  for k, p in procs.items():
    out, err = p.communicate(timeout=600)
    _one_error(p.returncode, err, *cases[k][1])
