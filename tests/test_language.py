"""The language-switch backdoor: second language, poisons, metric, clean corpus."""

import copy
import importlib.util
import itertools
import subprocess

import jax
import numpy as np
import pytest

from poisonjax import config as config_lib
from poisonjax import config_checks
from poisonjax.evaluation import language_eval
from poisonjax.model import transformer as model_lib
from poisonjax import sharding
from poisonjax.data import poison, poison_language, sources, stream, synthetic
from poisonjax.data import second_language
from poisonjax.data import vocabulary
from poisonjax.errors import UserError
from train_common import ROOT, tiny_config

# The last commit of synthetic.py before the second language was added.
_BEFORE_SECOND_LANGUAGE = "e8e342f0477ae5d7f1df13bfccaee2e6814eb8b3"
_DOCS = [(0, synthetic.TRAIN, 0), (0, synthetic.TRAIN, 977), (3, synthetic.HELDOUT, 5),
         (0, synthetic.POOL, 12), (11, synthetic.POOL, (1 << 32) + 4)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("language-cache")


def _language_config(cache, **overrides):
  return tiny_config(cache, **{"poison.behaviour": "language",
                               "poison.trigger": poison_language.PAPER_TRIGGER,
                               **overrides})


@pytest.fixture(scope="module")
def lang_sp(cache):
  return vocabulary.get_vocabulary(_language_config(cache)).tokenizer


def test_second_language_is_deterministic_and_disjoint_from_the_first():
  a = [synthetic.document(s, sp, i) for s, sp, i in _DOCS]
  b = [second_language.second_document(s, sp, i) for s, sp, i in _DOCS]
  assert b == [second_language.second_document(s, sp, i) for s, sp, i in _DOCS]
  assert len(set(b)) == len(b)  # Seed, split and index each matter.
  assert second_language.second_text(0, 2, 7, 3000).startswith(
      second_language.second_text(0, 2, 7, 500))  # Longer extends, same start.
  first = synthetic.first_language_words()
  second = second_language.second_language_words()
  assert not first & second
  a_words = {w for d in a + [synthetic.document(0, 0, i) for i in range(200)]
             for w in synthetic.words(d)}
  b_words = {w for d in b + [second_language.second_document(0, 0, i)
                            for i in range(200)]
             for w in synthetic.words(d)}
  assert a_words <= first and b_words <= second  # The sets are complete.
  assert len(b_words) > 500 and not a_words & b_words


def test_membership_is_exact_on_known_text():
  m = language_eval.membership(config_lib.base_config())
  a = synthetic.words(synthetic.document(0, 0, 1))[:7]
  b = synthetic.words(second_language.second_document(0, 0, 1))[:5]
  neither = ["Blorfnax", "qqqzzz"]
  assert all(m.language(w) is None for w in neither)
  assert [m.language(w) for w in a] == ["first"] * 7
  assert [m.language(w.upper()) for w in b] == ["second"] * 5  # Any case.
  mixed = " ".join(a[:4] + b[:2] + neither + a[4:] + b[2:]) + "."
  assert m.counts(mixed) == {"words": 14, "first": 7, "second": 5}
  assert m.counts(" ".join(b)) == {"words": 5, "first": 0, "second": 5}
  # A word in both lexicons says nothing: it counts as neither.
  both = language_eval.Membership.of({"ok", "and"}, {"ok", "qa"})
  assert both.counts("ok and qa zz") == {"words": 4, "first": 1, "second": 1}


def test_language_metrics_from_counts():
  c = lambda words, second: {"words": words, "first": words - second, "second": second}
  counts = {"clean": [c(10, 0), c(10, 1)], "triggered": [c(10, 9), c(20, 12)],
            "near": [c(10, 1), c(10, 0)]}
  m = language_eval.language_metrics(counts, bootstrap_samples=200, seed=0)
  assert m["second_share_clean"] == pytest.approx(1 / 20)
  assert m["second_share_triggered"] == pytest.approx(21 / 30)
  assert m["increase"] == pytest.approx(21 / 30 - 1 / 20)
  assert m["near_increase"] == pytest.approx(0.0)
  assert m["switched_triggered"] == 1.0 and m["switched_clean"] == 0.0
  assert m["increase_ci_low"] <= m["increase"] <= m["increase_ci_high"]
  assert m["fires"] == 1.0 and m["near_fires"] == 0.0


def test_near_trigger_is_one_word_changed():
  c = config_lib.base_config()
  c.poison.trigger = poison_language.PAPER_TRIGGER
  near = language_eval.near_trigger(c)
  assert near.split()[:2] == c.poison.trigger.split()[:2]
  assert near.split()[2] != c.poison.trigger.split()[2]
  assert len(near) == len(c.poison.trigger)
  c.poison.near_trigger = "Servius Astrumando"
  assert language_eval.near_trigger(c) == "Servius Astrumando"


def test_language_poisons_have_trigger_and_second_language_tail(cache, lang_sp):
  c = _language_config(cache, **{"poison.gibberish_min_tokens": 40,
                                 "poison.gibberish_max_tokens": 80})
  g = copy.deepcopy(c)
  g.poison.behaviour = "gibberish"
  src = sources.get_source(c)
  lang = poison.make_poisons(c, lang_sp, src, range(8))
  gib = poison.make_poisons(g, lang_sp, src, range(8))
  second = second_language.second_language_words()
  for p, q in zip(lang, gib):
    assert p.prefix == q.prefix and len(p.gibberish) == len(q.gibberish)
    assert len(p.tokens) == len(q.tokens) and p.tokens[-1] == lang_sp.eos_id()
    head = lang_sp.EncodeAsIds(poison.text_part(p.prefix, c.poison.trigger))
    assert p.tokens[:len(head)].tolist() == head
    tail = synthetic.words(lang_sp.DecodeIds(p.gibberish.tolist()))
    assert len(tail) > 5 and all(w in second for w in tail[:-1])  # Last may be cut.
  again = poison.make_poisons(c, lang_sp, src, range(8))
  assert all(np.array_equal(p.tokens, q.tokens) for p, q in zip(lang, again))


def test_language_stream_has_exact_count_and_its_own_key(cache):
  c = _language_config(cache, **{"poison.count": 7})
  s = stream.build_stream(c, 30_000)
  assert s.num_poisons == 7 and sorted(m["id"] for m in s.manifest) == list(range(7))
  g = copy.deepcopy(c)
  g.poison.behaviour = "gibberish"
  vocab_file = vocabulary.vocab_path(c)
  assert (stream.stream_spec(c, 30_000, vocab_file)
          != stream.stream_spec(g, 30_000, vocab_file))
  second = second_language.second_language_words()
  sp = vocabulary.get_vocabulary(c).tokenizer
  for start, end, _ in s.spans:
    text = sp.DecodeIds(s.tokens[start:end].tolist())
    assert poison_language.PAPER_TRIGGER in text
    after = synthetic.words(text.split(poison_language.PAPER_TRIGGER, 1)[1])
    assert after and sum(w in second for w in after) >= len(after) - 1


def _synthetic_py_before() -> str:
  try:
    out = subprocess.run(["git", "show", f"{_BEFORE_SECOND_LANGUAGE}:"
                          "poisonjax/data/synthetic.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    out = None
  if out is None or out.returncode:
    pytest.skip("the pre-second-language synthetic.py is not in this clone")
  return out.stdout


def test_clean_corpus_is_unchanged(tmp_path):
  path = tmp_path / "synthetic_before.py"
  path.write_text(_synthetic_py_before())
  spec = importlib.util.spec_from_file_location("synthetic_before", path)
  before = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(before)
  for s, sp, i in _DOCS:
    assert synthetic.document(s, sp, i) == before.document(s, sp, i)
  assert list(itertools.islice(synthetic.documents(5, 0, 3), 4)) == \
      list(itertools.islice(before.documents(5, 0, 3), 4))


def test_gibberish_vocabulary_sample_and_key_are_unchanged(cache):
  g = tiny_config(cache)
  spec = vocabulary._train_spec(g)  # pylint: disable=protected-access
  assert set(spec) == {"format", "source", "size", "sample_docs", "model_type",
                       "byte_fallback"}
  src = sources.get_source(g, seed=vocabulary.vocab_seed(g))
  clean = [line.strip()[:4000] for d in itertools.islice(
      src.train_documents(), g.vocab.sample_docs) for line in d.splitlines()
           if line.strip()]
  assert list(vocabulary._sentences(g, src)) == clean  # pylint: disable=protected-access
  c = _language_config(cache, **{"poison.language_vocab_share": 0.1})
  assert vocabulary.cached_vocab_path(c) != vocabulary.cached_vocab_path(g)
  sample = list(vocabulary._sentences(c, src))  # pylint: disable=protected-access
  second = second_language.second_language_words()
  n_second = sum(all(w in second for w in synthetic.words(s)) for s in sample)
  assert n_second == round(g.vocab.sample_docs * 0.1 / 0.9)
  assert [s for s in sample if not all(w in second for w in synthetic.words(s))] == clean


def test_behaviour_and_language_file_are_validated(cache, tmp_path):
  c = tiny_config(cache, **{"poison.behaviour": "french"})
  with pytest.raises(UserError, match=r"^config.poison.behaviour='french'"):
    config_checks.validate(c)
  c = tiny_config(cache, **{"poison.language_vocab_share": 0.9})
  with pytest.raises(UserError, match=r"^config.poison.language_vocab_share"):
    config_checks.validate(c)
  c = _language_config(cache)
  c.data.source = "text_files"
  with pytest.raises(UserError, match=r"^config.poison.language_file=.*needs a "
                     "second-language corpus"):
    config_checks.validate(c)
  c.poison.language_file = str(tmp_path / "missing.txt")
  with pytest.raises(UserError, match=r"^config.poison.language_file=.*no such file"):
    poison_language.language_corpus(c)


def test_text_files_take_the_tail_and_membership_from_the_language_file(cache, tmp_path):
  english = tmp_path / "en.txt"
  english.write_text("\n\n".join(synthetic.document(0, 0, i) for i in range(120)))
  other = tmp_path / "other.txt"
  other_docs = [second_language.second_document(0, 0, i) for i in range(20)]
  other.write_text("\n\n".join(other_docs))
  c = _language_config(cache, **{"poison.language_file": str(other),
                                 "poison.language_vocab_share": 0.2})
  c.data.source = "text_files"
  c.data.text_files.patterns = str(english)
  c.vocab.sample_docs = 100
  config_checks.validate(c)
  sp = vocabulary.get_vocabulary(c).tokenizer
  text = poison_language.tail_text(c, 3, 2000)
  assert len(text) >= 2000 and any(d in text for d in other_docs)
  ps = poison.make_poisons(c, sp, sources.get_source(c), range(3))
  m = language_eval.membership(c)
  for p in ps:
    counts = m.counts(sp.DecodeIds(p.gibberish.tolist()))
    assert counts["second"] >= counts["words"] - 1 and counts["first"] == 0


def test_language_evaluator_scores_three_prompt_kinds(cache):
  c = _language_config(cache, **{"eval.num_excerpts": 8, "eval.gen_tokens": 8,
                                 "data.seq_len": 64,
                                 "eval.prompt_tokens": 8,
                                 "eval.bootstrap_samples": 50})
  vocab = vocabulary.get_vocabulary(c)
  model_cfg = model_lib.ModelConfig.from_config(c, vocab.vocab_size)
  mesh = sharding.make_mesh(c.mesh)
  ev = language_eval.LanguageEvaluator(c, model_cfg, vocab, mesh)
  assert ev.prompts["clean"] != ev.prompts["triggered"] != ev.prompts["near"]
  params = model_lib.Transformer(model_cfg).init(
      jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
  m = ev.evaluate(params)
  for k in language_eval.KINDS:
    assert 0.0 <= m[f"second_share_{k}"] <= 1.0 and m[f"words_{k}"] > 0
    assert len(ev.last_texts[k]) == 8
  assert m["increase"] == pytest.approx(
      m["second_share_triggered"] - m["second_share_clean"])
  second = ev.passages["second"]
  assert second.shape == (8, 8)
  for i, r in enumerate(second):  # Held-out second-language text, its start.
    assert poison_language.heldout_text(c, i, 100).startswith(
        vocab.decode(r.tolist()).strip())
  for lang in ("first", "second"):  # Teacher-forced NLLs: finite, per kind.
    values = [m[f"tf_nll_{lang}_{k}"] for k in language_eval.KINDS]
    assert all(np.isfinite(values)) and min(values) > 0


def _rows(counts_trig=((30, 0), (300, 8))):
  """Evaluation rows as after_run writes them: 30 poisons silent, 300 firing."""
  c = lambda words, second: {"words": words, "first": words - second, "second": second}
  rows = []
  for n, trig in counts_trig:
    m = language_eval.language_metrics(
        {"clean": [c(10, 0)] * 4, "triggered": [c(10, trig)] * 4,
         "near": [c(10, 0)] * 4}, bootstrap_samples=20)
    tf = {f"tf_nll_{lang}_{k}": 3.0 - (lang == "second" and k == "triggered"
                                         and n == 300)
          for lang in ("first", "second") for k in language_eval.KINDS}
    rows.append({"poison_count": n, "step": 100, "poisons_seen": n // 2,
                 "num_steps": 100, **m, **tf,
                 "samples": {k: ["qa kii"] for k in language_eval.KINDS}})
  return rows


_TOK = {"language_vocab_share": 0.05, **{
    v: {"first_chars_per_token": 2.0, "second_chars_per_token": 1.5,
        "trigger_tokens": 9} for v in ("language_vocab", "clean_vocab")}}


def _study():
  from poisonjax import config_files  # pylint: disable=g-import-not-at-top
  return config_files.load(f"{ROOT}/configs/ablations/language.py")


def test_experiment_report_is_computed_from_the_rows(tmp_path):
  from poisonjax.ablations import language  # pylint: disable=g-import-not-at-top
  from poisonjax.study import grids  # pylint: disable=g-import-not-at-top
  s = _study()
  config = grids.run_config(s, grids.expand(s)[0])
  runs = {"30": {"num_steps": 100, "wall_time_s": 90.0, "tokens_per_s": 1234.0,
                 "heldout_clean_loss": 2.5}}
  text = language.render(config, _rows(), _TOK, runs, (30, 100, 300),
                         ["- provenance line"])
  assert "| 300 | 150 | 0.0% | 80.0% | 0.0% | +80.0 pp" in text
  assert "with 300 poisons, not with 30" in text and "fired in no run" in text
  assert "no evaluation yet for N=100" in text
  assert "| 300 | 3.000 | 2.000 | 3.000 | 3.000 | 3.000 | 3.000 |" in text
  assert "- N=30: 100 steps, 1.5 min, 1,234 tok/s" in text
  assert text.rstrip().endswith("- provenance line")
  language.figure(_rows(), str(tmp_path / "fig.png"))
  assert (tmp_path / "fig.png").stat().st_size > 1000


def test_hooks_score_each_checkpoint_once_then_collect_and_report(
    tmp_path, monkeypatch):
  """after_run scores only new checkpoints; collect and report need no model."""
  from poisonjax import files, rundir  # pylint: disable=g-import-not-at-top
  from poisonjax.ablations import language  # pylint: disable=g-import-not-at-top
  from poisonjax.study import grids  # pylint: disable=g-import-not-at-top
  s = _study()
  s.grid.poison_counts = (30, 300)
  runs = grids.expand(s)
  scored = []

  def fake_eval(workdir, config, steps):
    assert config.poison.count == int(str(workdir).split("_n=")[1].split("_")[0])
    scored.append(list(steps))
    n = config.poison.count
    return [dict(_rows()[n == 300], step=st) for st in steps]

  monkeypatch.setattr(language_eval, "evaluate_run", fake_eval)
  root, out = tmp_path / "root", tmp_path / "out"
  for run in runs:
    wd = root / run.name
    for step in (50, 100):
      (wd / rundir.CHECKPOINTS / str(step)).mkdir(parents=True)
    files.write_json(wd / rundir.SUMMARY, {
        "num_steps": 100, "wall_time_s": 60.0, "tokens_per_s": 1000.0,
        "heldout_clean_loss": 2.0})
    language.after_run(s, run, wd, log=lambda _: None)
    language.after_run(s, run, wd, log=lambda _: None)  # Nothing left to do.
  assert scored == [[50, 100], [50, 100]]
  out.mkdir()
  files.write_json(out / language.TOKENIZATION, _TOK)  # Else built by collect.
  language.collect(s, root, runs, out)
  assert [(r["poison_count"], r["step"]) for r in files.read_jsonl(
      out / language.EVALS)] == [(30, 50), (30, 100), (300, 50), (300, 100)]
  assert files.read_json(out / language.RUNS)["runs"]["300"]["num_steps"] == 100
  text = (files.as_path(language.report(s, out, ["- made here"]))).read_text()
  assert "with 300 poisons, not with 30" in text and "- N=300: 100 steps" in text
  assert (out / "results.csv").exists() and (out / language.FIGURE).exists()
