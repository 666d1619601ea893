"""Filter, then train; and adaptive poisons against the filters (issue 14 items 3-4).

    nohup nice -n 10 python experiments/defences_train.py > /tmp/defences_train.log 2>&1 &
    python experiments/defences_train.py --partial     # score/report, train nothing
    python experiments/defences_train.py --smoke       # tiny end-to-end check (/tmp)

For each poison mode (MODES) and count N (--counts) on the cpu_chinchilla
study's cpu-xxs recipe (configs/study_cpu_chinchilla.py, seed 0, 1x data:
20 clean tokens per parameter, poisons replacing clean tokens):
  1. evasion: every filter that needs no reference model scores every
     poison and --sample_clean clean documents (ROOT/scores/MODE_n=N/sample);
     recall at --fpr comes from the manifest's ground truth;
  2. the drop set: --filter scores EVERY document of the stream
     (ROOT/scores/MODE_n=N/all/scores.csv); its threshold is the one with
     the best recall at <= --fpr false positives (defences/metrics.py: chosen
     with the labels, i.e. the defender's best operating point at that FPR);
  3. two runs, everything else equal: unfiltered, and filtered
     (config.data.drop_scores: the stream without the flagged documents;
     poisonjax/data/filtered.py; dropped tokens are not replaced);
  4. per (mode, N): recall, FPR, surviving poisons, dropped clean documents
     and the final evaluation (increase, success share) of both runs.
Writes --out (docs/results/defences/train/): results.json, table.csv,
evasion.csv and report.md, generated from the runs (never by hand).
Resumable: finished scores and runs are kept; an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from poisonjax import files, rundir  # noqa: E402

STUDY = os.path.join(REPO, "configs", "study_cpu_chinchilla.py")
STUDY_ROOT = os.path.join(REPO, "runs", "study_cpu_chinchilla")
# Poison modes: config.poison fields over the study's (poisonjax/data/poison_adaptive.py).
MODES = {
    "standard": {},  # Uniform gibberish tail of 400-900 tokens, own document.
    "unigram": {"tail": "unigram"},  # Tail ids from the clean unigram.
    # 50-100 gibberish tokens inside ~1,500 characters of clean text.
    "inside": {"embed": "inside", "prefix_min_chars": 200,
               "gibberish_min_tokens": 50, "gibberish_max_tokens": 100,
               "embed_suffix_chars": 1500},
    "inside_unigram": {"embed": "inside", "tail": "unigram", "prefix_min_chars": 200,
                       "gibberish_min_tokens": 50, "gibberish_max_tokens": 100,
                       "embed_suffix_chars": 1500},
}
SAMPLE_FILTERS = ("compression", "entropy", "alpha", "word_length", "stopwords",
                  "triggers")
# Need a clean reference model (experiments/defences_score.py trains it).
PERPLEXITY_FILTERS = ("perplexity", "perplexity_window")


def _args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default=os.path.join(REPO, "runs", "defences_train"))
  p.add_argument("--out", default=os.path.join(REPO, "docs", "results", "defences", "train"))
  p.add_argument("--modes", default="standard,unigram,inside,inside_unigram")
  p.add_argument("--counts", default="100,300:unigram+inside_unigram",
                 help="Poison counts N; 'N:MODE+MODE' limits N to those modes "
                 "(default: all --modes at 100; at 300 the two that evade).")
  p.add_argument("--filters", default="entropy,compression",
                 help="Comma list: one filtered run per filter, dropping what it flags.")
  p.add_argument("--fpr", type=float, default=0.01)
  p.add_argument("--sample_clean", type=int, default=3000)
  p.add_argument("--reference", default=os.path.join(REPO, "runs", "defences",
                                                      "reference_clean"),
                 help="The clean reference model of the perplexity filters "
                 "(trained first if unfinished, unless --partial).")
  p.add_argument("--partial", action="store_true", help="Score and report; train nothing.")
  p.add_argument("--smoke", action="store_true", help="A tiny recipe under /tmp.")
  return p.parse_args(argv)


def run_config(mode: str, n: int, smoke: bool, root: str):
  """The study's cpu-xxs run for N poisons with the mode's poison fields."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from poisonjax import config as config_lib, study  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("study_config", STUDY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  s = module.get_config()
  c = study.run_config(s, study.parse_run_name(
      f"size=cpu-xxs_n={n}_seed=0_data=1.0"))
  for field, value in MODES[mode].items():
    c.poison[field] = value
  if smoke:  # Minutes, not hours: a check that every step runs.
    c.data.cache_dir = os.path.join(root, "cache")
    c.vocab.size, c.vocab.sample_docs = 512, 300
    c.train.tokens_per_param, c.train.ckpt_every = 0.5, 50
    c.eval.num_excerpts, c.eval.gen_tokens, c.eval.num_evals = 8, 8, 1
  return config_lib.validate(c)


