"""Results: every run's evaluations as one tidy table, and the figures.

`collect` reads ROOT/<run name>/{eval.jsonl, summary.json, config.json} as
train.py writes them (finished or not) and returns one row per evaluation
point; a run with a damaged file (not JSON, not an object, a line of
eval.jsonl that is not one) is skipped with a warning line naming the file,
or, with strict=True, stops the collection (UserError); `write_csv` writes them; `make_figures` writes the study's figures
and report.md from the CSV (poisonjax.study.report).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Callable

import ml_collections

from poisonjax.evaluation import backdoor
from poisonjax import files
from poisonjax.training import run_history
from poisonjax import rundir
from poisonjax.errors import UserError
from poisonjax.study import grids

# "variant" is written only by studies with variants (write_csv).
COORD_COLUMNS = ("run", "size", "poison_count", "seed", "data_multiplier",
                 "variant")
CSV_COLUMNS = COORD_COLUMNS + (
    "params", "non_embedding_params", "eval_index", "step", "num_steps",
    "fraction", "tokens_seen", "poisons_seen", "poisons_per_mtok",
    "finished") + backdoor.METRIC_KEYS


def is_finished(workdir) -> bool:
  return (files.as_path(workdir) / rundir.SUMMARY).exists()


_PARAM_CACHE: dict = {}


def _params_from_workdir(workdir) -> dict:
  """Parameter counts from the run's resolved config.json (shapes only)."""
  from poisonjax.model import transformer as model_lib  # JAX: only for these counts.

  path = files.as_path(workdir) / rundir.CONFIG
  if not path.exists():
    return {"total": "", "non_embedding": ""}
  cfg = ml_collections.ConfigDict(run_history.read_config(path))
  vocab = cfg.model.vocab_size or cfg.vocab.size
  key = (json.dumps(cfg.model.to_dict(), sort_keys=True, default=str), vocab)
  if key not in _PARAM_CACHE:
    _PARAM_CACHE[key] = model_lib.param_counts(
        model_lib.ModelConfig.from_config(cfg, vocab))
  return _PARAM_CACHE[key]


def _runs_under(root) -> list[grids.Run]:
  """The runs with an eval.jsonl under root (other folders are ignored)."""
  runs = []
  for path in sorted(files.as_path(root).glob(f"*/{rundir.EVAL}")):
    try:
      runs.append(grids.parse_run_name(path.parent.name))
    except UserError:
      continue
  return runs


def _run_rows(run: grids.Run, workdir, by_step: dict) -> list[dict]:
  counts = _params_from_workdir(workdir)
  finished = is_finished(workdir)
  num_steps = max(by_step)
  if finished:
    summary = _json_object(files.as_path(workdir) / rundir.SUMMARY)
    num_steps = int(summary.get("num_steps", num_steps))
    if isinstance(summary.get("params"), dict):
      counts = summary["params"]
  out = []
  for idx, step in enumerate(sorted(by_step)):
    r = by_step[step]
    tokens = r.get("tokens_seen", "")
    poisons = r.get("poisons_seen", "")
    row = {"run": run.name, **run.coords(), "params": counts["total"],
           "non_embedding_params": counts["non_embedding"],
           "eval_index": idx, "step": step, "num_steps": num_steps,
           "fraction": r.get("fraction", step / num_steps if num_steps else 0.0),
           "tokens_seen": tokens, "poisons_seen": poisons,
           "poisons_per_mtok": (poisons / tokens * 1e6
                                if tokens not in ("", 0) and poisons != "" else ""),
           "finished": int(finished)}
    for k in backdoor.METRIC_KEYS:
      row[k] = r.get(k, "")
    for k in sorted(set(r) - set(row) - {"fraction"}):
      row[k] = r[k]
    out.append(row)
  return out


def _json_object(path) -> dict:
  """A run file holding one JSON object; UserError (one line) naming it."""
  try:
    obj = files.read_json(path)
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not JSON ({str(e).splitlines()[0][:100]})") from None
  if not isinstance(obj, dict):
    raise UserError(f"{path}: a JSON {type(obj).__name__}, not an object")
  return obj


def _warn(message: str) -> None:
  print(f"poisonjax: warning: {message}", file=sys.stderr, flush=True)


def collect(root, runs: list[grids.Run] | None = None, *, strict: bool = False,
            warn: Callable[[str], None] = _warn) -> list[dict]:
  """One tidy row per evaluation point of every run under root.

  Rows of one step written twice (a run killed after an evaluation and
  resumed from an earlier checkpoint) are deduplicated, the last one kept.
  A damaged run is skipped with `warn` naming its file (strict: UserError).
  """
  root = files.as_path(root)
  out = []
  for run in _runs_under(root) if runs is None else runs:
    workdir = root / run.name
    try:
      by_step = {int(row["step"]): row
                 for row in files.read_jsonl(workdir / rundir.EVAL, strict=True)}
      if by_step:
        out += _run_rows(run, workdir, by_step)
    except (UserError, ValueError, KeyError, TypeError) as e:
      what = str(e) if isinstance(e, (UserError, ValueError)) else \
          f"{workdir / rundir.EVAL}: a row without a numeric step ({e!r})"
      if strict:
        raise UserError(f"run {run.name}: {what}; fix or remove that file "
                        "(without --strict the run is skipped)") from None
      warn(f"skipped run {run.name}: {what}; fix or remove that file and "
           "collect again")
  return out


def write_csv(rows: list[dict], path) -> None:
  """The rows as CSV: CSV_COLUMNS first, then any extra keys in order seen.

  Without a named variant the CSV has no variant column: a study without
  variants writes the columns it wrote before variants existed.
  """
  skip = set() if any(r.get("variant") for r in rows) else {"variant"}
  cols = [c for c in CSV_COLUMNS if c not in skip]
  for r in rows:
    cols += [k for k in r if k not in cols and k not in skip]
  buf = io.StringIO(newline="")
  w = csv.DictWriter(buf, fieldnames=cols, restval="", extrasaction="ignore")
  w.writeheader()
  w.writerows(rows)
  files.write_text_atomic(path, buf.getvalue())


def make_figures(root, out=None) -> dict:
  """Figures, their tables and report.md from ROOT/results.csv (collected
  first if absent), by poisonjax.study.report.

  The success threshold and the regime come from the study (ROOT/study.json)
  when there is one; else the threshold is analysis.SUCCESS_INCREASE.
  """
  # scipy and matplotlib: not on `study run|status`'s path.
  from poisonjax.study import analysis  # pylint: disable=g-import-not-at-top
  from poisonjax.study import report  # pylint: disable=g-import-not-at-top

  root = files.as_path(root)
  csv_path = root / "results.csv"
  if not csv_path.exists():
    rows = collect(root)
    if not rows:
      raise UserError(f"--root={root}: no results; run `poisonjax study run` "
                      "and `poisonjax study collect` first")
    write_csv(rows, csv_path)
  study, threshold = None, analysis.SUCCESS_INCREASE
  if (root / "study.json").exists():
    study = files.read_json(root / "study.json")
    threshold = float(study["base"]["eval"]["threshold"])
  out = files.as_path(out or root / "figures")
  made = report.generate(str(csv_path), str(out), threshold=threshold, study=study)
  return {"figures": made["figures"], "report": made["report"]}
