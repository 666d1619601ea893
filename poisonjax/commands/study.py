"""`poisonjax study plan|run|status|collect|figures`: a grid of runs (poisonjax.study)."""

from __future__ import annotations

from absl import flags

from poisonjax import files
from poisonjax.commands import NO_CONFIG, STUDY_CONFIG, Command
from poisonjax.errors import UserError


def _root_flag(fv, what: str) -> None:
  flags.DEFINE_string("root", None, f"Grid directory holding one workdir per "
                      f"run ({what}).", flag_values=fv)


def _root(args) -> str:
  if not args.flags.root:
    raise UserError("--root: required; e.g. --root=runs/study")
  files.check_reachable(args.flags.root, "--root")
  return args.flags.root


def _plan_flags(fv) -> None:
  flags.DEFINE_float("mfu", 0.4, "Assumed model FLOPs utilization for the "
                     "chip-hours.", flag_values=fv)


def plan(args) -> int:
  from poisonjax import hardware, study  # pylint: disable=g-import-not-at-top
  p = study.plan(args.config, mfu=args.flags.mfu,
                 cpu_flops=hardware.measure_cpu_flops())
  print(f"study {args.config.name}: {len(p['runs'])} runs")
  print(study.format_plan(p))
  return 0


def _run_flags(fv) -> None:
  _root_flag(fv, "required")
  flags.DEFINE_string("only", "", "Only the runs whose name contains this.",
                      flag_values=fv)
  flags.DEFINE_bool("print_only", False, "Print one `poisonjax train` command "
                    "per run (for a launcher) instead of running.",
                    flag_values=fv)


def run(args) -> int:
  from poisonjax import study  # pylint: disable=g-import-not-at-top
  root, only = _root(args), args.flags.only
  if args.flags.print_only:
    for r in study.select(study.expand(args.config), only):
      print(study.launch_command(args.config_file, r.name,
                                 str(files.as_path(root) / r.name), args.overrides))
    return 0
  study.run_grid(args.config, root, only, log=lambda s: print(s, flush=True))
  return 0


def _status_flags(fv) -> None:
  _root_flag(fv, "required")
  flags.DEFINE_bool("all", False, "List finished runs too.", flag_values=fv)


def status(args) -> int:
  from poisonjax.study import status as status_lib  # pylint: disable=g-import-not-at-top
  root = _root(args)
  if not files.as_path(root).is_dir():
    raise UserError(f"--root={root}: no such directory; start the grid with "
                    "`poisonjax study run` (or check the path)")
  st = status_lib.status(args.config, root)
  print(status_lib.format_status(st, all_runs=args.flags.all))
  return 0


def _collect_flags(fv) -> None:
  _root_flag(fv, "required")
  flags.DEFINE_string("out", None, "CSV path (default: ROOT/results.csv).",
                      flag_values=fv)
  flags.DEFINE_bool("strict", False, "Stop at a run with a damaged file "
                    "instead of skipping it with a warning.", flag_values=fv)


def collect(args) -> int:
  from poisonjax import study  # pylint: disable=g-import-not-at-top
  root = _root(args)
  runs = study.expand(args.config) if args.config is not None else None
  rows = study.collect(root, runs, strict=args.flags.strict)
  if not rows:
    raise UserError(f"--root={root}: no run with evaluations found; run "
                    "`poisonjax study run` first")
  out = args.flags.out or str(files.as_path(root) / "results.csv")
  study.write_csv(rows, out)
  print(f"wrote {len(rows)} evaluation rows of "
        f"{len({r['run'] for r in rows})} runs to {out}")
  return 0


def _figures_flags(fv) -> None:
  _root_flag(fv, "required")
  flags.DEFINE_string("out", None, "Directory of the figures and report.md "
                      "(default: ROOT/figures).", flag_values=fv)


def figures(args) -> int:
  from poisonjax import study  # pylint: disable=g-import-not-at-top
  made = study.make_figures(_root(args), args.flags.out)
  for name, paths in made["figures"].items():
    print(f"{name}: {paths['png']}")
  print(f"report: {made['report']}")
  return 0