def score(config, names, out: str, sample: int, fpr: float,
          reference: str | None = None) -> list[dict]:
  """filters.csv rows of `names` on this stream (scored once, then read)."""
  path = os.path.join(out, "filters.csv")
  if not os.path.isfile(path):
    from poisonjax.defences import pipeline  # pylint: disable=g-import-not-at-top
    pipeline.score_stream(config, list(names), out, reference=reference,
                          max_clean_docs=sample, fprs=(fpr,),
                          log=lambda line: print(line, flush=True))
  with open(path) as f:
    return list(csv.DictReader(f))


def _reference_ready(args) -> bool:
  return not args.smoke and os.path.isfile(os.path.join(args.reference, rundir.SUMMARY))


def _key(fpr: float) -> str:
  return f"{100 * fpr:g}pct_fpr"


def train_once(config, workdir: str, partial: bool) -> bool:
  """Trains (or resumes) unless finished or --partial; True if finished."""
  from poisonjax import study, train  # pylint: disable=g-import-not-at-top
  saved = os.path.join(workdir, rundir.CONFIG)
  if os.path.isfile(saved):
    was = files.read_json(saved)
    for k, v in config.data.to_dict().items():
      if was["data"].get(k, v) != v:
        raise SystemExit(f"{workdir}: trained with data.{k}={was['data'][k]!r}, "
                         f"now {v!r} (other scores?); move it away to retrain")
  if study.is_finished(workdir) or partial:
    return study.is_finished(workdir)
  print(f"[defences_train] training {workdir}", flush=True)
  train.run_or_exit(config, workdir)
  return study.is_finished(workdir)


def final_eval(workdir: str) -> dict:
  """The last evaluation row of a finished run ({} if none)."""
  path = os.path.join(workdir, rundir.EVAL)
  rows = files.read_jsonl(path) if os.path.isfile(path) else []
  if not rows:
    return {}
  r = max(rows, key=lambda x: x["step"])
  return {k: r.get(k) for k in ("step", "poisons_seen", "increase", "increase_ci_low",
                                "increase_ci_high", "success_share", "clean_ppl_mean")}


def _unfiltered_dir(config, mode: str, n: int, args) -> str:
  """The study's own run when it is this very config (read only), else ours."""
  name = f"size=cpu-xxs_n={n}_seed=0_data=1.0"
  theirs = os.path.join(STUDY_ROOT, name)
  if mode == "standard" and not args.smoke and os.path.isfile(
      os.path.join(theirs, rundir.SUMMARY)):
    saved = files.read_json(os.path.join(theirs, rundir.CONFIG))
    mine = config.to_dict()
    # config.json is resolved (model fields left 0 here are filled in there)
    # and older (a field it lacks had its default then).
    from poisonjax import config as config_lib  # pylint: disable=g-import-not-at-top
    default = config_lib.base_config().to_dict()
    same = lambda sec: all(saved[sec].get(k, default[sec].get(k)) == v
                           for k, v in mine[sec].items() if sec != "model" or v)
    if all(same(sec) for sec in ("model", "train", "eval", "poison", "data")):
      return theirs
  return os.path.join(args.root, f"{mode}_n={n}", "unfiltered")


