"""Filter, then train; adaptive poisons against the filters: a study's steps.

configs/defences/train.py names this module (study.experiment). For each
poison mode (MODES: config.poison fields) and count N it trains an
unfiltered run (variant MODE) and, per drop filter F, a filtered run
(variant MODE-F-nN) on the same stream without the documents F flags
(config.data.drop_scores; poisonjax/data/filtered.py). The drop set must
exist before the filtered run trains: after_run of the unfiltered run
(which trains first, study order) scores that stream in
SCORES/MODE_n=N/ (SCORES: study.defences.scores_dir):
  sample/, sample_ppl/  every filter on every poison and `sample_clean`
      clean documents (evasion: recall at `fpr` from the manifest; the
      perplexity filters only once the reference model has finished);
  all_F/scores.csv      F on EVERY document of the stream;
  drop_F.csv, .json     F's threshold with the best recall at <= `fpr`
      false positives (metrics.threshold_at_fpr, chosen with the labels:
      the defender's best case), from the very numbers of scores.csv, and
      scores.csv with a `flagged` column (1: dropped) that the filtered
      run's config reads (drop_filter 'flagged', drop_threshold 1).
collect writes OUT/results.json (a row per (mode, N, F)), table.csv,
evasion.csv and settings.json; report writes OUT/report.md from them alone.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os

from poisonjax import files, rundir
from poisonjax.defences import report as report_lib
from poisonjax.errors import UserError

# Poison modes: config.poison fields over the study's (data/poison_adaptive.py).
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
PERPLEXITY_FILTERS = ("perplexity", "perplexity_window")  # Need the reference.
FLAG = "flagged"  # The drop file's column: 1 for a dropped document.


# ---- the study's runs -------------------------------------------------------

def parse_points(text: str) -> list[tuple[str, int]]:
  """(mode, N) in run order from 'MODE:N,MODE:N,...'."""
  out = []
  for item in str(text).split(","):
    mode, _, n = item.partition(":")
    if mode not in MODES or not n.isdigit():
      raise UserError(f"study.defences.points: {item!r} is not MODE:N with a "
                      f"mode of {', '.join(MODES)}; e.g. 'unigram:300'")
    out.append((mode, int(n)))
  return out


def parse_filters(text: str) -> list[str]:
  return [f for f in str(text).split(",") if f]


def variant_name(mode: str, drop_filter: str = "", count: int = 0) -> str:
  """MODE (unfiltered) or MODE-FILTER-nN (filtered); '-' for '_'."""
  mode = mode.replace("_", "-")
  return f"{mode}-{drop_filter.replace('_', '-')}-n{count}" if drop_filter else mode


def point_dir(scores_dir: str, mode: str, count: int) -> str:
  return os.path.join(str(scores_dir), f"{mode}_n={count}")


def drop_path(scores_dir: str, mode: str, count: int, drop_filter: str) -> str:
  return os.path.join(point_dir(scores_dir, mode, count), f"drop_{drop_filter}.csv")


def variants(points, drop_filters, scores_dir: str) -> dict:
  """{variant name: overrides}, each mode's unfiltered run before its
  filtered ones (for set_variants)."""
  out = {}
  for mode, n in points:
    out.setdefault(variant_name(mode), {"poison": dict(MODES[mode])})
    for f in drop_filters:
      out[variant_name(mode, f, n)] = {
          "poison": dict(MODES[mode]),
          "data": {"drop_scores": drop_path(scores_dir, mode, n, f),
                   "drop_filter": FLAG, "drop_threshold": 1.0}}
  return out


def block_variants(points, drop_filters) -> dict[int, list[str]]:
  """{N: the variants its grid block runs}."""
  out = {}
  for mode, n in points:
    out.setdefault(n, []).extend(
        [variant_name(mode)] + [variant_name(mode, f, n) for f in drop_filters])
  return out


def roles(study) -> dict[tuple[str, int], tuple[str, str]]:
  """(variant, N) -> (mode, drop filter or '') for every run of the study."""
  d = study.defences
  return {(variant_name(m, f, n), n): (m, f) for m, n in parse_points(d.points)
          for f in [""] + parse_filters(d.drop_filters)}


# ---- scoring (after_run of an unfiltered run) --------------------------------

def score(config, names, out: str, sample: int, fpr: float, reference=None,
          log=print) -> list[dict]:
  """filters.csv rows of `names` on this stream (scored once, then read)."""
  path = os.path.join(out, "filters.csv")
  if not os.path.isfile(path):
    from poisonjax.defences import pipeline  # pylint: disable=g-import-not-at-top
    pipeline.score_stream(config, list(names), out, reference=reference,
                          max_clean_docs=sample, fprs=(fpr,), log=log)
  with open(path) as f:
    return list(csv.DictReader(f))


def reference_ready(study) -> bool:
  ref = str(study.defences.reference)
  return bool(ref) and os.path.isfile(os.path.join(ref, rundir.SUMMARY))


def write_drop_set(config, name: str, base: str, fpr: float, log=print) -> None:
  """drop_NAME.csv/.json of the stream: NAME's best operating point at <= fpr."""
  target = os.path.join(base, f"drop_{name}.csv")
  if os.path.isfile(target) and os.path.isfile(target[:-4] + ".json"):
    return
  from poisonjax.data import filtered as filtered_lib  # pylint: disable=g-import-not-at-top
  from poisonjax.defences import metrics  # pylint: disable=g-import-not-at-top
  scores_csv = os.path.join(base, f"all_{name}", "scores.csv")
  score(config, [name], os.path.dirname(scores_csv), 0, fpr, log=log)
  s = filtered_lib.read_scores(scores_csv, name)
  labels = s["poison_id"] >= 0
  op = metrics.threshold_at_fpr(s["score"], labels, fpr)
  files.write_json(target[:-4] + ".json", {
      "filter": name, "scores": scores_csv, "threshold": float(op.threshold),
      "recall": float(op.recall), "fpr": float(op.fpr),
      "poisons_flagged": int(op.poisons_flagged),
      "clean_flagged": int(op.clean_flagged),
      "roc_auc": float(metrics.roc_auc(s["score"], labels)),
      "clean_documents": int((~labels).sum())})
  rows = list(csv.DictReader(files.as_path(scores_csv).read_text().splitlines()))
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=["index", "start", "end", "poison_id", name, FLAG],
                     extrasaction="ignore", lineterminator="\n")
  w.writeheader()
  w.writerows({**r, FLAG: int(float(r[name]) >= op.threshold)} for r in rows)
  files.write_text_atomic(target, buf.getvalue())


