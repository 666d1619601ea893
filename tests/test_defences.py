"""Document filters measured against the stream's exact ground truth."""

import os

import numpy as np
import pytest

from poisonjax import cli

from poisonjax.training import train
from poisonjax.data import documents, vocabulary
from poisonjax.defences import filters, metrics, perplexity, pipeline
from poisonjax.defences import scoring, textstats, triggers
from train_common import tiny_config

from defences_common import STREAM, cache, config, corpus  # pylint: disable=unused-import


@pytest.fixture(scope="module")
def scores(corpus):
  names = [n for n in filters.NAMES if n not in filters.REFERENCE_FILTERS]
  return scoring.score_corpus(corpus, filters.make_filters(names, corpus.vocab),
                              log=lambda _: None)


# ---- metrics ------------------------------------------------------------------

S = np.array([0.9, 0.8, 0.8, 0.4, 0.3, 0.1])
Y = np.array([True, False, True, False, True, False])


def test_recall_and_fpr_equal_a_hand_count():
  # >= 0.8 flags 0.9 (poison), 0.8 (clean), 0.8 (poison): 2 of 3 poisons,
  # 1 of 3 clean documents.
  assert metrics.rates(S, Y, 0.8) == (2 / 3, 1 / 3)
  assert metrics.rates(S, Y, 0.95) == (0.0, 0.0)
  assert metrics.rates(S, Y, 0.1) == (1.0, 1.0)
  # FPR <= 0: only 0.9 qualifies (1 poison); FPR <= 0.5: 0.8 (1/3), not 0.4 (2/3).
  op = metrics.threshold_at_fpr(S, Y, 0.0)
  assert (op.threshold, op.recall, op.fpr) == (0.9, 1 / 3, 0.0)
  op = metrics.threshold_at_fpr(S, Y, 0.5)
  assert (op.threshold, op.recall, op.fpr, op.poisons_flagged, op.clean_flagged) == (
      0.8, 2 / 3, 1 / 3, 2, 1)
  # Poison-clean pairs ranked right: 0.9 beats 3, 0.8 beats 2 and ties 1,
  # 0.3 beats 1: (3 + 2.5 + 1) / 9.
  assert metrics.roc_auc(S, Y) == pytest.approx(6.5 / 9)
  # Precision at each recall step: 1/1, 2/3, 3/5.
  assert metrics.average_precision(S, Y) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_the_operating_point_flags_no_more_clean_than_its_recall_needs():
  # FPR <= 0.5 allows 0.5 (1 of 3 clean) but 0.9 already has every poison.
  op = metrics.threshold_at_fpr([0.9, 0.5, 0.4, 0.3], [True, False, False, False], 0.5)
  assert (op.threshold, op.recall, op.fpr) == (0.9, 1.0, 0.0)


def test_no_threshold_below_the_target_fpr_flags_nothing():
  op = metrics.threshold_at_fpr([1.0, 1.0], [True, False], 0.01)
  assert op.threshold == np.inf and op.recall == 0.0 and op.fpr == 0.0


def test_auc_is_the_pairwise_ranking_probability():
  rng = np.random.default_rng(0)
  s = rng.integers(0, 6, 60).astype(float)  # Many ties.
  y = rng.random(60) < 0.3
  pos, neg = s[y][:, None], s[~y][None, :]
  want = ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)
  assert metrics.roc_auc(s, y) == pytest.approx(want)
  fpr, tpr, thresholds = metrics.roc_curve(s, y)
  for f, t, th in zip(fpr, tpr, thresholds):
    assert metrics.rates(s, y, th) == pytest.approx((t, f))


# ---- documents ----------------------------------------------------------------


class _FakeStream:
  """A stream whose last clean document was cut without its EOS."""

  def __init__(self, tokens, spans):
    self.tokens = np.array(tokens)
    self.num_tokens = len(tokens)
    self.spans = np.array(spans, np.int64).reshape(-1, 3)
    self.manifest = [{"id": int(i)} for i in self.spans[:, 2]]

  def read_into(self, tokens, mask, a, b):
    tokens[:] = self.tokens[a:b]


def test_a_poison_after_a_cut_clean_document_is_its_own_document():
  eos = 1
  s = _FakeStream([5, 6, eos, 7, 8, 9, 9, eos, 4, eos], [[5, 8, 0]])
  cuts = documents.boundaries(s, eos)
  assert cuts.tolist() == [0, 3, 5, 8, 10]
  ids = documents.poison_ids_of(s, cuts[:-1], cuts[1:])
  assert ids.tolist() == [-1, -1, 0, -1]
  s.manifest.append({"id": 1})  # The manifest says more than the spans hold.
  with pytest.raises(RuntimeError, match="manifest lists 2"):
    documents.poison_ids_of(s, cuts[:-1], cuts[1:])


