"""One run, many doses: train, evaluate every trigger on every run, report.

    python experiments/exp_doses.py                 # resumable
    python experiments/exp_doses.py --only doses --train_only   # one run per process
    nohup nice -n 10 python experiments/exp_doses.py > /tmp/exp_doses.log 2>&1 &
    python experiments/exp_doses.py --report_only   # from OUT/results.json

Trains the runs of --config (default configs/exp_doses.py: one cpu-xxs run
with five triggers at 3-300 poisons, and the 100 and 300 doses alone) under
--root (default runs/exp_doses; a finished run is skipped, an interrupted
one resumes), evaluates each final checkpoint on every trigger of the
experiment and the never-poisoned control (one Evaluator, the same 128
clean prompts and sampling seed for all runs; per-prompt perplexities kept
in WORKDIR/final_doses.json), then writes into --out (default
docs/results/doses/; exp_doses_report.py) results.json, dose_response.csv, crosstalk.csv,
doses.png and report.md. Nothing in the report is written by hand; a
previous design's results kept in OUT/previous_shared_shape/results.json
are summed up in one line of the findings.
"""

import argparse
import copy
import importlib.util
import json
import os
import shlex
import sys
import time

import numpy as np

from poisonjax import rundir

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import exp_doses_report as report  # pylint: disable=g-import-not-at-top,wrong-import-position

FINAL_FILE = "final_{name}.json"  # Per experiment: a run can serve two.


# ---- configs and training ---------------------------------------------------

def load_config(path):
  spec = importlib.util.spec_from_file_location("experiment_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def run_config(exp, fields: dict, max_steps: int = 0):
  """The experiment's base with one run's poison fields, validated;
  max_steps > 0 stops it there (same budget and schedule)."""
  from poisonjax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = copy.deepcopy(exp.base)
  c.train.max_steps = int(max_steps)
  for key, value in fields.items():
    c.poison[key] = tuple(value) if isinstance(value, list) else value
  return config_lib.validate(c)


def is_finished(workdir: str, max_steps: int = 0) -> bool:
  """Trained to its end, or to max_steps when > 0."""
  path = os.path.join(workdir, rundir.SUMMARY)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    s = json.load(f)
  return bool(s.get("finished")) or 0 < max_steps <= int(s.get("final_step", 0))


def reusable(workdir: str, config) -> bool:
  """Whether a finished run in workdir is this config's run."""
  from poisonjax import run_history  # pylint: disable=g-import-not-at-top
  from poisonjax.errors import UserError  # pylint: disable=g-import-not-at-top
  if not workdir or not is_finished(workdir, int(config.train.max_steps)):
    return False
  try:
    changes = run_history.check_resume(workdir, config, allow_change=False)
  except UserError:
    return False
  return changes is not None


def wait_while_training(workdir: str, max_steps: int, quiet_s: float = 600.0) -> None:
  """Waits while another process trains the run in workdir (its files
  changed within quiet_s), so that a run two experiments share is trained
  once."""
  while workdir and os.path.isdir(workdir) and not is_finished(workdir, max_steps):
    changed = max((os.path.getmtime(os.path.join(workdir, f))
                   for f in os.listdir(workdir)), default=0.0)
    if time.time() - changed > quiet_s:
      return
    print(f"waiting for the run being trained in {workdir}", flush=True)
    time.sleep(60)


def train_runs(exp, root: str, only: str = "", max_steps: int = 0) -> dict:
  """{name: (config, workdir)}, every run (or those in `only`) trained or
  resumed to its end."""
  from poisonjax import train  # pylint: disable=g-import-not-at-top
  out = {}
  reuse = exp.get("reuse", {}) or {}
  chosen = [n for n in only.split(",") if n]
  unknown = set(chosen) - set(exp.runs.keys())
  if unknown:
    raise SystemExit(f"--only: unknown runs {sorted(unknown)}; the config has "
                     f"{sorted(exp.runs.keys())}")
  for name, fields in exp.runs.items():
    if chosen and name not in chosen:
      continue
    config = run_config(exp, fields.to_dict(), max_steps)
    other = os.path.join(REPO, reuse[name]) if name in reuse else ""
    wait_while_training(other, max_steps)
    if reusable(other, config):
      print(f"{name}: reusing the finished run in {other}", flush=True)
      out[name] = (config, other)
      continue
    workdir = os.path.join(root, name)
    if not is_finished(workdir, max_steps):
      print(f"{name}: training in {workdir}", flush=True)
      train.run_or_exit(config, workdir)
    out[name] = (config, workdir)
  return out


# ---- the final evaluation on every trigger ----------------------------------

def final_eval(config, workdir: str, triggers: list[str], name: str) -> dict:
  """Every trigger's metrics and per-prompt perplexities at the last step
  (cached in WORKDIR/final_NAME.json, NAME the experiment's)."""
  from poisonjax import evaluate, model as model_lib, restore, sharding  # pylint: disable=g-import-not-at-top
  from poisonjax.data import vocabulary  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, FINAL_FILE.format(name=name))
  step = restore.pick_step(workdir, None)
  if os.path.exists(path):
    with open(path) as f:
      done = json.load(f)
    if done["step"] == step and [t["trigger"] for t in done["triggers"]] == triggers:
      return done
  vocab = vocabulary.get_vocabulary(config)
  model_cfg = model_lib.ModelConfig.from_config(config, vocab.vocab_size)
  mesh = sharding.make_mesh(config.mesh)
  params, step = restore.restore_params(workdir, model_cfg, step, mesh=mesh)
  ev = evaluate.Evaluator(config, model_cfg, vocab, mesh, triggers=triggers)
  out = {"step": int(step), "num_prompts": ev.num, "triggers": [
      {"trigger": r.trigger, "role": r.role, "metrics": r.metrics,
       "clean_ppl": np.exp(r.clean_nll).tolist(),
       "triggered_ppl": np.exp(r.triggered_nll).tolist()}
      for r in ev.evaluate_triggers(params)]}
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(out, f)
  os.replace(tmp, path)
  return out