def after_run(study, run, workdir, log) -> None:
  """An unfiltered run's stream scored, its drop sets written (once)."""
  mode, drop_filter = roles(study).get((run.variant, run.poisons), ("", ""))
  if not mode or drop_filter:
    return
  from poisonjax.evaluation import run_reader  # pylint: disable=g-import-not-at-top
  d = study.defences
  config = run_reader.read_run_config(str(workdir))
  base, fpr = point_dir(d.scores_dir, mode, run.poisons), float(d.fpr)
  score(config, SAMPLE_FILTERS, os.path.join(base, "sample"), int(d.sample_clean),
        fpr, log=log)
  if reference_ready(study):  # The same documents (same sample seed).
    score(config, PERPLEXITY_FILTERS, os.path.join(base, "sample_ppl"),
          int(d.sample_clean), fpr, reference=str(d.reference), log=log)
  for name in parse_filters(d.drop_filters):
    write_drop_set(config, name, base, fpr, log)


# ---- collect -----------------------------------------------------------------

def final_eval(workdir) -> dict:
  """The last evaluation row of a finished run ({} if none)."""
  path = files.as_path(workdir) / rundir.EVAL
  if not (files.as_path(workdir) / rundir.SUMMARY).exists() or not path.exists():
    return {}
  rows = files.read_jsonl(path)
  if not rows:
    return {}
  r = max(rows, key=lambda x: x["step"])
  return {k: r.get(k) for k in ("step", "poisons_seen", "increase", "increase_ci_low",
                                "increase_ci_high", "success_share", "clean_ppl_mean")}


def drop_summary(filtered_config) -> dict:
  """What the filter removed, read from the filtered stream's record."""
  from poisonjax import budget  # pylint: disable=g-import-not-at-top
  from poisonjax.data import overlay, vocabulary  # pylint: disable=g-import-not-at-top
  vocab = vocabulary.get_vocabulary(filtered_config)
  fs = overlay.training_stream(filtered_config, budget.clean_token_budget(
      filtered_config, vocab.vocab_size))
  rec = fs.filter_record
  return {"surviving_poisons": len(rec["surviving_poison_ids"]),
          "surviving_poison_ids": rec["surviving_poison_ids"],
          "dropped_clean_documents": rec["dropped_clean_documents"],
          "clean_documents": rec["base_clean_documents"],
          "dropped_clean_token_share": rec["dropped_clean_tokens"] / max(
              1, fs.clean_tokens + rec["dropped_clean_tokens"])}


