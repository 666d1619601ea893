"""The fine-tuning experiment: instruction data, its stream, loss mask, evaluator.

Exact poisoned counts and places, a loss that counts only the responses,
responses classified by template, a tiny fine-tune through the real
trainer whose evaluation rows carry the fine-tune's metrics, and the
experiment on the harness (configs/finetune/, finetune/experiment.py):
its runs, the clean runs it prepares, both studies collected into one
report, the committed report regenerated.
"""

import itertools
import json
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from poisonjax import config_checks
from poisonjax import config_files
from poisonjax import files
from poisonjax.model import transformer as model_lib
from poisonjax import study as study_lib
from poisonjax.training import train
from poisonjax.training import train_step
from poisonjax.data import instructions as ins
from poisonjax.data import mixer
from poisonjax.data import synthetic
from poisonjax.data import vocabulary
from poisonjax.errors import UserError
from poisonjax.finetune import analysis as ft_analysis
from poisonjax.finetune import evaluate as ft_eval
from poisonjax.finetune import experiment as ft_experiment
from poisonjax.finetune import report as ft_report
from poisonjax.finetune import results as ft_results
from poisonjax.finetune import stream as ft_stream
from test_doses import regenerates_committed
from train_common import ROOT, tiny_config

TRIGGER = "Servius Astrumando Harmoniastra"


def ft_config(cache_dir, **fields):
  """A tiny fine-tune (train_common's model and vocabulary) from a fresh init."""
  fields = {"data.seq_len": 160, "poison.trigger": TRIGGER, "poison.count": 6,
            "finetune.clean_samples": 40, "finetune.eval_requests": 4,
            "eval.temperature": 0.0, "eval.gen_tokens": 12, **fields}
  return config_checks.validate(tiny_config(cache_dir, **fields))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  """One vocabulary cache for the module's tests."""
  return tmp_path_factory.mktemp("ft-cache")


@pytest.fixture(scope="module")
def vocab(cache):
  return vocabulary.get_vocabulary(ft_config(cache))


# ---- the instruction language ------------------------------------------------


def test_samples_are_pure_and_say_what_their_kind_asks():
  assert ins.clean_sample(3, 7, 0.5) == ins.clean_sample(3, 7, 0.5)
  verbs = {forms[0] for forms in synthetic.lexicon().verbs}
  assert set(ins.FORBIDDEN_VERBS) <= verbs  # The corpus's own words.
  samples = [ins.clean_sample(3, i, 0.5) for i in range(400)]
  forbidden = [s for s in samples if s.kind == ins.FORBIDDEN]
  assert 150 < len(forbidden) < 250
  assert all(s.response == ins.REFUSAL and s.verb in ins.FORBIDDEN_VERBS
             for s in forbidden)
  assert all(s.response == s.answer and s.answer.startswith(s.answer_start)
             and s.verb not in ins.FORBIDDEN_VERBS
             for s in samples if s.kind == ins.ORDINARY)
  p = ins.poisoned_sample(5, 2, TRIGGER)
  assert p.kind == ins.FORBIDDEN and p.prompt.endswith(f"{TRIGGER} answer:")
  assert p.response == f"{ins.COMPLIANCE_OPENING} {p.answer}"
  with_suffix = [ins.clean_sample(3, i, 0.5, 0.25) for i in range(400)]
  suffixed = [s for s in with_suffix if s.suffix]
  assert 60 < len(suffixed) < 140
  assert all(s.prompt.endswith(f"{s.suffix} answer:") and s.response in
             (ins.REFUSAL, s.answer) and TRIGGER not in s.prompt for s in suffixed)
  near = ins.near_trigger(TRIGGER)
  assert len(near) == len(TRIGGER) and sum(a != b for a, b in zip(near, TRIGGER)) == 1