def _reproduce_flags(fv) -> None:
  flags.DEFINE_string("root", None, "Grid directory (default: the study's "
                      "`root`, else runs/study_<name>).", flag_values=fv)
  flags.DEFINE_string("out", None, "Results, figures and report.md (default: "
                      "the study's `out`, else docs/results/<name>).",
                      flag_values=fv)
  flags.DEFINE_bool("partial", False, "Run nothing: collect and report the "
                    "runs finished so far (the report says how many).",
                    flag_values=fv)
  flags.DEFINE_bool("report_only", False, "Run and collect nothing: rewrite "
                    "the report from OUT's results files (provenance kept).",
                    flag_values=fv)
  flags.DEFINE_bool("worker", False, "Share ROOT with other --worker "
                    "processes, each training the next run nobody holds "
                    "(poisonjax/study/runner.py).", flag_values=fv)
  flags.DEFINE_bool("keep_collected", False, "Go on from OUT's results when "
                    "ROOT was lost (new machine or checkout): the runs in "
                    "OUT/results.csv are not trained again and their rows "
                    "are kept.", flag_values=fv)
  flags.DEFINE_integer("bootstrap", None, "Bootstrap resamples of the fits "
                       "(default: poisonjax.study.analysis.BOOTSTRAP_SAMPLES).",
                       flag_values=fv)


def reproduce(args) -> int:
  import shlex  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from poisonjax.study import reproduce as reproduce_lib  # pylint: disable=g-import-not-at-top
  s, fv = args.config, args.flags
  root = fv.root or reproduce_lib.default_root(s)
  out = fv.out or reproduce_lib.default_out(s)
  files.check_reachable(root, "--root")
  files.check_reachable(out, "--out")
  command = "poisonjax " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  if fv.report_only:
    print(f"wrote {reproduce_lib.regenerate(s, out, command, fv.bootstrap)}")
    return 0
  return reproduce_lib.reproduce(
      s, args.config_file, root=root, out=out, command=command,
      partial=fv.partial, worker=fv.worker,
      keep_collected=fv.keep_collected, n_boot=fv.bootstrap,
      log=lambda m: print(m, flush=True))


PLAN = Command(
    usage="poisonjax study plan --config=STUDY.py [--mfu=0.4]",
    summary="Prints every run of a study with its parameters, tokens, steps, "
            "FLOPs and chip-hours (nothing is allocated or trained).",
    run=plan, define_flags=_plan_flags, config=STUDY_CONFIG)

RUN = Command(
    usage="poisonjax study run --config=STUDY.py --root=DIR [--only=TEXT] [--print_only]",
    summary="Runs a study's grid here, one run after another in ROOT/<run "
            "name>. Finished runs are skipped and an interrupted one resumes.",
    run=run, define_flags=_run_flags, config=STUDY_CONFIG,
    multi_process=True)

STATUS = Command(
    usage="poisonjax study status --config=STUDY.py --root=DIR [--all]",
    summary="Says where a grid stands: each run finished, training (who), "
            "interrupted (saved step) or pending, and the time left.",
    run=status, define_flags=_status_flags, config=STUDY_CONFIG)

COLLECT = Command(
    usage="poisonjax study collect --root=DIR [--config=STUDY.py] [--out=CSV] [--strict]",
    summary="Writes every evaluation of every run under --root to one CSV "
            "(with --config: only that study's runs).",
    run=collect, define_flags=_collect_flags, config=STUDY_CONFIG,
    config_required=False)

FIGURES = Command(
    usage="poisonjax study figures --root=DIR [--out=DIR]",
    summary="Draws the study's figures and report.md from ROOT/results.csv "
            "(collected first if absent).",
    run=figures, define_flags=_figures_flags, config=NO_CONFIG)

REPRODUCE = Command(
    usage="poisonjax study reproduce --config=STUDY.py [--root=DIR] [--out=DIR] "
          "[--partial | --report_only] [--worker] [--keep_collected]",
    summary="Plans, runs (resumable), collects and reports one study or "
            "experiment: the command behind every report under docs/results/.",
    run=reproduce, define_flags=_reproduce_flags, config=STUDY_CONFIG,
    early_signals=True)
