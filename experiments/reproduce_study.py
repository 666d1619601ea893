"""The reproduce scripts' shared driver: plan -> run -> collect -> report.

experiments/reproduce_cpu_micro.py and reproduce_cpu_chinchilla.py call
`main` with their defaults. It runs a study's grid in --root (resumable),
collects every evaluation into OUT/results.csv and writes the report with
poisonjax.study.report (figures, N50, count vs share, regime, caveats).
How the results were made (command, machine, wall time) is kept in
OUT/provenance.json, so `--report_only` regenerates the report from a
committed results.csv without the runs or any training.

WORKERS: on a small CPU machine, two processes each pinned to one core and
single-threaded train ~1.1-1.3x the tokens/s of one process on both:

  for core in 0 1; do
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false \
    nohup taskset -c $core python experiments/reproduce_cpu_chinchilla.py \
      --worker > runs/worker$core.log 2>&1 &
  done

The last worker to finish writes the report (the others stop, exit 1).
"""

import argparse
import importlib.util
import json
import os
import platform
import shlex
import sys
import time

from poisonjax import rundir

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
_OLD_PROVENANCE = "## How this was made"


def load_study(path):
  spec = importlib.util.spec_from_file_location("study_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def machine() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} "
          f"{platform.release()}, Python {platform.python_version()}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")


def train_wall(root, runs) -> tuple[float, int]:
  """Sum of the runs' own wall times (all sessions) and how many finished."""
  total, n = 0.0, 0
  for run in runs:
    path = os.path.join(root, run.name, rundir.SUMMARY)
    if os.path.exists(path):
      with open(path) as f:
        total += float(json.load(f).get("wall_time_s", 0.0))
      n += 1
  return total, n


def _provenance_lines(command, config, finished, total, wall_s, t0, script) -> list:
  return [
      f"- Command (from the repository root): `{command}`",
      f"- Study config: `{os.path.relpath(config, REPO)}` ({total} runs; plan "
      "in plan.txt)",
      f"- Runs finished and shown here: {finished} of {total}"
      + ("" if finished == total else
         " (PARTIAL: the grid was still running; rerun without --partial to "
         "finish it)"),
      f"- Machine: {machine()}",
      f"- Wall time: {wall_s / 3600:.2f} h summed over the runs' own sessions; "
      f"this invocation {(time.time() - t0) / 60:.1f} min (runs finished by "
      "earlier invocations were skipped).",
      f"- Written by {script} on {time.strftime('%Y-%m-%d %H:%M %Z')}; nothing "
      "edited by hand."]


def stored_provenance(out) -> list:
  """OUT/provenance.json's lines, else the old report's provenance section."""
  path = os.path.join(out, "provenance.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)["lines"]
  report = os.path.join(out, "report.md")
  if not os.path.exists(report):
    return []
  text = open(report).read()
  if _OLD_PROVENANCE not in text:
    return []
  section = text.split(_OLD_PROVENANCE, 1)[1].split("\n## ", 1)[0]
  return [l for l in section.splitlines()
          if l.startswith("- ") and not l.startswith("- Report regenerated")]


def _write_provenance(out, lines) -> None:
  with open(os.path.join(out, "provenance.json"), "w") as f:
    json.dump({"lines": lines}, f, indent=1)
    f.write("\n")


def _parser(doc, config, root, out):
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("--config", default=config)
  p.add_argument("--root", default=root)
  p.add_argument("--out", default=out)
  p.add_argument("--partial", action="store_true",
                 help="Do not run anything: collect and report the runs "
                 "finished so far (the report says how many).")
  p.add_argument("--report_only", action="store_true",
                 help="Do not run or collect: regenerate the report and "
                 "figures from OUT/results.csv (its provenance kept).")
  p.add_argument("--worker", action="store_true",
                 help="Share --root with other --worker processes, each "
                 "training the next run nobody holds (poisonjax/study/runner.py). "
                 "On 2 cores: two workers, each pinned to one core and "
                 "single-threaded: see WORKERS below.")
  p.add_argument("--bootstrap", type=int, default=None,
                 help="Bootstrap resamples of the fits (default: "
                 "poisonjax.study.analysis.BOOTSTRAP_SAMPLES).")
  return p


def _report(args, s, provenance):
  from poisonjax.study import analysis, report  # pylint: disable=g-import-not-at-top
  made = report.generate(
      os.path.join(args.out, "results.csv"), args.out,
      threshold=float(s.base.eval.threshold), study=s, provenance=provenance,
      n_boot=args.bootstrap or analysis.BOOTSTRAP_SAMPLES)
  print(f"wrote {made['report']}, results.csv and the figures")
  return made


def _regenerate(args, s, command) -> int:
  if not os.path.exists(os.path.join(args.out, "results.csv")):
    print(f"--report_only: no {args.out}/results.csv; run without it first")
    return 1
  lines = stored_provenance(args.out)
  _write_provenance(args.out, lines)
  _report(args, s, lines + [
      f"- Report regenerated from results.csv by `{command}` on "
      f"{time.strftime('%Y-%m-%d %H:%M %Z')} (no training)."])
  return 0


def main(argv, *, doc, script, config, root, out) -> int:
  """Runs (unless --partial/--report_only), collects and reports one study."""
  args = _parser(doc, config, root, out).parse_args(argv)
  command = "python " + " ".join(shlex.quote(a) for a in [script] + list(argv))
  if not os.path.exists(args.config):
    print(f"--config={args.config}: no such study config", file=sys.stderr)
    return 2
  s = load_study(args.config)
  if args.report_only:
    return _regenerate(args, s, command)

  from poisonjax import hardware, study  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  runs = study.expand(s)
  plan = study.plan(s, cpu_flops=hardware.measure_cpu_flops())
  print(f"# study {s.name}: {len(runs)} runs", flush=True)
  print(study.format_plan(plan), flush=True)
  if not args.partial:
    study.run_grid(s, args.root, log=lambda m: print(m, flush=True),
                   worker=args.worker)
  wall_s, finished = train_wall(args.root, runs)
  if finished < len(runs) and not args.partial:
    print(f"{finished}/{len(runs)} runs finished; run the same command to go on")
    return 1
  done = [r for r in runs
          if os.path.exists(os.path.join(args.root, r.name, rundir.SUMMARY))]
  if not done:
    print("no finished runs yet")
    return 1
  os.makedirs(args.out, exist_ok=True)
  study.write_csv(study.collect(args.root, done), os.path.join(args.out, "results.csv"))
  with open(os.path.join(args.out, "plan.txt"), "w") as f:
    f.write(study.format_plan(plan) + "\n")
  lines = _provenance_lines(command, args.config, len(done), len(runs), wall_s,
                            t0, script)
  _write_provenance(args.out, lines)
  _report(args, s, lines)
  return 0
