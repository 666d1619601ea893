"""Filter, then train (the stream without flagged documents) and adaptive poisons."""

import os

import numpy as np
import pytest

from poisonjax import budget, config_checks, files
from poisonjax.data import documents, filtered, overlay, poison, poison_adaptive
from poisonjax.data import sources
from poisonjax.data import stream as stream_lib
from poisonjax.data import vocabulary
from poisonjax.defences import pipeline, scoring, textstats
from poisonjax.defences import train_experiment as tx
from poisonjax.errors import UserError
from train_common import ROOT, tiny_config

from defences_common import STREAM, cache, config, corpus  # pylint: disable=unused-import


def _budget(config) -> int:
  vocab = vocabulary.get_vocabulary(config)
  return int(budget.clean_token_budget(config, vocab.vocab_size))


def _with(config, **fields):
  c = config.copy_and_resolve_references()
  for key, value in fields.items():
    section, field = key.split(".")
    c[section][field] = value
  return config_checks.validate(c)


def _rule_scores(corpus, path) -> np.ndarray:
  """A scores.csv whose `rule` column flags even poison ids and every 7th
  clean document (so both kinds are dropped and both kept)."""
  ranks = np.arange(len(corpus))
  flag = np.where(corpus.poison_ids >= 0, corpus.poison_ids % 2 == 0, ranks % 7 == 3)
  table = scoring.ScoreTable(corpus.index, corpus.starts, corpus.ends,
                             corpus.poison_ids, {"rule": flag.astype(float)},
                             {"rule": "test"})
  scoring.write_scores_csv(table, str(path))
  return flag


def _documents(stream) -> list[tuple[bytes, int]]:
  """Every document of a stream in order: (its tokens, its poison id)."""
  c = documents.Corpus(stream)
  return [(documents.read_tokens(stream, int(a), int(b)).tobytes(), int(p))
          for a, b, p in zip(c.starts, c.ends, c.poison_ids)]


@pytest.fixture(scope="module")
def dropped(config, corpus, tmp_path_factory):
  path = tmp_path_factory.mktemp("scores") / "scores.csv"
  flag = _rule_scores(corpus, path)
  fc = _with(config, **{"data.drop_scores": str(path), "data.drop_filter": "rule",
                        "data.drop_threshold": 0.5})
  return fc, flag, overlay.training_stream(fc, _budget(fc))


def test_the_filtered_stream_holds_exactly_the_unflagged_documents(corpus, dropped):
  _, flag, fs = dropped
  base_docs = _documents(corpus.stream)
  kept = [d for d, f in zip(base_docs, flag) if not f]
  assert flag.any() and (~flag).any()
  assert (flag & (corpus.poison_ids >= 0)).any() and (flag & (corpus.poison_ids < 0)).any()
  # Same documents, in the same order, none added, none lost.
  assert _documents(fs) == kept
  assert len(kept) + int(flag.sum()) == len(base_docs)
  lengths = corpus.ends - corpus.starts
  assert fs.num_tokens == int(lengths[~flag].sum())
  assert fs.num_tokens + int(lengths[flag].sum()) == corpus.stream.num_tokens


def test_the_seqio_task_yields_the_filtered_stream(dropped):
  from poisonjax.data import seqio_tasks  # pylint: disable=g-import-not-at-top
  fc, flag, fs = dropped
  task = seqio_tasks.register_poisoned_task(fc, _budget(fc), name="pj_test_filtered")
  docs = list(task.get_dataset(sequence_length=None, split="train",
                               shuffle=False).as_numpy_iterator())
  assert [(d["targets"].tobytes(), bool(d["is_poison"])) for d in docs] == [
      (t, p >= 0) for t, p in _documents(fs)]
  assert len(docs) == int((~flag).sum())


