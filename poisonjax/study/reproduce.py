"""A study from config to report: plan -> run -> collect -> report.

`poisonjax study reproduce --config=STUDY.py` runs the grid in ROOT
(resumable; `--worker` shares ROOT with other processes), collects the
finished runs into OUT and writes OUT/report.md with its figures. An
experiment with its own measurements supplies its collect/report steps
(experiment.py); everything else uses results.csv and report.generate.
How the results were made (command, machine, wall time) is kept in
OUT/provenance.json, so `--report_only` regenerates the report from the
committed files in OUT without the runs or any training. `--keep_collected`
goes on from OUT's committed results when ROOT was lost (a new machine or
checkout): the runs in OUT/results.csv are not trained again and their
rows are kept beside those of the runs finished in ROOT.
"""

from __future__ import annotations

import csv
import io
import os
import platform
import time

from poisonjax import files
from poisonjax import rundir
from poisonjax.errors import UserError
from poisonjax.study import experiment
from poisonjax.study import grids

PROVENANCE = "provenance.json"
RESULTS = "results.csv"
_KEPT = "- Rows of "  # The provenance line of --keep_collected.
_OLD_PROVENANCE = "## How this was made"  # Reports from before provenance.json.


def default_root(study) -> str:
  return grids.default_root(study)  # Where run_config resolves variant_run too.


def default_out(study) -> str:
  return study.get("out", "") or os.path.join("docs", "results", study.name)


def machine() -> str:
  """CPU model, cores, OS, Python, JAX and its platform: one line."""
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


def finished_runs(root, runs: list[grids.Run]) -> list[grids.Run]:
  root = files.as_path(root)
  return [r for r in runs if (root / r.name / rundir.SUMMARY).exists()]


def train_wall_s(root, runs: list[grids.Run]) -> float:
  """Sum of the finished runs' own wall times, over all their sessions."""
  root = files.as_path(root)
  return sum(float(files.read_json(root / r.name / rundir.SUMMARY)
                   .get("wall_time_s", 0.0)) for r in finished_runs(root, runs))


def provenance_lines(command: str, config_path: str, finished: int, total: int,
                     wall_s: float, t0: float) -> list[str]:
  return [
      f"- Command (from the repository root): `{command}`",
      f"- Study config: `{os.path.relpath(config_path)}` ({total} runs; plan "
      "in plan.txt)",
      f"- Runs finished and shown here: {finished} of {total}"
      + ("" if finished == total else
         " (PARTIAL: the grid was still running; rerun without --partial to "
         "finish it)"),
      f"- Machine: {machine()}",
      f"- Wall time: {wall_s / 3600:.2f} h summed over the runs' own sessions; "
      f"this invocation {(time.time() - t0) / 60:.1f} min (runs finished by "
      "earlier invocations were skipped).",
      f"- Written by `poisonjax study reproduce` on "
      f"{time.strftime('%Y-%m-%d %H:%M %Z')}; nothing edited by hand."]


def stored_provenance(out) -> list[str]:
  """OUT/provenance.json's lines, else an older report's provenance section."""
  out = files.as_path(out)
  if (out / PROVENANCE).exists():
    lines = files.read_json(out / PROVENANCE)["lines"]
  elif (out / "report.md").exists() and _OLD_PROVENANCE in (out / "report.md").read_text():
    section = (out / "report.md").read_text().split(_OLD_PROVENANCE, 1)[1]
    lines = [l for l in section.split("\n## ", 1)[0].splitlines() if l.startswith("- ")]
  else:
    return []
  # How the results were made; the last regeneration is said anew.
  return [l for l in lines if not l.startswith("- Report regenerated")]


def write_report(study, out, provenance: list[str], n_boot: int | None = None) -> str:
  """OUT/report.md from the files in OUT: the experiment's, else the standard."""
  files.write_json(files.as_path(out) / PROVENANCE, {"lines": list(provenance)})
  custom = experiment.hook(study, "report")
  if custom is not None:
    return custom(study, out, provenance)
  from poisonjax.study import analysis, report  # pylint: disable=g-import-not-at-top
  made = report.generate(
      str(files.as_path(out) / RESULTS), str(out),
      threshold=float(study.base.eval.threshold), study=study,
      provenance=provenance, n_boot=n_boot or analysis.BOOTSTRAP_SAMPLES)
  return made["report"]


def collect(study, root, runs: list[grids.Run], out, kept=None) -> None:
  """OUT's results files from the finished runs in ROOT and the kept rows
  (kept_results), in the grid's order."""
  custom = experiment.hook(study, "collect")
  if custom is not None:
    custom(study, files.as_path(root), runs, files.as_path(out))
    return
  from poisonjax.study import results  # pylint: disable=g-import-not-at-top
  by_run = dict(kept or {})
  for row in results.collect(root, runs):
    by_run.setdefault(row["run"], []).append(row)
  rows = [row for r in grids.expand(study) for row in by_run.get(r.name, [])]
  results.write_csv(rows, str(files.as_path(out) / RESULTS))


