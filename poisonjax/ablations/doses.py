"""One run, many doses: every trigger on every final checkpoint.

The study (configs/ablations/doses.py) trains one run with five triggers at
3-300 poisons and some of those doses alone. The hooks, run by
`poisonjax study reproduce` (poisonjax/study/experiment.py):
  after_run  scores a finished run's last checkpoint after every string of
             the study (each run's triggers, then the never-poisoned
             control) on the same prompts, one Evaluator, keeping the
             per-prompt perplexities in WORKDIR/final_<study name>.json;
  collect    OUT/results.json: dose-response, validation against the single
             runs, cross-talk, per-trigger curves, run facts;
  report     the CSVs, doses.png and report.md from results.json alone
             (doses_report.py).
triggers.py reuses after_run and the numbers here. The JAX-side imports
stay in the functions that measure, so `--report_only` needs no JAX.
"""

from __future__ import annotations

import json
import os

import numpy as np

from poisonjax.evaluation import backdoor
from poisonjax import files
from poisonjax import rundir
from poisonjax.ablations import doses_report
from poisonjax.errors import UserError
from poisonjax.study import grids

FINAL_FILE = "final_{name}.json"  # Per study: one run can serve two.
RESULTS = "results.json"
MANY = "doses"  # results.json's name of the many-dose run.
# The committed single-trigger pilot (same regime and seeds, `<SUDO>`, 64
# prompts), relative to the repository root.
PILOT = os.path.join("docs", "results", "cpu_chinchilla", "pilot")
PILOT_COUNTS = (3, 10, 30, 100, 300)


# ---- after_run: the final evaluation on every string ------------------------

def cross_triggers(study) -> list[str]:
  """Every string a checkpoint is scored after: each run's evaluation
  strings (its triggers, then a many-dose run's control), in run order, once."""
  from poisonjax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  names = []
  for run in grids.expand(study):
    for trigger, _ in evaluate.eval_triggers(grids.run_config(study, run)):
      if trigger not in names:
        names.append(trigger)
  return names


def final_path(study, workdir) -> str:
  return os.path.join(os.fspath(workdir), FINAL_FILE.format(name=study.name))


def after_run(study, run, workdir, log=print) -> dict:
  """The run's last checkpoint scored after every string (kept; done once)."""
  config = grids.run_config(study, run)
  return final_eval(config, workdir, cross_triggers(study), final_path(study, workdir),
                    log)


def final_eval(config, workdir, triggers: list[str], path: str, log=print) -> dict:
  """Every trigger's metrics and per-prompt perplexities at the last step,
  read from `path` when it holds this step and these triggers."""
  from poisonjax.evaluation import evaluate, run_reader  # pylint: disable=g-import-not-at-top
  from poisonjax.model import transformer as model_lib
  from poisonjax import sharding
  from poisonjax.data import vocabulary  # pylint: disable=g-import-not-at-top
  workdir = os.fspath(workdir)
  step = run_reader.pick_step(workdir, None)
  if os.path.exists(path):
    done = files.read_json(path)
    if done["step"] == step and [t["trigger"] for t in done["triggers"]] == triggers:
      return done
  log(f"[{os.path.basename(workdir)}] final evaluation after {len(triggers)} strings")
  vocab = vocabulary.get_vocabulary(config)
  model_cfg = model_lib.ModelConfig.from_config(config, vocab.vocab_size)
  mesh = sharding.make_mesh(config.mesh)
  params, step = run_reader.restore_params(workdir, model_cfg, step, mesh=mesh)
  ev = evaluate.Evaluator(config, model_cfg, vocab, mesh, triggers=triggers)
  out = {"step": int(step), "num_prompts": ev.num, "triggers": [
      {"trigger": r.trigger, "role": r.role, "metrics": r.metrics,
       "clean_ppl": np.exp(r.clean_nll).tolist(),
       "triggered_ppl": np.exp(r.triggered_nll).tolist()}
      for r in ev.evaluate_triggers(params)]}
  files.write_text_atomic(path, json.dumps(out))
  return out


# ---- the finished runs, measured ---------------------------------------------

def measured(study, root, runs: list[grids.Run], label) -> dict:
  """{label(run, config): (config, workdir, final)} of the finished runs, in
  run order; after_run first where a run lacks its final evaluation."""
  out = {}
  for run in runs:
    config, workdir = grids.run_config(study, run), files.as_path(root) / run.name
    out[label(run, config)] = (config, os.fspath(workdir),
                               after_run(study, run, workdir))
  return out


def dose_label(run, config) -> str:
  """'doses' for the many-dose run, 'single_N' for a dose of N alone."""
  from poisonjax.data import poison  # pylint: disable=g-import-not-at-top
  return MANY if poison.dose_counts(config) else f"single_{run.poisons}"


def increases(entry: dict) -> np.ndarray:
  """Per-prompt increase (triggered minus clean perplexity) of one trigger."""
  return np.asarray(entry["triggered_ppl"]) - np.asarray(entry["clean_ppl"])


def by_trigger(final: dict) -> dict:
  return {t["trigger"]: t for t in final["triggers"]}


def difference(a: dict, b: dict, samples: int, seed: int) -> dict:
  """Mean increase of a minus b, with a 95% interval: the same prompts in
  both, so pairs are resampled together (backdoor.bootstrap_ci)."""
  ia, ib = increases(a), increases(b)
  lo, hi = backdoor.bootstrap_ci(ib, ia, samples, seed)
  return {"difference": float(ia.mean() - ib.mean()), "ci_low": lo, "ci_high": hi}