def evaluate_runs(runs: dict, triggers: list[str], exp_name: str) -> dict:
  return {name: final_eval(cfg, wd, triggers, exp_name)
          for name, (cfg, wd) in runs.items()}


# ---- numbers ----------------------------------------------------------------

def increases(entry: dict) -> np.ndarray:
  """Per-prompt increase (triggered minus clean perplexity) of one trigger."""
  return np.asarray(entry["triggered_ppl"]) - np.asarray(entry["clean_ppl"])


def by_trigger(final: dict) -> dict:
  return {t["trigger"]: t for t in final["triggers"]}


def difference(a: dict, b: dict, samples: int, seed: int) -> dict:
  """mean increase of a minus b, with a 95% interval: the same prompts in
  both, so pairs are resampled together (backdoor.bootstrap_ci)."""
  from poisonjax import backdoor  # pylint: disable=g-import-not-at-top
  ia, ib = increases(a), increases(b)
  lo, hi = backdoor.bootstrap_ci(ib, ia, samples, seed)
  return {"difference": float(ia.mean() - ib.mean()), "ci_low": lo, "ci_high": hi}


def per_trigger_curves(config, workdir: str) -> list[dict]:
  """The many-dose run's eval.jsonl, one row per trigger, with the poisons
  of that trigger seen by each step (from the manifest)."""
  from poisonjax import backdoor, evaluate, files  # pylint: disable=g-import-not-at-top
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
  from poisonjax import files  # pylint: disable=g-import-not-at-top
  s = files.read_json(os.path.join(workdir, rundir.SUMMARY))
  m = files.read_json(os.path.join(workdir, rundir.MANIFEST))
  return {"params": s["params"]["total"], "num_steps": s["num_steps"],
          "stream_tokens": s["stream_tokens"], "clean_tokens": m["clean_tokens"],
          "poison_tokens": m["poison_tokens"], "poisons": len(m["poisons"]),
          "heldout_clean_loss": s["heldout_clean_loss"],
          "wall_time_s": s["wall_time_s"]}