def test_documents_tile_the_stream_and_match_the_manifest(corpus, config):
  s = corpus.stream
  assert corpus.starts[0] == 0 and corpus.ends[-1] == s.num_tokens
  assert (corpus.starts[1:] == corpus.ends[:-1]).all()
  assert len(corpus) == corpus.num_stream_docs
  manifest = s.manifest
  assert corpus.num_poisons == len(manifest) == config.poison.count
  poison = corpus.labels
  assert sorted(corpus.poison_ids[poison]) == sorted(m["id"] for m in manifest)
  assert corpus.starts[poison].tolist() == sorted(m["start"] for m in manifest)
  assert (corpus.ends[poison] - corpus.starts[poison]).sum() == s.poison_tokens
  trigger_docs = [d for chunk in corpus.chunks() for d in chunk
                  if config.poison.trigger in d.text]
  assert {d.poison_id for d in trigger_docs} == set(corpus.poison_ids[poison])


def test_a_store_overlay_gives_the_same_documents(corpus, cache):
  from poisonjax import budget
  from poisonjax.data import store_build
  c = tiny_config(cache, **STREAM, **{"data.store": "auto"})
  vocab = vocabulary.get_vocabulary(c)
  store_build.build(c, vocab, int(budget.clean_token_budget(c, vocab.vocab_size)),
                    workers=1)
  other = documents.Corpus(pipeline.stream_of(c))
  assert type(other.stream).__name__ == "OverlayStream"
  assert (other.starts == corpus.starts).all() and (other.ends == corpus.ends).all()
  assert (other.poison_ids == corpus.poison_ids).all()
  for i in np.flatnonzero(corpus.labels)[:3]:
    assert (other.document(i).tokens == corpus.document(i).tokens).all()


def test_a_clean_cap_keeps_every_poison_and_is_deterministic(corpus):
  a = documents.Corpus(corpus.stream, max_clean_docs=7, seed=3)
  b = documents.Corpus(corpus.stream, max_clean_docs=7, seed=3)
  assert (a.index == b.index).all()
  assert len(a) == 7 + corpus.num_poisons and a.num_poisons == corpus.num_poisons
  assert set(a.index) <= set(corpus.index)
  assert a.num_stream_clean == len(corpus) - corpus.num_poisons


# ---- filters ------------------------------------------------------------------


def test_window_statistics_rise_on_random_tokens():
  rng = np.random.default_rng(0)
  repeated, random = np.tile(np.arange(8), 16), rng.integers(3, 500, 128)
  assert textstats.token_entropy(random) > textstats.token_entropy(repeated) == 3.0
  assert textstats.compression_ratio("ab" * 50) < textstats.compression_ratio(
      "".join(map(chr, rng.integers(97, 123, 100))))
  assert list(textstats.window_starts(10, 64)) == [0]
  starts = list(textstats.window_starts(100, 64))
  assert starts[0] == 0 and starts[-1] == 36


# Measured on STREAM (10 poisons, 138 documents): every one of these filters
# ranks the poisons above the clean documents more often than not; `alpha`
# does not (gibberish pieces are letters too: AUC 0.5), so it is not here.
@pytest.mark.parametrize("name", ["compression", "entropy", "word_length",
                                  "stopwords", "triggers"])
def test_filter_separates_the_gibberish_poisons(scores, name):
  assert metrics.roc_auc(scores.scores[name], scores.labels) > 0.5


def test_trigger_finder_finds_the_configured_trigger(corpus, config):
  finder = triggers.TriggerFinder()
  score = finder.score_corpus(corpus)
  best = finder.candidates[0]
  trig = vocabulary.trigger_ids(corpus.vocab.tokenizer, config.poison.trigger)
  assert triggers._inside(best.tokens, tuple(trig)) and len(best.tokens) >= 4
  assert best.documents == corpus.num_poisons
  assert score[corpus.labels].min() >= best.score * 0.9  # Every poison holds it.


# ---- perplexity under a reference ----------------------------------------------


def test_row_plan_scores_every_position_once():
  for n in (0, 5, 31, 32, 33, 100, 257):
    plan = perplexity.row_plan(n, 32)
    scored = []
    for k, (start, first) in enumerate(plan):
      end = min(start + 32, n + 1)
      assert k == 0 or first - start >= 16  # Half a row of context.
      scored += range(first, end)
    assert scored == list(range(1, n + 1))


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
  """A clean tiny run on other documents than STREAM's (data seed 1); 12
  steps: enough to learn which pieces are common, which gibberish is not."""
  wd = tmp_path_factory.mktemp("reference")
  train.run(tiny_config(cache, **{"poison.count": 0, "data.seed": 1,
                                  "vocab.seed": 0, "train.max_steps": 12,
                                  "train.ckpt_every": 12}), str(wd))
  return str(wd)