def drop_summary(filtered) -> dict:
  """What the filter removed, read from the filtered stream's record."""
  from poisonjax import budget  # pylint: disable=g-import-not-at-top
  from poisonjax.data import overlay, vocabulary  # pylint: disable=g-import-not-at-top
  vocab = vocabulary.get_vocabulary(filtered)
  fs = overlay.training_stream(filtered, budget.clean_token_budget(
      filtered, vocab.vocab_size))
  rec = fs.filter_record
  return {"surviving_poisons": len(rec["surviving_poison_ids"]),
          "surviving_poison_ids": rec["surviving_poison_ids"],
          "dropped_clean_documents": rec["dropped_clean_documents"],
          "clean_documents": rec["base_clean_documents"],
          "dropped_clean_token_share": rec["dropped_clean_tokens"] / max(
              1, fs.clean_tokens + rec["dropped_clean_tokens"])}


def operating_point(scores_csv: str, name: str, fpr: float):
  """The drop threshold at <= fpr, from the very numbers the drop will read
  (scores.csv's, rounded to 6 digits), so recall = the poisons dropped."""
  from poisonjax.data import filtered as filtered_lib  # pylint: disable=g-import-not-at-top
  from poisonjax.defences import metrics  # pylint: disable=g-import-not-at-top
  s = filtered_lib.read_scores(scores_csv, name)
  labels = s["poison_id"] >= 0
  return (metrics.threshold_at_fpr(s["score"], labels, fpr),
          metrics.roc_auc(s["score"], labels), int((~labels).sum()))


def one_point(mode: str, n: int, args) -> list[dict]:
  """Scores, trains and summarises one (mode, N): a row per drop filter,
  all sharing the one unfiltered run."""
  config = run_config(mode, n, args.smoke, args.root)
  base = os.path.join(args.root, "scores", f"{mode}_n={n}")
  k = _key(args.fpr)
  evasion = score(config, SAMPLE_FILTERS, os.path.join(base, "sample"),
                  args.sample_clean, args.fpr)
  if _reference_ready(args):  # The same documents (same sample seed).
    evasion += score(config, PERPLEXITY_FILTERS, os.path.join(base, "sample_ppl"),
                     args.sample_clean, args.fpr, reference=args.reference)
  evasion = {r["filter"]: {"recall": float(r[f"recall_at_{k}"]),
                           "roc_auc": float(r["roc_auc"])} for r in evasion}
  plain_dir = _unfiltered_dir(config, mode, n, args)
  unfiltered = (final_eval(plain_dir)
                if train_once(config, plain_dir, args.partial) else {})
  common = {"mode": mode, "count": n, "target_fpr": args.fpr,
            "unfiltered_run": os.path.relpath(plain_dir, REPO),
            "unfiltered": unfiltered, "evasion": evasion}
  return [filtered_point(config, name, dict(common), args)
          for name in args.filters.split(",")]