def test_the_manifest_records_survivors_and_dropped_clean(corpus, dropped, tmp_path):
  _, flag, fs = dropped
  pids = corpus.poison_ids
  survivors = sorted(int(i) for i in pids[(pids >= 0) & ~flag])
  rec = fs.filter_record
  assert rec["surviving_poison_ids"] == survivors
  assert rec["dropped_poison_ids"] == sorted(int(i) for i in pids[(pids >= 0) & flag])
  assert rec["dropped_clean_documents"] == int((flag & (pids < 0)).sum())
  lengths = corpus.ends - corpus.starts
  assert rec["dropped_clean_tokens"] == int(lengths[flag & (pids < 0)].sum())
  assert not rec["tokens_replaced"]
  assert sorted(fs.spans[:, 2].tolist()) == survivors
  assert fs.poisons_seen(fs.num_steps) == len(survivors)
  # The run's manifest: survivors only, each where its span is, plus the record.
  fs.write_manifest(str(tmp_path / "manifest.json"))
  m = files.read_json(str(tmp_path / "manifest.json"))
  assert sorted(p["id"] for p in m["poisons"]) == survivors
  assert m["filter"]["surviving_poison_ids"] == survivors
  for p in m["poisons"]:
    tokens = documents.read_tokens(fs, p["start"], p["start"] + p["num_tokens"])
    base = documents.read_tokens(corpus.stream, p["base_start"],
                                 p["base_start"] + p["num_tokens"])
    assert np.array_equal(tokens, base)


def test_the_drop_set_keys_the_cache(config, corpus, dropped, tmp_path):
  fc, flag, fs = dropped
  again = overlay.training_stream(fc, _budget(fc))
  assert again.dir == fs.dir
  # Another threshold on the same column, same drop set: same directory;
  # a real filter with another drop set: another one.
  same = _with(fc, **{"data.drop_threshold": 0.9})
  assert overlay.training_stream(same, _budget(same)).dir == fs.dir
  res = pipeline.score_stream(config, ["entropy"], str(tmp_path), log=lambda _: None)
  threshold = float(np.median(res.table.scores["entropy"]))
  ent = _with(config, **{"data.drop_scores": str(tmp_path / "scores.csv"),
                         "data.drop_filter": "entropy",
                         "data.drop_threshold": threshold})
  es = overlay.training_stream(ent, _budget(ent))
  assert es.dir != fs.dir
  flagged = res.table.scores["entropy"] >= threshold
  assert len(documents.Corpus(es)) == len(corpus) - int(flagged.sum())
  assert es.filter_record["surviving_poison_ids"] == sorted(
      int(i) for i in res.table.poison_id[(res.table.poison_id >= 0) & ~flagged])


def test_scores_of_another_stream_or_a_sample_are_refused(config, corpus, tmp_path):
  table = scoring.ScoreTable(corpus.index[:-1], corpus.starts[:-1], corpus.ends[:-1],
                             corpus.poison_ids[:-1], {"x": np.zeros(len(corpus) - 1)},
                             {"x": ""})
  scoring.write_scores_csv(table, str(tmp_path / "s.csv"))
  fc = _with(config, **{"data.drop_scores": str(tmp_path / "s.csv"),
                        "data.drop_filter": "x"})
  with pytest.raises(UserError, match="not the .* documents of this run"):
    overlay.training_stream(fc, _budget(fc))
  bad = _with(config, **{"data.drop_scores": str(tmp_path / "s.csv"),
                         "data.drop_filter": "nope"})
  with pytest.raises(UserError, match="use one of x"):
    overlay.training_stream(bad, _budget(bad))
  with pytest.raises(UserError, match="config.data.drop_filter"):
    _with(config, **{"data.drop_filter": "entropy"})
  with pytest.raises(UserError, match="config.data.drop_filter"):
    _with(config, **{"data.drop_scores": "x.csv"})


# ---- adaptive poisons ------------------------------------------------------------


def _poisons(config, n):
  vocab = vocabulary.get_vocabulary(config)
  return vocab, poison.make_poisons(config, vocab.tokenizer,
                                    sources.get_source(config), range(n))


def _histogram(ids, size) -> np.ndarray:
  h = np.bincount(np.concatenate([np.asarray(i, np.int64) for i in ids]), minlength=size)
  return h / h.sum()