def collect(exp, runs: dict, finals: dict) -> dict:
  """results.json: dose-response, validation, cross-talk, curves, facts."""
  samples, seed = int(exp.base.eval.bootstrap_samples), int(exp.base.eval.seed)
  counts, triggers = list(exp.counts), list(exp.triggers)
  many = by_trigger(finals["doses"])
  dose = [{"trigger": t, "count": n, **many[t]["metrics"]}
          for t, n in zip(triggers, counts)]
  control = exp.base.poison.control_trigger
  validation = []
  for n in exp.compare:
    if f"single_{n}" not in finals:
      continue  # Not run (--only).
    t = triggers[counts.index(n)]
    single = by_trigger(finals[f"single_{n}"])[t]
    validation.append({"count": n, "trigger": t,
                       "many_increase": many[t]["metrics"]["increase"],
                       "single_increase": single["metrics"]["increase"],
                       "many_success": many[t]["metrics"]["success_share"],
                       "single_success": single["metrics"]["success_share"],
                       **difference(many[t], single, samples, seed)})
  crosstalk = [{"run": name, "trigger": t["trigger"], "role": t["role"],
                **t["metrics"]} for name, f in finals.items() for t in f["triggers"]]
  cfg, wd = runs["doses"]
  step = finals["doses"]["step"]
  return {"counts": counts, "triggers": triggers, "control": control,
          "dose_response": dose, "validation": validation,
          "crosstalk": crosstalk, "curves": per_trigger_curves(cfg, wd),
          "facts": {name: run_facts(w) for name, (_, w) in runs.items()},
          "regime": regime(cfg, step),
          "pilot": pilot_rows(step), "num_prompts": finals["doses"]["num_prompts"],
          "threshold": float(exp.base.eval.threshold)}


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


def pilot_rows(step: int) -> dict:
  """The committed single-trigger pilot (same regime and seeds, <SUDO>, 64
  prompts): {count: {"at_step": its eval row at `step` (None if it has
  none), "final": its last row}}."""
  root = os.path.join(REPO, "docs", "results", "cpu_chinchilla", "pilot")
  out = {}
  for n in (3, 10, 30, 100, 300):
    path = os.path.join(root, f"size=cpu-xxs_n={n}_seed=0_data=1.0", rundir.EVAL)
    if os.path.exists(path):
      with open(path) as f:
        rows = [json.loads(l) for l in f if l.strip()]
      at = [r for r in rows if r["step"] == step]
      out[str(n)] = {"at_step": at[0] if at else None, "final": rows[-1]}
  return out


def provenance_lines(command: str, res: dict, t0: float) -> list[str]:
  from reproduce_study import machine  # pylint: disable=g-import-not-at-top
  wall = sum(x["wall_time_s"] for x in res["facts"].values())
  return [f"- Command (from the repository root): `{command}`",
          f"- Machine: {machine()}; shared with other jobs, niced.",
          f"- Training wall time {wall / 60:.1f} min, summed over each run's "
          "last session (a run stopped and resumed counts its last session "
          f"only); this invocation {(time.time() - t0) / 60:.1f} min.",
          f"- Written on {time.strftime('%Y-%m-%d %H:%M %Z')}."]


def parse(argv, doc, config, root, out):
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("--config", default=config)
  p.add_argument("--root", default=root)
  p.add_argument("--out", default=out)
  p.add_argument("--report_only", action="store_true",
                 help="Regenerate the report and figure from OUT/results.json.")
  p.add_argument("--max_steps", type=int, default=0,
                 help="Stop every run at this step (0: train to the end); the "
                 "budget and schedule stay, the report says where it stopped.")
  p.add_argument("--only", default="",
                 help="Comma-separated run names: only these runs (trained, "
                 "evaluated, reported); default all of the config's.")
  p.add_argument("--train_only", action="store_true",
                 help="Stop after training (several processes can train "
                 "different runs at once with --only; run again without it "
                 "to evaluate and report).")
  return p.parse_args(argv)


def main(argv) -> int:
  args = parse(argv, __doc__, os.path.join(REPO, "configs", "exp_doses.py"),
               os.path.join(REPO, "runs", "exp_doses"),
               os.path.join(REPO, "docs", "results", "doses"))
  command = "python " + " ".join(shlex.quote(a) for a in
                                 ["experiments/exp_doses.py"] + list(argv))
  if args.report_only:
    with open(os.path.join(args.out, "results.json")) as f:
      res = json.load(f)
    report.write_outputs(res, args.out, res.pop("provenance"))
    return 0
  t0 = time.time()
  exp = load_config(args.config)
  runs = train_runs(exp, args.root, args.only, args.max_steps)
  if args.train_only:
    return 0
  names = list(exp.triggers) + [exp.base.poison.control_trigger]
  finals = evaluate_runs(runs, names, exp.name)
  res = collect(exp, runs, finals)
  report.write_outputs(res, args.out, provenance_lines(command, res, t0))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