def filtered_point(config, name: str, row: dict, args) -> dict:
  """One filter's drop set over the whole stream, and the run without it."""
  mode, n = row["mode"], row["count"]
  out = os.path.join(args.root, "scores", f"{mode}_n={n}", "all")
  if name != "entropy":  # The first scores (entropy's) kept their old place.
    out = os.path.join(out, name)
  score(config, [name], out, 0, args.fpr)
  scores_csv = os.path.join(out, "scores.csv")
  op, auc, num_clean = operating_point(scores_csv, name, args.fpr)
  filt_dir = os.path.join(args.root, f"{mode}_n={n}", f"filtered_{name}")
  row.update(filter=name, threshold=op.threshold, recall=op.recall, fpr=op.fpr,
             poisons_flagged=op.poisons_flagged, roc_auc=auc,
             clean_documents=num_clean, filtered_run=os.path.relpath(filt_dir, REPO))
  if op.poisons_flagged + op.clean_flagged == 0:  # The same stream: same run.
    row.update(surviving_poisons=n, dropped_clean_documents=0, filtered_run="",
               note="nothing flagged at this FPR: the filtered run is the "
                    "unfiltered one", filtered=row["unfiltered"])
    return row
  filtered = config.copy_and_resolve_references()
  filtered.data.drop_scores = scores_csv
  filtered.data.drop_filter, filtered.data.drop_threshold = name, op.threshold
  row.update(drop_summary(filtered))
  assert row["surviving_poisons"] == n - op.poisons_flagged, row
  row["filtered"] = (final_eval(filt_dir)
                     if train_once(filtered, filt_dir, args.partial) else {})
  return row


def _fmt(x, spec=".1f") -> str:
  return "" if x is None or x == "" else format(x, spec)


def write_outputs(rows: list[dict], args, seconds: float) -> None:
  os.makedirs(args.out, exist_ok=True)
  files.write_json(os.path.join(args.out, "results.json"), rows)
  flat = [{**{k: v for k, v in r.items() if not isinstance(v, (dict, list))},
           **{f"{t}_{k}": v for t in ("unfiltered", "filtered")
              for k, v in r.get(t, {}).items()}} for r in rows]
  _csv(os.path.join(args.out, "table.csv"), flat)
  _csv(os.path.join(args.out, "evasion.csv"),
       [{"mode": r["mode"], "count": r["count"], "filter": f, **v}
        for r in rows for f, v in r["evasion"].items()])
  files.write_text_atomic(os.path.join(args.out, "report.md"), report(rows, args, seconds))


def _csv(path: str, rows: list[dict]) -> None:
  cols = list(dict.fromkeys(k for r in rows for k in r))
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
  w.writeheader()
  w.writerows(rows)
  files.write_text_atomic(path, buf.getvalue())


