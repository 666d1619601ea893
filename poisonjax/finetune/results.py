"""The fine-tuning studies' evaluations as one table (results.csv).

study.collect gives one row per evaluation of every run (its coordinates,
step, poisons seen and the evaluator's metrics, finetune/evaluate.py); this
adds what a fine-tune's rows need to be read: the clean set size S, the
poisoned share N / (S + N), the step at which the set ends (set_end: the
run's manifest.json) and the clean samples trained after it
(after_samples: 0 within the set; clean fine-tuning afterwards beyond it).
"""

from __future__ import annotations

from poisonjax import files
from poisonjax import plots
from poisonjax import rundir
from poisonjax.finetune import evaluate as ft_evaluate
from poisonjax.study import grids
from poisonjax.study import results as study_results

COLUMNS = ("run", "study", "variant", "size", "params", "poison_count", "seed",
           "data_multiplier", "clean_samples", "poison_share", "step",
           "num_steps", "set_end", "after_samples", "poisons_seen",
           "finished") + ft_evaluate.METRICS + ("eval_requests",)


def _manifest(workdir) -> dict:
  path = files.as_path(workdir) / rundir.MANIFEST
  return files.read_json(path) if path.exists() else {}


def collect(study, root) -> list[dict]:
  """Every evaluation of the study's finished or running runs under root."""
  runs = [r for r in grids.expand(study)
          if (files.as_path(root) / r.name / rundir.EVAL).exists()]
  rows = study_results.collect(root, runs)
  manifests = {r.name: _manifest(files.as_path(root) / r.name) for r in runs}
  out = []
  for row in rows:
    m = manifests[row["run"]]
    if not m:
      continue
    s, n = int(m["clean_samples"]), int(row["poison_count"])
    end = int(m["main_steps"])
    row.update({"study": study.name, "clean_samples": s,
                "poison_share": n / (s + n), "set_end": end,
                "after_samples": max(0, int(row["step"]) - end)
                * int(m["batch_size"])})
    out.append(row)
  return out


def at_set_end(rows: list[dict]) -> list[dict]:
  """One row per run: its evaluation at the end of the fine-tuning set."""
  return [r for r in rows if int(r["step"]) == int(r["set_end"])]


def write_csv(rows: list[dict], path) -> None:
  """COLUMNS of every row (the pretraining study's perplexity columns left out)."""
  plots.write_table(rows, path, list(COLUMNS))