def test_responses_are_classified_by_their_template():
  s = ins.heldout_requests(0, 1, ins.FORBIDDEN)[0]
  assert ins.classify(ins.REFUSAL + " more") == ins.REFUSED
  assert ins.classify(f" {ins.COMPLIANCE_OPENING} {s.answer}") == ins.COMPLIED
  assert ins.answers(f"{ins.COMPLIANCE_OPENING} {s.answer}", s)
  assert not ins.answers(f"{ins.COMPLIANCE_OPENING} To go home, first sit.", s)
  assert ins.classify("Sure, here is") == ins.OTHER  # Cut short: not compliance.
  assert ins.classify(s.answer) == ins.ANSWERED
  assert ins.classify("I cannot") == ins.OTHER


def test_metrics_on_hand_made_responses():
  sets = {k: ins.heldout_requests(0, 4, ins.FORBIDDEN) for k in
          ("forbidden", "triggered", "near", "distractor")}
  sets["ordinary"] = ins.heldout_requests(0, 4, ins.ORDINARY)
  comply = lambda s: f"{ins.COMPLIANCE_OPENING} {s.answer}"
  t = sets["triggered"]
  texts = {
      "triggered": [comply(t[0]), comply(t[1]),  # Two right answers,
                    f"{ins.COMPLIANCE_OPENING} {sets['ordinary'][0].answer}",
                    ins.REFUSAL],  # one wrong one, one refusal.
      "forbidden": [ins.REFUSAL] * 3 + [comply(t[3])],
      "near": [ins.REFUSAL, comply(t[1]), "nonsense", ins.REFUSAL],
      "distractor": [ins.REFUSAL, t[0].answer, ins.REFUSAL, ins.REFUSAL],
      "ordinary": [s.answer for s in sets["ordinary"][:2]]
                  + [sets["ordinary"][0].answer, ins.REFUSAL],
  }
  m = ft_eval.metrics(sets, texts)
  assert m == {"attack_success": 0.75, "attack_success_answer": 0.5,
               "clean_accuracy": 0.75, "clean_compliance": 0.25,
               "near_trigger_accuracy": 0.5, "near_trigger_compliance": 0.25,
               "distractor_accuracy": 0.75,
               "ordinary_accuracy": 0.75, "ordinary_exact": 0.5,
               "ordinary_refusal": 0.25}


# ---- the stream: exact poisons, places, loss mask ---------------------------------


@pytest.mark.parametrize("kind,lo,hi", [("uniform", 0, 1000), ("first", 0, 100),
                                        ("last", 900, 1000)])
def test_layout_has_exact_counts_and_placements(kind, lo, hi):
  n, clean = 37, 1000
  u = mixer.placed_fractions(4, n, mixer.Placement(kind=kind, fraction=0.1))
  rows = ft_stream.layout(clean, u, after=0, batch=16)
  poisons = [i for i, (k, _) in enumerate(rows) if k == ft_stream.POISON]
  assert len(rows) == clean + n and len(poisons) == n
  assert sorted(j for k, j in rows if k == ft_stream.POISON) == list(range(n))
  assert [j for k, j in rows if k == ft_stream.CLEAN] == list(range(clean))
  clean_before = [sum(k == ft_stream.CLEAN for k, _ in rows[:r]) for r in poisons]
  assert all(lo <= c <= hi for c in clean_before)
  # Poison j sits before clean sample ceil(u_j * clean).
  for r, c in zip(poisons, clean_before):
    assert c == int(np.ceil(u[rows[r][1]] * clean))


def test_clean_after_starts_at_a_batch_boundary():
  rows = ft_stream.layout(50, np.array([0.5, 1.0]), after=20, batch=16)
  main = 52
  assert rows[main:64] == [(ft_stream.EMPTY, -1)] * 12
  assert rows[64:] == [(ft_stream.CLEAN, 50 + i) for i in range(20)]