def report(rows: list[dict], args, seconds: float) -> str:
  pct = f"{100 * args.fpr:g}%"
  runs = ({(r["unfiltered_run"], bool(r["unfiltered"])) for r in rows}
          | {(r["filtered_run"], bool(r["filtered"])) for r in rows if r["filtered_run"]})
  trained, total = sum(done for _, done in runs), len(runs)
  filters = ", ".join(dict.fromkeys(r["filter"] for r in rows))
  out = [f"# Filter, then train; adaptive poisons (cpu-xxs; drop filters: {filters})\n",
         "Generated by `experiments/defences_train.py`"
         + (" --smoke (tiny recipe, not a measurement)" if args.smoke else "")
         + f"; never edited by hand. {trained} of {total} runs finished"
         + ("" if trained == total else " (PARTIAL)")
         + f"; this invocation {seconds / 60:.1f} min. The threshold is the one "
         f"with the best recall among those flagging <= {pct} of clean documents "
         "(chosen with the manifest's labels: the defender's best case); the "
         "filtered run trains on the stream without every flagged document "
         "(dropped tokens not replaced). Stream: configs/study_cpu_chinchilla.py's "
         "cpu-xxs run, seed 0, 1x data (20 clean tokens per parameter, poisons "
         "replacing clean tokens); modes (config.poison fields over it): "
         + "; ".join(f"{m} {MODES[m] or '(none)'}" for m in dict.fromkeys(
             r["mode"] for r in rows)) + ". An unfiltered run under "
         "runs/study_cpu_chinchilla is the study's own (same config), read only.\n",
         f"| mode | N | filter | recall at {pct} | FPR | surviving poisons "
         "| clean docs dropped | increase unfiltered (share > 50) "
         "| increase filtered (share > 50) |",
         "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    u, f = r["unfiltered"], r["filtered"]
    out.append(f"| {r['mode']} | {r['count']} | {r['filter']} | {r['recall']:.2f} | "
               f"{r['fpr']:.4f} | "
               f"{r['surviving_poisons']} | {r['dropped_clean_documents']} of "
               f"{r['clean_documents']} | {_fmt(u.get('increase'))} "
               f"({_fmt(u.get('success_share'), '.2f')}) | {_fmt(f.get('increase'))} "
               f"({_fmt(f.get('success_share'), '.2f')}) |")
  names = list(dict.fromkeys(f for r in rows for f in r["evasion"]))
  out += ["", f"Evasion: recall at {pct} FPR of each filter (all poisons, "
          f"{args.sample_clean} sampled clean documents; the trigger finder needs "
          "corpus statistics; the perplexity filters score under the clean "
          f"reference model `{os.path.relpath(args.reference, REPO)}`, whole "
          "document and worst window):", "",
          "| mode | N | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
  points = {}  # (mode, N) -> its rows, one per drop filter.
  for r in rows:
    points.setdefault((r["mode"], r["count"]), []).append(r)
  for (mode, n), group in points.items():
    out.append(f"| {mode} | {n} | " + " | ".join(
        _fmt(group[0]["evasion"].get(f, {}).get("recall"), ".2f") for f in names) + " |")
  return "\n".join(out + [""] + [_finding(g, pct) for g in points.values()]) + "\n"


def _finding(group: list[dict], pct: str) -> str:
  """One computed sentence per (mode, N): what catches it, what it evades."""
  r = group[0]
  ev = r["evasion"]
  best = max(ev, key=lambda f: ev[f]["recall"])
  evaded = [f for f in ev if ev[f]["recall"] < 0.5]
  left = "; ".join(f"{g['filter']} leaves {g['surviving_poisons']} of {g['count']} "
                   f"poisons{_outcome(g['filtered'])}" for g in group)
  return (f"- {r['mode']}, N={r['count']}: best filter {best} (recall "
          f"{ev[best]['recall']:.2f} at {pct} FPR); evades (recall < 0.5) "
          f"{', '.join(evaded) or 'none'}; unfiltered{_outcome(r['unfiltered'])}; "
          f"{left}.")


def _outcome(final: dict) -> str:
  """' (increase X: backdoor / no backdoor)', '' for an unfinished run."""
  if not final or final.get("increase") is None:
    return ""
  formed = "backdoor" if final["success_share"] > 0.5 else "no backdoor"
  return f" (increase {final['increase']:.1f}, {formed})"


def points(counts: str, modes: str) -> list[tuple[str, int]]:
  """(mode, N) in run order from --counts ('100,300:unigram+inside') and --modes."""
  out = []
  for item in counts.split(","):
    n, _, only = item.partition(":")
    chosen = only.split("+") if only else modes.split(",")
    unknown = [m for m in chosen if m not in MODES]
    if unknown or not n.isdigit():
      raise SystemExit(f"--counts/--modes: {item!r}: unknown modes {unknown} or a "
                       f"count that is not a number; modes are {', '.join(MODES)}")
    out += [(m, int(n)) for m in chosen]
  return out


def main(argv) -> int:
  args = _args(argv)
  if args.smoke:
    args.root = "/tmp/defences_train_smoke"
    args.out = os.path.join(args.root, "out")
    args.counts, args.sample_clean = "5", 200
  todo = points(args.counts, args.modes)
  from poisonjax import study  # pylint: disable=g-import-not-at-top
  study.enable_compilation_cache()
  if not (args.smoke or args.partial):
    import defences_score  # pylint: disable=g-import-not-at-top
    defences_score.ensure_reference(run_config("standard", 100, False, args.root),
                                    args.reference)
  t0, rows = time.time(), []
  for mode, n in todo:
    rows.extend(one_point(mode, n, args))
    write_outputs(rows, args, time.time() - t0)  # Partial results as they come.
  print(report(rows, args, time.time() - t0))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