def per_trigger_curves(config, workdir: str) -> list[dict]:
  """The many-dose run's eval.jsonl, one row per trigger, with the poisons
  of that trigger seen by each step (from the manifest)."""
  from poisonjax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  names = evaluate.eval_triggers(config)
  manifest = files.read_json(os.path.join(workdir, rundir.MANIFEST))["poisons"]
  last = {}
  for p in manifest:
    last.setdefault(p.get("trigger", 0), []).append(p["last_step"])
  out = []
  for row in files.read_jsonl(os.path.join(workdir, rundir.EVAL)):
    for r in backdoor.split_row(row, names):
      seen = np.asarray(last.get(r["trigger_index"], []))
      r["trigger_poisons_seen"] = int(np.sum(seen < r["step"]))
      out.append(r)
  return out


def run_facts(workdir: str) -> dict:
  s = files.read_json(os.path.join(workdir, rundir.SUMMARY))
  m = files.read_json(os.path.join(workdir, rundir.MANIFEST))
  return {"params": s["params"]["total"], "num_steps": s["num_steps"],
          "stream_tokens": s["stream_tokens"], "clean_tokens": m["clean_tokens"],
          "poison_tokens": m["poison_tokens"], "poisons": len(m["poisons"]),
          "heldout_clean_loss": s["heldout_clean_loss"],
          "wall_time_s": s["wall_time_s"]}


def regime(config, step: int) -> dict:
  """The run settings the report states (from the many-dose run's config)."""
  from poisonjax.data import vocabulary  # pylint: disable=g-import-not-at-top
  sp = vocabulary.get_vocabulary(config).tokenizer
  names = list(config.poison.triggers) + [config.poison.control_trigger]
  return {"size": config.model.size, "step": int(step),
          "tokens_per_param": float(config.train.tokens_per_param),
          "budget_mode": config.poison.budget_mode,
          "batch": int(config.train.batch_size), "seq_len": int(config.data.seq_len),
          "vocab_size": sp.GetPieceSize(),
          "pieces": {t: [sp.IdToPiece(i) for i in sp.EncodeAsIds(t)] for t in names}}


def pilot_rows(step: int, root: str = PILOT) -> dict:
  """{count: {"at_step": the pilot's eval row at `step` (None if it has
  none), "final": its last row}} for the pilot's runs found under root."""
  out = {}
  for n in PILOT_COUNTS:
    path = os.path.join(root, grids.run_name("cpu-xxs", n, 0, 1.0), rundir.EVAL)
    rows = files.read_jsonl(path)
    if rows:
      at = [r for r in rows if r["step"] == step]
      out[str(n)] = {"at_step": at[0] if at else None, "final": rows[-1]}
  return out


# ---- collect and report --------------------------------------------------------

def validation(many: dict, runs: dict, config) -> list[dict]:
  """Each single run's dose against the same trigger in the many-dose run."""
  samples, seed = int(config.eval.bootstrap_samples), int(config.eval.seed)
  dose = dict(zip(config.poison.triggers, config.poison.counts))
  out = []
  for name, (single_config, _, final) in runs.items():
    if name == MANY:
      continue
    t, n = single_config.poison.trigger, int(single_config.poison.count)
    if dose.get(t) != n:
      raise UserError(f"study.variants: the single run {name} trains {t!r} "
                      f"with {n} poisons, not a dose of the many-dose run; set "
                      "its poison.trigger to the trigger of that count")
    single = by_trigger(final)[t]
    out.append({"count": n, "trigger": t,
                "many_increase": many[t]["metrics"]["increase"],
                "single_increase": single["metrics"]["increase"],
                "many_success": many[t]["metrics"]["success_share"],
                "single_success": single["metrics"]["success_share"],
                **difference(many[t], single, samples, seed)})
  return sorted(out, key=lambda v: v["count"])


def results(study, root, runs: list[grids.Run]) -> dict:
  """results.json: dose-response, validation, cross-talk, curves, facts."""
  measured_runs = measured(study, root, runs, dose_label)
  if MANY not in measured_runs:
    raise UserError(f"study {study.name}: the many-dose run has not finished; "
                    "run `poisonjax study reproduce` without --partial")
  config, workdir, final = measured_runs[MANY]
  many = by_trigger(final)
  counts, triggers = list(config.poison.counts), list(config.poison.triggers)
  return {
      "counts": counts, "triggers": triggers,
      "control": config.poison.control_trigger,
      "dose_response": [{"trigger": t, "count": n, **many[t]["metrics"]}
                        for t, n in zip(triggers, counts)],
      "validation": validation(many, measured_runs, config),
      "crosstalk": [{"run": name, "trigger": t["trigger"], "role": t["role"],
                     **t["metrics"]} for name, (_, _, f) in measured_runs.items()
                    for t in f["triggers"]],
      "curves": per_trigger_curves(config, workdir),
      "facts": {name: run_facts(w) for name, (_, w, _) in measured_runs.items()},
      "regime": regime(config, final["step"]),
      "pilot": pilot_rows(final["step"]), "num_prompts": final["num_prompts"],
      "threshold": float(config.eval.threshold)}


def write_results(out, res: dict) -> None:
  """OUT/results.json, laid out as the committed one (indent 1)."""
  files.write_text_atomic(files.as_path(out) / RESULTS, json.dumps(res, indent=1))


def collect(study, root, runs: list[grids.Run], out) -> None:
  write_results(out, results(study, root, runs))


def report(study, out, provenance: list[str]) -> str:
  """The CSVs, doses.png and report.md from OUT/results.json alone."""
  del study
  res = files.read_json(files.as_path(out) / RESULTS)
  return doses_report.write_outputs(res, os.fspath(out), provenance)