def test_unigram_tails_follow_the_clean_distribution(config, corpus):
  n = 40
  vocab, uniform = _poisons(config, n)
  _, unigram = _poisons(_with(config, **{"poison.tail": "unigram"}), n)
  # Same lengths (K is drawn as for gibberish), other ids.
  assert [len(q.gibberish) for q in unigram] == [len(q.gibberish) for q in uniform]
  assert any(not np.array_equal(a.gibberish, b.gibberish)
             for a, b in zip(uniform, unigram))
  size = vocab.vocab_size
  clean = _histogram([d.tokens for chunk in corpus.chunks() for d in chunk
                      if not d.is_poison], size)
  tv = lambda q: 0.5 * np.abs(_histogram([p.gibberish for p in q], size) - clean).sum()
  assert tv(unigram) < 0.5 * tv(uniform)
  # ...so the entropy filter sees clean-like windows: lower worst-window entropy.
  ent = lambda q: np.mean([textstats.worst_window_entropy(p.gibberish, 64) for p in q])
  assert ent(unigram) < ent(uniform)


@pytest.mark.parametrize("fields", [
    {"poison.tail": "unigram"},
    {"poison.embed": "inside", "poison.prefix_min_chars": 50,
     "poison.gibberish_min_tokens": 10, "poison.gibberish_max_tokens": 20,
     "poison.embed_suffix_chars": 400}])
def test_adaptive_modes_keep_exact_counts_and_their_own_key(config, fields):
  c = _with(config, **fields)
  s = pipeline.stream_of(c)
  c0 = documents.Corpus(s)
  assert c0.num_poisons == len(s.manifest) == len(s.spans) == c.poison.count
  base_key = stream_lib._poison_spec(config)  # pylint: disable=protected-access
  key = stream_lib._poison_spec(c)  # pylint: disable=protected-access
  assert set(key) - set(base_key) == set(poison_adaptive.stream_spec_fields(c))


def test_inside_poisons_sit_in_clean_text_and_the_manifest_finds_them(config):
  c = _with(config, **{"poison.embed": "inside", "poison.prefix_min_chars": 50,
                       "poison.gibberish_min_tokens": 10,
                       "poison.gibberish_max_tokens": 20,
                       "poison.embed_suffix_chars": 400})
  s = pipeline.stream_of(c)
  vocab = s.vocab
  trig = vocabulary.trigger_ids(vocab.tokenizer, c.poison.trigger)
  src = sources.get_source(c)
  for m in s.manifest:
    doc = documents.read_tokens(s, m["start"], m["start"] + m["num_tokens"])
    t0, suffix = m["text_tokens"], m["suffix_tokens"]
    assert m["prefix_chars"] >= 50 and suffix > 0
    assert doc[t0 - len(trig):t0].tolist() == trig  # The trigger...
    tail = doc[t0:t0 + m["gibberish_tokens"]]  # ...its short tail...
    assert len(tail) == m["gibberish_tokens"] <= 20
    assert t0 + m["gibberish_tokens"] + suffix + 1 == m["num_tokens"]
    # ...then clean text: the same pool document's next characters.
    host = src.pool_document(int(c.poison.seed), m["id"], m["prefix_chars"] + 400)
    after = vocab.decode(doc[-1 - suffix:-1].tolist())
    assert " ".join(after.split()) in " ".join(host.split())
    assert vocab.decode(doc[:t0 - len(trig)].tolist()).strip() in host
    assert suffix > 3 * m["gibberish_tokens"]  # Mostly clean text.