def kept_results(study, root, out) -> dict[str, list[dict]]:
  """--keep_collected: OUT/results.csv's rows of finished runs that are not
  finished in ROOT, by run name (strings, written back unchanged).

  Raises UserError if there is no such file, the study collects its own
  files, or the file holds a run this study does not have (another study's
  results must not be mixed in).
  """
  flag = "--keep_collected"
  if experiment.hook(study, "collect") is not None:
    raise UserError(f"{flag}: study {study.name} collects its own files; "
                    f"run it without {flag}")
  path = files.as_path(out) / RESULTS
  if not path.exists():
    raise UserError(f"{flag}: {path} not found; nothing to keep (run "
                    f"without {flag}, or point --out at the earlier results)")
  rows = list(csv.DictReader(io.StringIO(path.read_text())))
  runs = grids.expand(study)
  unknown = sorted({row.get("run", "") for row in rows} - {r.name for r in runs})
  if unknown:
    raise UserError(f"{flag}: {path} holds run {unknown[0]!r}, which study "
                    f"{study.name} does not have ({len(unknown)} such); keep "
                    "results only of the same study (or drop the flag)")
  # Raw strings, not plots.read_csv's parsed numbers: written back unchanged.
  done = {r.name for r in finished_runs(root, runs)}
  keep = {row["run"] for row in rows if row.get("finished") == "1"} - done
  kept = {}
  for row in rows:
    if row["run"] in keep:
      kept.setdefault(row["run"], []).append(row)
  return kept


def kept_provenance(out, kept: dict) -> list[str]:
  """Provenance lines saying which rows were kept and how they were made
  (the first collection's lines, not nested again on later invocations)."""
  if not kept:
    return []
  earlier = stored_provenance(out)
  if any(l.startswith(_KEPT) for l in earlier):
    earlier = [l[2:] for l in earlier if l.startswith("  ")]
  return [f"{_KEPT}{len(kept)} runs kept from the earlier results in this "
          "directory (--keep_collected; their run directories are not in "
          "ROOT, and the wall time above is of ROOT's runs only). How those "
          "were made:"] + ["  " + l for l in earlier]


def regenerate(study, out, command: str, n_boot: int | None = None) -> str:
  """--report_only: the report from OUT's committed files, provenance kept."""
  if not files.as_path(out).is_dir():
    raise UserError(f"--out={out}: no such directory; run without "
                    "--report_only first")
  lines = stored_provenance(out) + [
      f"- Report regenerated from the results in {out} by `{command}` on "
      f"{time.strftime('%Y-%m-%d %H:%M %Z')} (no training)."]
  return write_report(study, out, lines, n_boot)


def reproduce(study, config_path: str, *, root, out, command: str,
              partial: bool = False, worker: bool = False,
              keep_collected: bool = False,
              n_boot: int | None = None, log=print) -> int:
  """Runs (unless partial), collects and reports one study; the exit status.

  keep_collected: runs already in OUT/results.csv count as done (kept_results).
  """
  from poisonjax import hardware  # pylint: disable=g-import-not-at-top
  # The functions, by their module: the package's name `plan` is the function.
  from poisonjax.study.plan import format_plan, plan as plan_study  # pylint: disable=g-import-not-at-top
  from poisonjax.study import runner  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  runs = grids.expand(study)
  plan = plan_study(study, cpu_flops=hardware.measure_cpu_flops())
  log(f"# study {study.name}: {len(runs)} runs")
  log(format_plan(plan))
  kept = kept_results(study, root, out) if keep_collected else {}
  if kept:
    log(f"{len(kept)} runs kept from {files.as_path(out) / RESULTS}: not "
        "trained again")
  if not partial:
    runner.run_grid(study, root, log=log, worker=worker, skip=kept.keys())
  done = finished_runs(root, runs)
  done_names = {r.name for r in done}  # A kept run another worker trained.
  kept = {name: rows for name, rows in kept.items() if name not in done_names}
  n_done = len(done) + len(kept)
  if n_done < len(runs) and not partial:
    log(f"{n_done}/{len(runs)} runs finished; run the same command to go on")
    return 1
  if not n_done:
    log("no finished runs yet")
    return 1
  files.as_path(out).mkdir(parents=True, exist_ok=True)
  earlier = kept_provenance(out, kept)
  collect(study, root, done, out, kept)
  files.write_text_atomic(files.as_path(out) / "plan.txt",
                          format_plan(plan) + "\n")
  lines = provenance_lines(command, config_path, n_done, len(runs),
                           train_wall_s(root, runs), t0) + earlier
  log(f"wrote {write_report(study, out, lines, n_boot)} and the results in {out}")
  return 0
