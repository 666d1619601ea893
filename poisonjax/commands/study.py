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