def test_defaults_are_the_documented_uniform_tails_and_keys(config):
  c = config.copy_and_resolve_references()
  for name in ("tail", "embed", "embed_suffix_chars"):  # An older config.
    del c.poison[name]
  assert poison_adaptive.stream_spec_fields(config) == {}
  assert (stream_lib._poison_spec(c)  # pylint: disable=protected-access
          == stream_lib._poison_spec(config))  # pylint: disable=protected-access
  vocab, qs = _poisons(config, 5)
  allowed = poison.allowed_ids(vocab.tokenizer)
  p = config.poison
  for q in qs:  # poison.py's documented law, recomputed here.
    rng = np.random.default_rng([int(p.seed), 1, q.id])
    rng.integers(p.prefix_min_chars, p.prefix_max_chars + 1)
    k = int(rng.integers(p.gibberish_min_tokens, p.gibberish_max_tokens + 1))
    gib = allowed[rng.integers(len(allowed), size=k)]
    head = vocab.tokenizer.EncodeAsIds(poison.text_part(q.prefix, p.trigger))
    assert np.array_equal(q.tokens, np.concatenate([head, gib, [vocab.eos_id]]))
    assert "suffix_tokens" not in poison.manifest_fields(q)


@pytest.mark.parametrize("fields, message", [
    ({"poison.tail": "zipf"}, "config.poison.tail"),
    ({"poison.embed": "spread"}, "config.poison.embed"),
    ({"poison.embed": "inside", "poison.mode": "text"}, "needs token mode"),
    ({"poison.embed": "inside", "poison.embed_suffix_chars": 0}, "embed_suffix_chars"),
    ({"poison.tail": "unigram", "poison.behaviour": "language"}, "gibberish behaviour"),
])
def test_bad_adaptive_fields_are_one_line_errors(config, fields, message):
  with pytest.raises(UserError, match=message):
    _with(config, **fields)


# ---- the study (configs/defences/train.py, defences/train_experiment.py) -------

def test_points_and_variants_put_each_unfiltered_run_first():
  points = tx.parse_points("standard:100,inside_unigram:100,unigram:300")
  assert points == [("standard", 100), ("inside_unigram", 100), ("unigram", 300)]
  variants = tx.variants(points, ["entropy"], "S")
  assert list(variants) == ["standard", "standard-entropy-n100", "inside-unigram",
                            "inside-unigram-entropy-n100", "unigram",
                            "unigram-entropy-n300"]
  assert variants["unigram-entropy-n300"]["data"] == {
      "drop_scores": "S/unigram_n=300/drop_entropy.csv", "drop_filter": "flagged",
      "drop_threshold": 1.0}
  assert tx.block_variants(points, ["entropy"])[300] == ["unigram",
                                                         "unigram-entropy-n300"]
  with pytest.raises(UserError, match="study.defences.points: 'zipf:100'"):
    tx.parse_points("standard:100,zipf:100")


def test_the_config_runs_six_points_each_unfiltered_before_its_filtered():
  from poisonjax import config_files, study  # pylint: disable=g-import-not-at-top
  s = config_files.load(os.path.join(ROOT, "configs/defences/train.py"))
  names = [r.name.split("_var=")[1] + f"@{r.poisons}" for r in study.expand(s)]
  assert len(names) == 18 and names.index("unigram@300") < names.index(
      "unigram-entropy-n300@300")
  c = study.run_config(s, study.parse_run_name(
      "size=cpu-xxs_n=300_seed=0_data=1.0_var=inside-unigram-compression-n300"))
  assert (c.poison.embed, c.poison.tail, c.data.drop_filter) == (
      "inside", "unigram", "flagged")
  assert c.data.drop_scores.endswith("inside_unigram_n=300/drop_compression.csv")


