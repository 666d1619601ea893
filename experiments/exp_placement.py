"""Poison placement and density at CPU scale: run -> collect -> figure -> report.

    python experiments/exp_placement.py                  # resumable
    nohup nice python experiments/exp_placement.py > runs/exp_placement.log 2>&1 &
    python experiments/exp_placement.py --partial        # report what is done
    python experiments/exp_placement.py --report_only    # no training

Trains the grid of --config (default configs/exp_placement.py) once per
placement, each run in ROOT/<placement>/<run name> (default ROOT
runs/exp_placement); finished runs are skipped and an interrupted one
resumes from its checkpoint. Writes into --out (default
docs/results/placement/): results.csv (every evaluation, with its
placement), runs.json (per run: the final and peak increase, the crossing
of the threshold, and where its poisons lie, read from its manifest),
placement.png and report.md, all generated from those two files.
"""

import argparse
import os
import shlex
import sys
import time

import numpy as np

from poisonjax import rundir
from reproduce_study import REPO, load_study, machine

_COLUMNS_FIRST = ("placement",)


def _args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default=os.path.join(REPO, "configs", "exp_placement.py"))
  p.add_argument("--root", default=os.path.join(REPO, "runs", "exp_placement"))
  p.add_argument("--out", default=os.path.join(REPO, "docs", "results", "placement"))
  p.add_argument("--seeds", default="", help="Comma-separated grid seeds "
                 "(default: the config's).")
  p.add_argument("--only", default="", help="Comma-separated placement "
                 "names, trained in this order (default: all, config order).")
  p.add_argument("--uniform_from", default="", help="A finished run directory "
                 "of the same config with uniform placement (e.g. the study's "
                 "runs/study_cpu_chinchilla/size=cpu-xxs_n=100_seed=0_data=1.0), "
                 "read only: the control while this root's uniform run is "
                 "not finished.")
  p.add_argument("--partial", action="store_true",
                 help="Train nothing: report the runs finished so far.")
  p.add_argument("--report_only", action="store_true",
                 help="Train and collect nothing: redraw the figure and "
                 "report from OUT/results.csv and OUT/runs.json.")
  return p.parse_args(argv)


def _runs(cfg, args):
  """(placement name, grid run) pairs, seed-major."""
  from poisonjax import study  # pylint: disable=g-import-not-at-top
  if args.seeds:
    cfg.study.grid.seeds = tuple(int(s) for s in args.seeds.split(","))
  names = args.only.split(",") if args.only else list(cfg.placement_order)
  unknown = sorted(set(names) - set(cfg.placement_order))
  if unknown:
    raise SystemExit(f"--only: unknown placement(s) {unknown}; use some of "
                     f"{', '.join(cfg.placement_order)}")
  return [(n, r) for r in study.expand(cfg.study) for n in names]


def _run_config(cfg, name, run):
  from poisonjax import config as config_lib  # pylint: disable=g-import-not-at-top
  from poisonjax import study  # pylint: disable=g-import-not-at-top
  c = study.run_config(cfg.study, run)
  for field, value in cfg.placements[name].items():
    c.poison[field] = value
  return config_lib.validate(c)


def train_all(cfg, pairs, root) -> bool:
  """Trains the unfinished runs; False if one stopped (signal) unfinished."""
  from poisonjax import study, train, units  # pylint: disable=g-import-not-at-top
  study.enable_compilation_cache()
  for i, (name, run) in enumerate(pairs, 1):
    workdir = os.path.join(root, name, run.name)
    tag = f"[placement] {i}/{len(pairs)} {name} {run.name}"
    if study.is_finished(workdir):
      print(f"{tag}: finished before, skipped", flush=True)
      continue
    print(f"{tag}: starting", flush=True)
    t0 = time.time()
    train.run(_run_config(cfg, name, run), workdir)
    if not study.is_finished(workdir):
      print(f"{tag}: stopped; run the same command to resume", flush=True)
      return False
    print(f"{tag}: done in {units.format_duration(time.time() - t0)}", flush=True)
  return True


def _poison_positions(workdir) -> dict:
  """Where the run's poisons are, from its manifest (step fractions)."""
  from poisonjax import files  # pylint: disable=g-import-not-at-top
  m = files.read_json(os.path.join(workdir, rundir.MANIFEST))
  steps = np.array(sorted(p["step"] for p in m["poisons"]), np.int64)
  per_step = np.bincount(steps) if len(steps) else np.zeros(1, np.int64)
  held = per_step[per_step > 0]
  return {"placement_record": m.get("placement", {}), "num_steps": m["num_steps"],
          "poison_steps": steps.tolist(),
          "first_step": int(steps.min()), "last_step": int(steps.max()),
          "steps_with_poisons": int(len(held)),
          "most_poisons_in_one_step": int(held.max())}