def evasion(base: str, fpr: float) -> dict:
  """Each filter's recall at fpr and AUC on the point's sample."""
  key = f"recall_at_{100 * fpr:g}pct_fpr"
  out = {}
  for sub in ("sample", "sample_ppl"):
    path = os.path.join(base, sub, "filters.csv")
    if os.path.isfile(path):
      with open(path) as f:
        out.update({r["filter"]: {"recall": float(r[key]),
                                  "roc_auc": float(r["roc_auc"])}
                    for r in csv.DictReader(f)})
  return out


def point_rows(study, root, template, mode: str, n: int) -> list[dict]:
  """One row per drop filter of one (mode, N), all sharing its unfiltered run."""
  from poisonjax.evaluation import run_reader  # pylint: disable=g-import-not-at-top
  d = study.defences
  workdir = lambda f: files.as_path(root) / dataclasses.replace(
      template, poisons=n, variant=variant_name(mode, f, n)).name
  unfiltered = workdir("")
  after_run(study, dataclasses.replace(template, poisons=n,
                                       variant=variant_name(mode)), unfiltered, print)
  config = run_reader.read_run_config(str(unfiltered))
  base = point_dir(d.scores_dir, mode, n)
  common = {"mode": mode, "count": n, "target_fpr": float(d.fpr),
            "unfiltered_run": os.path.relpath(unfiltered),
            "unfiltered": final_eval(unfiltered),
            "evasion": evasion(base, float(d.fpr))}
  rows = []
  for name in parse_filters(d.drop_filters):
    op = files.read_json(drop_path(d.scores_dir, mode, n, name)[:-4] + ".json")
    filtered = config.copy_and_resolve_references()
    filtered.data.drop_scores = drop_path(d.scores_dir, mode, n, name)
    filtered.data.drop_filter, filtered.data.drop_threshold = FLAG, 1.0
    row = {**common, "filter": name, "threshold": op["threshold"],
           "recall": op["recall"], "fpr": op["fpr"],
           "poisons_flagged": op["poisons_flagged"], "roc_auc": op["roc_auc"],
           "clean_documents": op["clean_documents"],
           "filtered_run": os.path.relpath(workdir(name)),
           **drop_summary(filtered), "filtered": final_eval(workdir(name))}
    assert row["surviving_poisons"] == n - op["poisons_flagged"], row
    rows.append(row)
  return rows


def collect(study, root, runs, out) -> None:
  """OUT's results files from the points whose unfiltered run has finished."""
  done = {(r.variant, r.poisons) for r in runs}
  rows = []
  for mode, n in parse_points(study.defences.points):
    if (variant_name(mode), n) in done:
      rows += point_rows(study, root, runs[0], mode, n)
  d = study.defences
  settings = {"fpr": float(d.fpr), "sample_clean": int(d.sample_clean),
              "reference": str(d.reference),
              "modes": {m: MODES[m] for m in dict.fromkeys(r["mode"] for r in rows)}}
  write_outputs(rows, settings, out)


def write_outputs(rows: list[dict], settings: dict, out) -> None:
  out = files.as_path(out)
  out.mkdir(parents=True, exist_ok=True)
  files.write_json(out / "results.json", rows)
  files.write_json(out / "settings.json", settings)
  flat = [{**{k: v for k, v in r.items() if not isinstance(v, (dict, list))},
           **{f"{t}_{k}": v for t in ("unfiltered", "filtered")
              for k, v in r.get(t, {}).items()}} for r in rows]
  write_csv(out / "table.csv", flat)
  write_csv(out / "evasion.csv",
            [{"mode": r["mode"], "count": r["count"], "filter": f, **v}
             for r in rows for f, v in r["evasion"].items()])


def write_csv(path, rows: list[dict]) -> None:
  cols = list(dict.fromkeys(k for r in rows for k in r))
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
  w.writeheader()
  w.writerows(rows)
  files.write_text_atomic(path, buf.getvalue())


# ---- report ------------------------------------------------------------------

def report(study, out, provenance: list[str]) -> str:  # pylint: disable=unused-argument
  """OUT/report.md from results.json and settings.json."""
  out = files.as_path(out)
  text = markdown(files.read_json(out / "results.json"),
                  files.read_json(out / "settings.json"))
  files.write_text_atomic(out / "report.md",
                          text + report_lib.provenance_section(provenance))
  return str(out / "report.md")


def fmt(x, spec=".1f") -> str:
  return "" if x is None or x == "" else format(x, spec)