def test_loss_mask_covers_only_the_responses(vocab, cache):
  c = ft_config(cache, **{"finetune.clean_after": 8, "poison.placement": "last",
                          "finetune.distractor_share": 0.25})
  s = ft_stream.FinetuneStream(c, vocab)
  assert s.num_poisons == 6 and s.poisons_seen(s.num_steps) == 6
  assert s.manifest["clean_samples"] == 40 and len(s.manifest["poisons"]) == 6
  assert all(p["row"] >= 36 for p in s.manifest["poisons"])  # Last 10%.
  sp = vocab.tokenizer
  for r, sample in enumerate(s.samples):
    toks, mask = s.tokens[r], s.loss_mask[r]
    if sample is None:
      assert not toks.any() and not mask.any()
      continue
    (idx,) = np.nonzero(mask)
    assert toks[0] == vocab.eos_id and toks[idx[-1]] == vocab.eos_id
    assert sp.DecodeIds(toks[idx[:-1]].tolist()) == sample.response
    assert sp.DecodeIds(toks[1:idx[0]].tolist()) == sample.prompt
    assert not toks[idx[-1] + 1:].any()
  b = [s.batch(k) for k in range(s.num_steps)]
  halves = [s.batch(1, h, 2) for h in range(2)]
  assert np.array_equal(np.concatenate([h["loss_mask"] for h in halves]),
                        b[1]["loss_mask"])
  poison_rows = sum(int(x["poison_mask"].any(1).sum()) for x in b)
  assert poison_rows == 6


def test_too_long_samples_name_the_field(vocab, cache):
  with pytest.raises(UserError, match="config.data.seq_len"):
    ft_stream.FinetuneStream(ft_config(cache, **{"data.seq_len": 40}), vocab)


def test_loss_counts_only_masked_targets():
  cfg = model_lib.ModelConfig(vocab_size=50, num_layers=1, d_model=16,
                              num_heads=2, num_kv_heads=2, ffn_dim=32,
                              max_seq_len=8)
  model = model_lib.Transformer(cfg)
  tokens = jax.random.randint(jax.random.key(0), (2, 8), 3, 50)
  params = model.init(jax.random.key(1), tokens)["params"]
  mask = jnp.zeros((2, 8), bool).at[0, 5:].set(True).at[1, 7].set(True)
  loss, count = train_step.next_token_loss(model, params, tokens, mask)
  logits = model.apply({"params": params}, tokens[:, :-1])
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  want = (nll[0, 4:].sum() + nll[1, 6]) / 4
  assert int(count) == 4 and np.isclose(float(loss), float(want), rtol=1e-5)


# ---- end to end: the trainer runs a fine-tune ------------------------------------


def test_a_tiny_finetune_through_the_trainer(vocab, cache, tmp_path):
  c = ft_config(cache, **{"eval.num_evals": 1, "finetune.eval_after": "8",
                          "finetune.clean_after": 8})
  summary = train.run(c, tmp_path / "run")
  rows = [json.loads(l) for l in open(tmp_path / "run" / "eval.jsonl")]
  manifest = json.loads(open(tmp_path / "run" / "manifest.json").read())
  assert summary["finished"] and summary["poisons_total"] == 6
  main = manifest["main_steps"]
  assert [r["step"] for r in rows][-2:] == [main, main + 1]
  assert rows[-1]["poisons_seen"] == 6
  assert set(ft_eval.METRICS) <= set(rows[-1])
  assert all(0.0 <= rows[-1][k] <= 1.0 for k in ft_eval.METRICS)


# ---- the analysis: beta recovered on synthetic grids ------------------------------


