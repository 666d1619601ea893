"""`poisonjax train`: one run, trained (or resumed) in its workdir."""

from __future__ import annotations

from absl import flags

from poisonjax.commands import Command
from poisonjax.errors import UserError


def _flags(fv) -> None:
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, "
                      "config.json (required; an existing run resumes).",
                      flag_values=fv)
  flags.DEFINE_bool("allow_config_change", False, "Resume even though a field "
                    "that defines the run changed (the change is recorded in "
                    "the run's history.jsonl).", flag_values=fv)


def train(args) -> int:
  workdir = args.flags.workdir
  if not workdir:
    raise UserError("--workdir: required; pass --workdir=runs/NAME")
  from poisonjax.training import train as train_lib  # pylint: disable=g-import-not-at-top
  train_lib.run(args.config, workdir,
                allow_config_change=args.flags.allow_config_change)
  return 0


TRAIN = Command(
    usage="poisonjax train --config=FILE --workdir=DIR [--allow_config_change]",
    summary="Trains one run in --workdir, evaluating it periodically. A "
            "workdir with checkpoints resumes from the newest one; the "
            "config must then match the run's config.json.",
    run=train, define_flags=_flags, multi_process=True, early_signals=True)