def header(rows: list[dict], settings: dict) -> str:
  """The title and the setup paragraph, from the rows and settings."""
  pct = f"{100 * settings['fpr']:g}%"
  runs = ({(r["unfiltered_run"], bool(r["unfiltered"])) for r in rows}
          | {(r["filtered_run"], bool(r["filtered"])) for r in rows if r["filtered_run"]})
  trained, total = sum(done for _, done in runs), len(runs)
  borrowed = any(r["unfiltered_run"].startswith("runs/study_cpu_chinchilla")
                 for r in rows)
  return "\n".join([
      "# Filter, then train; adaptive poisons (cpu-xxs; drop filters: "
      f"{', '.join(dict.fromkeys(r['filter'] for r in rows))})\n",
      "Generated by `poisonjax study reproduce --config=configs/defences/train.py`"
      f"; never edited by hand. {trained} of {total} runs finished"
      + ("" if trained == total else " (PARTIAL)")
      + ". The threshold is the one "
      f"with the best recall among those flagging <= {pct} of clean documents "
      "(chosen with the manifest's labels: the defender's best case); the "
      "filtered run trains on the stream without every flagged document "
      "(dropped tokens not replaced). Stream: configs/paper/cpu_chinchilla.py's "
      "cpu-xxs run, seed 0, 1x data (20 clean tokens per parameter, poisons "
      "replacing clean tokens); modes (config.poison fields over it): "
      + "; ".join(f"{m} {fields or '(none)'}" for m, fields in settings["modes"].items())
      + "." + (" An unfiltered run under runs/study_cpu_chinchilla is the "
               "study's own (same config), read only." if borrowed else "") + "\n"])


def markdown(rows: list[dict], settings: dict) -> str:
  """The report's text: the runs' table, evasion table, one finding per point."""
  pct = f"{100 * settings['fpr']:g}%"
  out = [header(rows, settings),
         f"| mode | N | filter | recall at {pct} | FPR | surviving poisons "
         "| clean docs dropped | increase unfiltered (share > 50) "
         "| increase filtered (share > 50) |",
         "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    u, f = r["unfiltered"], r["filtered"]
    out.append(f"| {r['mode']} | {r['count']} | {r['filter']} | {r['recall']:.2f} | "
               f"{r['fpr']:.4f} | "
               f"{r['surviving_poisons']} | {r['dropped_clean_documents']} of "
               f"{r['clean_documents']} | {fmt(u.get('increase'))} "
               f"({fmt(u.get('success_share'), '.2f')}) | {fmt(f.get('increase'))} "
               f"({fmt(f.get('success_share'), '.2f')}) |")
  names = list(dict.fromkeys(f for r in rows for f in r["evasion"]))
  out += ["", f"Evasion: recall at {pct} FPR of each filter (all poisons, "
          f"{settings['sample_clean']} sampled clean documents; the trigger finder "
          "needs corpus statistics; the perplexity filters score under the clean "
          f"reference model `{settings['reference']}`, whole "
          "document and worst window):", "",
          "| mode | N | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
  points = {}  # (mode, N) -> its rows, one per drop filter.
  for r in rows:
    points.setdefault((r["mode"], r["count"]), []).append(r)
  for (mode, n), group in points.items():
    out.append(f"| {mode} | {n} | " + " | ".join(
        fmt(group[0]["evasion"].get(f, {}).get("recall"), ".2f") for f in names) + " |")
  return "\n".join(out + [""] + [finding(g, pct) for g in points.values()]) + "\n"


def finding(group: list[dict], pct: str) -> str:
  """One computed sentence per (mode, N): what catches it, what it evades."""
  r = group[0]
  ev = r["evasion"]
  best = max(ev, key=lambda f: ev[f]["recall"])
  evaded = [f for f in ev if ev[f]["recall"] < 0.5]
  left = "; ".join(f"{g['filter']} leaves {g['surviving_poisons']} of {g['count']} "
                   f"poisons{outcome(g['filtered'])}" for g in group)
  return (f"- {r['mode']}, N={r['count']}: best filter {best} (recall "
          f"{ev[best]['recall']:.2f} at {pct} FPR); evades (recall < 0.5) "
          f"{', '.join(evaded) or 'none'}; unfiltered{outcome(r['unfiltered'])}; "
          f"{left}.")


def outcome(final: dict) -> str:
  """' (increase X: backdoor / no backdoor)', '' for an unfinished run."""
  if not final or final.get("increase") is None:
    return ""
  formed = "backdoor" if final["success_share"] > 0.5 else "no backdoor"
  return f" (increase {final['increase']:.1f}, {formed})"