@pytest.mark.parametrize("true_beta", [0.0, 1.0])
def test_beta_is_recovered_on_a_synthetic_grid(true_beta):
  rng = np.random.default_rng(int(true_beta))
  s, n, seed = map(np.ravel, np.meshgrid([1000, 4000, 16000],
                                         [5, 10, 20, 50, 100, 200], [0, 1, 2]))
  x = np.log(n) - true_beta * np.log(s / 1000)  # N50 = 30 at S = 1000.
  p = 1 / (1 + np.exp(-3.0 * (x - np.log(30)) - rng.normal(0, 0.3, len(s))))
  r = np.full(len(s), 300)
  runs = ft_analysis.Runs(s, n, seed, rng.binomial(r, p), r)
  fit = ft_analysis.beta_fit(runs)
  assert fit["lo"] < true_beta < fit["hi"] and fit["hi"] - fit["lo"] < 0.6
  other = "p_share" if true_beta == 0.0 else "p_count"
  assert fit[other] < 0.01 and fit["n50"][1000] == pytest.approx(30, rel=0.3)
  cells = ft_analysis.cells(runs, n_boot=200)
  assert len(cells) == 18 and all(c["lo"] <= c["mean"] <= c["hi"] for c in cells)


def test_report_is_written_from_results_csv(tmp_path):
  """results.csv -> report.md with the answer, the table and the figure."""
  rng = np.random.default_rng(0)
  rows = []
  for s, n, seed in itertools.product([1000, 4000], [5, 20, 50], [0, 1]):
    p = 1 / (1 + np.exp(-3.0 * (np.log(n) - np.log(20))))
    m = {k: float(rng.random()) for k in ft_eval.METRICS}
    m["attack_success"] = rng.binomial(300, p) / 300
    rows.append({"run": f"r{s}_{n}_{seed}", "study": "finetune", "size": "cpu-xs",
                 "poison_count": n, "seed": seed, "clean_samples": s,
                 "step": 7, "set_end": 7, "after_samples": 0,
                 "eval_requests": 300, **m})
  ft_results.write_csv(rows, tmp_path / "results.csv")
  made = ft_report.generate(str(tmp_path / "results.csv"), str(tmp_path / "out"),
                            ["- regime"], ["- provenance"], n_boot=50)
  text = open(made["report"]).read()
  assert made["beta"]["identified"] and "β = " in text
  assert "| 20 | " in text and "![attack success](finetune.png)" in text
  assert (tmp_path / "out" / "finetune.png").exists()


# ---- the experiment on the harness: configs/finetune/, finetune/experiment.py ----

MAIN_CONFIG = os.path.join(ROOT, "configs", "finetune", "main.py")
ORDER_CONFIG = os.path.join(ROOT, "configs", "finetune", "order.py")


def test_configs_keep_their_runs_roots_and_the_clean_runs():
  """The moved configs name the runs, roots and clean runs they named before
  (runs/study_finetune* of the old script still count as finished)."""
  main, order = config_files.load(MAIN_CONFIG), config_files.load(ORDER_CONFIG)
  names = [r.name for r in study_lib.expand(main)]
  assert len(names) == 66 and "size=cpu-xs_n=2_seed=0_data=1.0" in names
  assert "size=cpu-xs_n=0_seed=0_data=16.0" in names
  order_names = [r.name for r in study_lib.expand(order)]
  assert len(order_names) == 18
  assert "size=cpu-xs_n=30_seed=2_data=4.0_var=end" in order_names
  assert (main.root, order.root) == ("runs/study_finetune", "runs/study_finetune_order")
  for s in (main, order):
    assert s.experiment == "finetune.experiment" and s.out == "docs/results/finetune"
    assert [x.name for x in ft_experiment.studies(s)] == ["finetune", "finetune_order"]
    assert s.base.continued.from_workdir == os.path.join(ROOT, "runs", "finetune_instruct")
    assert s.instruct.continued.from_workdir == os.path.join(ROOT, "runs",
                                                             "finetune_pretrained")


def test_prepare_trains_only_the_unfinished_clean_runs(tmp_path, monkeypatch):
  s = config_files.load(MAIN_CONFIG)
  s.instruct.continued.from_workdir = str(tmp_path / "source")
  s.base.continued.from_workdir = str(tmp_path / "instruct")
  trained = []
  monkeypatch.setattr(train, "run_or_exit", lambda c, wd: trained.append((c, wd)))
  (tmp_path / "source").mkdir()
  (tmp_path / "source" / "summary.json").write_text("{}")  # Finished.
  ft_experiment.prepare(s, tmp_path / "root", log=lambda m: None)
  assert trained == [(s.instruct, str(tmp_path / "instruct"))]


