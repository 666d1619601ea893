"""Reproduce the poisoning study at CPU scale: plan -> run -> collect -> figures.

    python experiments/reproduce_cpu_micro.py            # ~2 hours on 2 cores
    nohup python experiments/reproduce_cpu_micro.py > runs/cpu_micro.log 2>&1 &

Runs the grid of configs/study_cpu_micro.py (see its docstring for the
sizes, counts, budget and the pilot behind them) one run after another in
--root, then writes into --out (docs/results/cpu_micro/): results.csv (every
evaluation point of every run), the four figures with the CSV behind each,
and report.md (final-results table, one computed sentence per figure, the
exact command, the machine and the wall time).

Resumable: kill it at any time and start the same command again; finished
runs are skipped and an interrupted run resumes from its last checkpoint.
`--config` runs another study the same way (the tests use cpu_nano).
"""

import argparse
import importlib.util
import json
import os
import platform
import shlex
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _load_study(path):
  spec = importlib.util.spec_from_file_location("study_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _machine() -> str:
  import jax
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} "
          f"{platform.release()}, Python {platform.python_version()}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")


def _train_wall(root, runs) -> tuple[float, int]:
  """Sum of the runs' own wall times (all sessions) and how many finished."""
  total, n = 0.0, 0
  for run in runs:
    path = os.path.join(root, run.name, "summary.json")
    if os.path.exists(path):
      with open(path) as f:
        total += float(json.load(f).get("wall_time_s", 0.0))
      n += 1
  return total, n


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default=os.path.join(REPO, "configs", "study_cpu_micro.py"))
  p.add_argument("--root", default=os.path.join(REPO, "runs", "study_cpu_micro"))
  p.add_argument("--out", default=os.path.join(REPO, "docs", "results", "cpu_micro"))
  p.add_argument("--partial", action="store_true",
                  help="Do not run anything: collect and plot the runs finished "
                  "so far (the report says how many).")
  args = p.parse_args(argv)

  from poisonjax import hardware, plots, study

  t0 = time.time()
  s = _load_study(args.config)
  runs = study.expand(s)
  plan = study.plan(s, cpu_flops=hardware.measure_cpu_flops())
  print(f"# study {s.name}: {len(runs)} runs", flush=True)
  print(study.format_plan(plan), flush=True)

  if not args.partial:
    study.run_grid(s, args.root, log=lambda m: print(m, flush=True))
  train_wall, finished = _train_wall(args.root, runs)
  if finished < len(runs) and not args.partial:
    print(f"{finished}/{len(runs)} runs finished; run the same command to go on")
    return 1
  all_runs = len(runs)
  runs = [r for r in runs
          if os.path.exists(os.path.join(args.root, r.name, "summary.json"))]
  if not runs:
    print("no finished runs yet")
    return 1

  os.makedirs(args.out, exist_ok=True)
  csv_path = os.path.join(args.out, "results.csv")
  study.write_csv(study.collect(args.root, runs), csv_path)
  plots.make_all(csv_path, args.out, threshold=float(s.base.eval.threshold))
  with open(os.path.join(args.out, "plan.txt"), "w") as f:
    f.write(study.format_plan(plan) + "\n")

  body = open(os.path.join(args.out, "report.md")).read()
  command = "python " + " ".join(shlex.quote(a) for a in
                                 [os.path.relpath(__file__, REPO)] + argv)
  head = body.split("\n## Final results", 1)
  how = "\n".join([
      "", "## How this was made", "",
      f"- Command (from the repository root): `{command}`",
      f"- Study config: `{os.path.relpath(args.config, REPO)}` ({all_runs} runs; "
      "plan in plan.txt)",
      f"- Runs finished and shown here: {len(runs)} of {all_runs}"
      + ("" if len(runs) == all_runs else
         " (PARTIAL: the grid was still running; rerun without --partial "
         "to finish it)"),
      f"- Machine: {_machine()}",
      f"- Wall time: {train_wall / 3600:.2f} h summed over the runs' own "
      f"sessions; this invocation {(time.time() - t0) / 60:.1f} min (runs "
      "finished by earlier invocations were skipped).",
      f"- Written by experiments/reproduce_cpu_micro.py on "
      f"{time.strftime('%Y-%m-%d %H:%M %Z')}; nothing edited by hand.", ""])
  with open(os.path.join(args.out, "report.md"), "w") as f:
    f.write(head[0] + how + "\n## Final results" + head[1])
  print(f"wrote {args.out}/report.md, results.csv and the figures")
  return 0


if __name__ == "__main__":
  sys.exit(main())