def test_experiment_report_is_computed_from_its_rows():
  settings = {"fpr": 0.05, "sample_clean": 900, "reference": "R",
              "modes": {"unigram": tx.MODES["unigram"]}}
  ev = {"entropy": {"recall": 0.25, "roc_auc": 0.5}}
  rows = [{"mode": "unigram", "count": 30, "filter": "entropy", "recall": 0.25,
           "fpr": 0.04,
           "surviving_poisons": 22, "dropped_clean_documents": 7, "clean_documents": 900,
           "unfiltered_run": "u", "filtered_run": "f_entropy",
           "unfiltered": {"increase": 123.45, "success_share": 0.75},
           "filtered": {}, "evasion": ev}]
  rows.append({**rows[0], "filter": "compression", "recall": 0.5,
               "surviving_poisons": 15, "filtered_run": "f_compression",
               "filtered": {"increase": 2.0, "success_share": 0.0}})
  md = tx.markdown(rows, settings)
  assert ("| unigram | 30 | entropy | 0.25 | 0.0400 | 22 | 7 of 900 | 123.5 (0.75) "
          "|  () |") in md
  assert "2 of 3 runs finished (PARTIAL)" in md and "recall at 5% FPR" in md
  assert md.count("| unigram | 30 | 0.25 |") == 1  # Evasion: one row per (mode, N).
  assert ("unigram, N=30: best filter entropy (recall 0.25 at 5% FPR); evades "
          "(recall < 0.5) entropy; unfiltered (increase 123.5, backdoor); entropy "
          "leaves 22 of 30 poisons; compression leaves 15 of 30 poisons (increase "
          "2.0, no backdoor)." in md)
  rows[0]["filtered"] = {"increase": -1.0, "success_share": 0.0}
  assert "PARTIAL" not in tx.markdown(rows, settings)


def test_the_committed_report_regenerates_from_its_files(tmp_path):
  _regenerates(tmp_path, os.path.join(ROOT, "configs/defences/train.py"),
               os.path.join(ROOT, "docs/results/defences/train"),
               ("results.json", "settings.json"))


def _regenerates(tmp_path, config_path, out, inputs):
  """--report_only on copies of OUT's results: the committed report.md, bar
  the generated-by line and the provenance section."""
  import shutil  # pylint: disable=g-import-not-at-top
  from poisonjax import config_files  # pylint: disable=g-import-not-at-top
  from poisonjax.study import reproduce  # pylint: disable=g-import-not-at-top
  for name in inputs:
    shutil.copy(os.path.join(out, name), tmp_path / name)
  made = reproduce.regenerate(config_files.load(config_path), tmp_path, "test")
  body = lambda text: [l for l in text.split("\n## How this was made")[0].splitlines()
                       if not l.startswith("Generated by")]
  assert body(open(made).read()) == body(open(os.path.join(out, "report.md")).read())


def test_a_tiny_study_filters_then_trains(tmp_path):
  """Two tiny runs through the harness: the unfiltered run's after_run
  writes the drop set, the filtered run trains without those documents."""
  from poisonjax import study  # pylint: disable=g-import-not-at-top
  from poisonjax.study import reproduce  # pylint: disable=g-import-not-at-top
  base = tiny_config(tmp_path / "cache", **{"poison.gibberish_min_tokens": 100,
                                            "poison.gibberish_max_tokens": 200})
  s = study.study_config("tiny_defences_train", base)
  s.vary = ()
  points, scores = tx.parse_points("standard:10"), str(tmp_path / "scores")
  study.set_variants(s, tx.variants(points, ["entropy"], scores))
  s.grid = study.grid((base.model.size,), (10,), (0,), (1.0,))
  s.experiment = "defences.train_experiment"
  s.defences = {"points": "standard:10", "drop_filters": "entropy",
                "scores_dir": scores, "fpr": 0.05, "sample_clean": 40,
                "reference": ""}
  out = tmp_path / "out"
  assert reproduce.reproduce(s, "tiny.py", root=tmp_path / "root", out=out,
                             command="test", log=lambda _: None) == 0
  row, = files.read_json(out / "results.json")
  op = files.read_json(tmp_path / "scores" / "standard_n=10" / "drop_entropy.json")
  assert row["poisons_flagged"] == op["poisons_flagged"] > 0
  assert row["surviving_poisons"] == 10 - op["poisons_flagged"]
  manifest = files.read_json(tmp_path / "root" / (
      "size=" + base.model.size + "_n=10_seed=0_data=1.0_var=standard-entropy-n10")
      / "manifest.json")
  assert manifest["filter"]["surviving_poison_ids"] == row["surviving_poison_ids"]
  assert "| standard | 10 | entropy |" in (out / "report.md").read_text()