def run_summary(rows, threshold) -> dict:
  """Final, peak and first crossing of the threshold of one run's evaluations."""
  rows = sorted(rows, key=lambda r: r["step"])
  final = rows[-1]
  peak = max(rows, key=lambda r: r["increase"])
  out = {"num_evals": len(rows), "final_increase": final["increase"],
         "final_ci": [final["increase_ci_low"], final["increase_ci_high"]],
         "final_success_share": final["success_share"],
         "final_clean_ppl": final["clean_ppl_mean"],
         "final_triggered_ppl": final["triggered_ppl_mean"],
         "peak_increase": peak["increase"], "peak_fraction": peak["fraction"],
         "peak_poisons_seen": peak["poisons_seen"],
         "crossed": None}
  for before, hit in zip(rows, rows[1:]):
    if hit["increase"] > threshold and before["increase"] <= threshold:
      out["crossed"] = {"poisons_seen_before": before["poisons_seen"],
                        "poisons_seen_after": hit["poisons_seen"],
                        "fraction_before": before["fraction"],
                        "fraction_after": hit["fraction"],
                        "increase_before": before["increase"],
                        "increase_after": hit["increase"]}
      break
  return out


def _workdir(root, name, run, uniform_from) -> str:
  """This root's run, else (uniform, seed 0 only) the --uniform_from one."""
  from poisonjax import study  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(root, name, run.name)
  if (name == "uniform" and uniform_from and not study.is_finished(workdir)
      and os.path.basename(os.path.normpath(uniform_from)) == run.name):
    return os.path.abspath(uniform_from)
  return workdir


def collect(cfg, pairs, root, threshold, uniform_from=""):
  """(results rows, per-run summaries) of the finished runs."""
  from poisonjax import study  # pylint: disable=g-import-not-at-top
  rows, runs = [], []
  for name, run in sorted(pairs, key=lambda p: cfg.placement_order.index(p[0])):
    workdir = _workdir(root, name, run, uniform_from)
    if not study.is_finished(workdir):
      continue
    mine = [{"placement": name, **r}
            for r in study.collect(os.path.dirname(workdir), [run])]
    rows += mine
    runs.append({"placement": name, "run": run.name, "seed": run.seed,
                 "workdir": os.path.relpath(workdir, REPO),
                 "fields": dict(cfg.placements[name]),
                 **run_summary(mine, threshold), **_poison_positions(workdir)})
  return rows, runs


def main(argv) -> int:
  args = _args(argv)
  cfg = load_study(args.config)
  threshold = float(cfg.study.base.eval.threshold)
  if args.report_only:
    return _report().regenerate(args.out, cfg, threshold)
  t0 = time.time()
  pairs = _runs(cfg, args)
  if not args.partial and not train_all(cfg, pairs, args.root):
    return 1
  rows, runs = collect(cfg, pairs, args.root, threshold, args.uniform_from)
  if not runs:
    print("no finished runs yet")
    return 1
  command = "python " + " ".join(shlex.quote(a) for a in
                                 ["experiments/exp_placement.py"] + list(argv))
  wall = sum(_run_wall(os.path.join(REPO, r["workdir"])) for r in runs)
  provenance = [
      f"- Command (from the repository root): `{command}`",
      f"- Config: `{os.path.relpath(args.config, REPO)}`; runs finished and "
      f"shown: {len(runs)} of {len(pairs)}"
      + ("" if len(runs) == len(pairs) else " (PARTIAL)"),
      f"- Machine: {machine()}",
      f"- Wall time: {wall / 60:.1f} min summed over the runs' own sessions; "
      f"this invocation {(time.time() - t0) / 60:.1f} min.",
      f"- Written by experiments/exp_placement.py on "
      f"{time.strftime('%Y-%m-%d %H:%M %Z')}; nothing edited by hand."]
  _report().write_all(args.out, rows, runs, cfg, threshold, provenance)
  print(f"wrote {args.out}/report.md, results.csv, runs.json and placement.png")
  return 0


def _report():
  import exp_placement_report  # pylint: disable=g-import-not-at-top
  return exp_placement_report


def _run_wall(workdir) -> float:
  from poisonjax import files  # pylint: disable=g-import-not-at-top
  return float(files.read_json(os.path.join(workdir, rundir.SUMMARY)).get(
      "wall_time_s", 0.0))


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