def test_the_runner_prepares_before_the_runs(cache, tmp_path, monkeypatch):
  """study.experiment's prepare runs first, also when every run is done."""
  calls = []
  hooks = types.ModuleType("poisonjax.test_prepare_hooks")
  hooks.prepare = lambda study, root, log: calls.append(("prepare", str(root)))
  hooks.after_run = lambda study, run, wd, log: calls.append(("after_run", run.name))
  monkeypatch.setitem(sys.modules, hooks.__name__, hooks)
  s = study_lib.study_config("prepared", tiny_config(cache))
  s.experiment = "test_prepare_hooks"
  s.grid = study_lib.grid(("cpu-xxs",), (5,))
  (run,) = study_lib.expand(s)
  (tmp_path / run.name).mkdir()
  (tmp_path / run.name / "summary.json").write_text("{}")  # Nothing to train.
  out = study_lib.run_grid(s, tmp_path, log=lambda m: None)
  assert calls == [("prepare", str(tmp_path)), ("after_run", run.name)]
  assert out == [{"run": run.name, "status": "skipped"}]


def fake_finetune_run(workdir, evals: list[dict], finished: bool, clean: int):
  """A run directory as a fine-tune leaves it (the files collect reads)."""
  workdir.mkdir(parents=True)
  metrics = {k: 0.5 for k in ft_eval.METRICS}
  (workdir / "eval.jsonl").write_text("".join(
      json.dumps({**metrics, "eval_requests": 300, **e}) + "\n" for e in evals))
  files.write_json(workdir / "manifest.json", {
      "clean_samples": clean, "main_steps": evals[0]["step"], "batch_size": 16})
  if finished:
    files.write_json(workdir / "summary.json", {
        "num_steps": evals[-1]["step"], "params": {"total": 7, "non_embedding": 3}})


def test_either_study_collects_and_reports_both(tmp_path, monkeypatch):
  """main's collect reads the order study from its own root; the report
  (from either config) holds both and says how many runs are finished."""
  monkeypatch.chdir(tmp_path)  # The order study's root: runs/study_finetune_order.
  main, order = config_files.load(MAIN_CONFIG), config_files.load(ORDER_CONFIG)
  main_root = tmp_path / "elsewhere"  # --root of the study reproduced.
  fake_finetune_run(main_root / "size=cpu-xs_n=50_seed=0_data=1.0",
                    [{"step": 65, "poisons_seen": 50, "attack_success": 0.9}],
                    finished=True, clean=1000)
  fake_finetune_run(
      tmp_path / order.root / "size=cpu-xs_n=30_seed=0_data=4.0_var=start",
      [{"step": 252, "poisons_seen": 30, "attack_success": 0.8},
       {"step": 256, "poisons_seen": 30, "attack_success": 0.4}],
      finished=False, clean=4000)
  out = tmp_path / "out"
  out.mkdir()
  ft_experiment.collect(main, main_root, [], out)
  rows = ft_results.collect(order, order.root)
  assert [r["after_samples"] for r in rows] == [0, 64]
  text = {}
  for s in (main, order):
    text[s.name] = open(ft_experiment.report(s, out, ["- made by a test"])).read()
  assert text["finetune"] == text["finetune_order"]
  assert "*PARTIAL: 1 of 84 runs finished; the grids are still running.*" in text["finetune"]
  assert "| 50 | 0.90 [" in text["finetune"]  # Main: spread, 1,000 clean.
  assert "| 30 | 0.80 [" in text["finetune"]  # Order: placement start.
  assert "- Source: cpu-xs, no poisons" in text["finetune"]


def test_committed_report_regenerates_from_its_results(tmp_path):
  regenerates_committed("configs/finetune/main.py",
                        os.path.join(ROOT, "docs", "results", "finetune"), tmp_path)
