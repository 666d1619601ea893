"""An experiment's own steps, named by its study config: one harness for all.

Every experiment is a study config run by the one runner (runner.py) and
reported by `poisonjax study reproduce` (reproduce.py). Most need nothing
more: the grid, variants of the run config, the standard collection
(results.py) and report (report.py). An experiment that measures something
else (every trigger on every run, the language of the continuations, a
filter's recall) names a module in `study.experiment`, e.g.
"ablations.doses" for poisonjax/ablations/doses.py, holding any of:

  prepare(study, root, log)            train what the grid's runs start
      from (e.g. a clean model they fine-tune); called by the runner
      before the runs, on every invocation (so it must skip what is done).
  after_run(study, run, workdir, log)  measure one finished run; called by
      the runner after the run, and again on a rerun for runs finished
      before (so it must skip what it has done: idempotent, resumable).
  collect(study, root, runs, out)      write the experiment's results files
      into out from the finished runs (default: results.csv).
  report(study, out, provenance)       write out/report.md (and figures) from
      the files in out alone, so `--report_only` regenerates it without
      runs; returns the report's path (default: report.generate).

The module is imported by name when the study runs (as big_vision imports
its models), so the study layer does not depend on the experiments.
"""

from __future__ import annotations

import importlib
import types

from poisonjax.errors import UserError

HOOKS = ("prepare", "after_run", "collect", "report")


def module(study) -> types.ModuleType | None:
  """The module named by study.experiment, or None for a plain study."""
  name = study.get("experiment", "") or ""
  if not name:
    return None
  try:
    return importlib.import_module(f"poisonjax.{name}")
  except ModuleNotFoundError as e:
    raise UserError(f"study.experiment: {name!r} names no module "
                    f"poisonjax.{name} ({e}); use e.g. 'ablations.doses'") from None


def hook(study, name: str):
  """The experiment's function `name` (one of HOOKS), or None."""
  assert name in HOOKS, name
  mod = module(study)
  return getattr(mod, name, None) if mod is not None else None