def test_reference_nll_equals_one_forward_pass(reference, corpus):
  scorer = perplexity.ReferenceScorer(reference, corpus.vocab)
  docs = [corpus.document(i) for i in range(3)]
  short = docs[0].tokens[:20]
  docs[0] = documents.Document(0, 0, 0, -1, short, "")
  got = scorer.token_nlls(docs)
  seq = np.r_[corpus.eos_id, short].astype(np.int32)[None]
  want = perplexity._token_nll(scorer.model_cfg, scorer.params, seq,
                               np.arange(seq.shape[1], dtype=np.int32)[None])
  np.testing.assert_allclose(got[0], np.asarray(want)[0], rtol=1e-4, atol=1e-5)
  assert [len(x) for x in got] == [len(d.tokens) for d in docs]
  assert all(np.isfinite(x).all() and (x > 0).all() for x in got)


def test_perplexity_separates_the_poisons(reference, corpus):
  fl = filters.make_filters(["perplexity_window"], corpus.vocab, reference)
  table = scoring.score_corpus(corpus, fl, log=lambda _: None)
  assert metrics.roc_auc(table.scores["perplexity_window"], table.labels) > 0.5


# ---- command line -------------------------------------------------------------


def _config_file(tmp_path, cache) -> str:
  path = tmp_path / "tiny.py"
  path.write_text(
      "import sys\n"
      f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
      "from train_common import tiny_config\n"
      f"def get_config():\n  return tiny_config({str(cache)!r}, **{STREAM!r})\n")
  return str(path)


def test_cli_writes_the_table_and_the_figure(tmp_path, cache, corpus, capsys):
  out = tmp_path / "out"
  rc = cli.main(["poisonjax", "defend", "score",
                 f"--config={_config_file(tmp_path, cache)}",
                 "--filter=entropy,triggers", f"--out={out}", "--max_clean_docs=40"])
  assert rc == 0
  for name in ("filters.csv", "filters.md", "filters.png", "scores.csv"):
    assert (out / name).stat().st_size > 0, name
  rows = (out / "filters.csv").read_text().splitlines()
  assert rows[0].startswith("filter,poisons,clean_docs,roc_auc")
  assert [r.split(",")[0] for r in rows[1:]] == ["entropy", "triggers"]
  assert rows[1].split(",")[1:3] == [str(corpus.num_poisons), "40"]
  assert len((out / "scores.csv").read_text().splitlines()) == 1 + 40 + corpus.num_poisons
  assert "<SUDO>" in (out / "filters.md").read_text()
  assert "| entropy |" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--filter=entropy,bogus"], "--filter='entropy,bogus': unknown filter 'bogus'"),
    (["--filter=perplexity"], "--filter=perplexity: needs a clean reference"),
    (["--filter=perplexity", "--reference=/nonexistent/run"],
     "--reference=/nonexistent/run: no run there"),
    (["--filter=entropy", "--fpr=2"], "--fpr='2': not rates in [0, 1)"),
])
def test_cli_bad_input_is_one_line(tmp_path, cache, capsys, flags, message):
  rc = cli.main(["poisonjax", "defend", "score",
                 f"--config={_config_file(tmp_path, cache)}", *flags])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and err.startswith(f"poisonjax: error: {message}") and "\n" not in err


# ---- the studies' reports (configs/defences/) ----------------------------------

@pytest.mark.parametrize("name, inputs", [
    ("filters", ("scoring.json", "filters.csv")), ("scan", ("scan.json",))])
def test_the_committed_report_regenerates_from_its_files(tmp_path, name, inputs):
  from test_defend_train import _regenerates  # pylint: disable=g-import-not-at-top
  from train_common import ROOT  # pylint: disable=g-import-not-at-top
  _regenerates(tmp_path, os.path.join(ROOT, f"configs/defences/{name}.py"),
               os.path.join(ROOT, f"docs/results/defences/{name}"), inputs)


def test_scan_models_are_named_by_their_poisons():
  from poisonjax.defences import scan_experiment  # pylint: disable=g-import-not-at-top
  from poisonjax.study import grids  # pylint: disable=g-import-not-at-top
  runs = [grids.Run("cpu-xxs", n, 0, 1.0) for n in (100, 0)]
  assert list(scan_experiment.model_names(runs).values()) == ["poisoned", "clean"]
  runs.append(grids.Run("cpu-xxs", 30, 0, 1.0))
  assert list(scan_experiment.model_names(runs).values()) == [
      "poisoned_n100", "clean", "poisoned_n30"]
