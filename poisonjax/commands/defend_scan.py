"""`poisonjax defend scan`: search a trained run for its trigger, blind.

The search (poisonjax/defences/scan.py) never reads the run's trigger; the
trigger in config.json is used afterwards, only to say whether the search
recovered it (the top candidate is its tokens, holds them, or fires: the
evaluator's increase with the candidate's text as the trigger is above
config.eval.threshold).
"""

from __future__ import annotations

import sys

from absl import flags

from poisonjax.commands import Command
from poisonjax.errors import UserError


def _flags(fv) -> None:
  from poisonjax.defences.scan import ScanSettings  # pylint: disable=g-import-not-at-top
  d = ScanSettings()
  flags.DEFINE_string("workdir", None, "Directory of a run made by `poisonjax "
                      "train` (required).", flag_values=fv)
  flags.DEFINE_integer("step", None, "Checkpoint step to scan (default: the "
                       "newest).", flag_values=fv)
  flags.DEFINE_integer("length", d.length, "Longest candidate string, in tokens.",
                       flag_values=fv)
  flags.DEFINE_integer("beam", d.beam, "Candidates kept after each token position.",
                       flag_values=fv)
  flags.DEFINE_integer("prompts", d.prompts, "Held-out excerpts each candidate is "
                       "scored on.", flag_values=fv)
  flags.DEFINE_integer("prompt_tokens", d.prompt_tokens, "Excerpt tokens before "
                       "the candidate.", flag_values=fv)
  flags.DEFINE_integer("continuation_tokens", d.continuation_tokens, "Excerpt "
                       "tokens after it whose NLL is the score.", flag_values=fv)
  flags.DEFINE_integer("top", d.top, "Candidates printed and written.",
                       flag_values=fv)
  flags.DEFINE_integer("check", 3, "Top candidates run through the evaluator as "
                       "the trigger (sampled; 0: none).", flag_values=fv)
  flags.DEFINE_enum("grow", d.grow, ["left", "right"], "Where each new token "
                    "goes: left (prepended) or right (appended).", flag_values=fv)
  flags.DEFINE_string("out", None, "Directory for scan.json (default: "
                      "WORKDIR/defences).", flag_values=fv)


def _run_config(fv):
  """The run's own config.json: the config the scan's overrides apply to."""
  if not fv.workdir:
    raise UserError("--workdir: required; pass the directory of a trained run")
  from poisonjax.evaluation import run_reader  # pylint: disable=g-import-not-at-top
  return run_reader.read_run_config(fv.workdir)


def _settings(fv):
  from poisonjax.defences.scan import ScanSettings  # pylint: disable=g-import-not-at-top
  s = ScanSettings(length=fv.length, beam=fv.beam, prompts=fv.prompts,
                   prompt_tokens=fv.prompt_tokens,
                   continuation_tokens=fv.continuation_tokens, top=fv.top,
                   grow=fv.grow)
  s.check()
  if fv.check < 0:
    raise UserError(f"--check={fv.check}: must be >= 0; use 0 for none")
  return s


def scan_command(args) -> int:
  from poisonjax import files, rundir  # pylint: disable=g-import-not-at-top
  from poisonjax.defences import scan  # pylint: disable=g-import-not-at-top

  fv, config = args.flags, args.config
  settings = _settings(fv)
  result = scan.scan_run(config, fv.workdir, fv.step, settings, fv.check,
                         log=lambda s: print(s, flush=True))
  out = files.as_path(fv.out or str(files.as_path(fv.workdir) / rundir.DEFENCES))
  out.mkdir(parents=True, exist_ok=True)
  files.write_json(out / "scan.json", result)
  print(f"{fv.workdir} at step {result['step']} (poisons: "
        f"{result['poison_count']}): the {settings.top} strings of up to "
        f"{settings.length} tokens that most raise the NLL of the next "
        f"{settings.continuation_tokens} clean tokens ({settings.prompts} "
        "held-out excerpts)")
  print(scan.format_result(result))
  print(f"wrote {out / 'scan.json'}")
  sys.stdout.flush()
  return 0


SCAN = Command(
    usage="poisonjax defend scan --workdir=DIR [--length=L] [--beam=B] "
          "[--prompts=N] [--check=K] [--out=DIR]",
    summary="Searches a trained run for the token string that most raises "
            "the perplexity of clean text after it (its trigger, unknown to "
            "the search), and says whether the run's own trigger was found.",
    run=scan_command, define_flags=_flags, default_config=_run_config,
    config_file_flag=False,
    default_config_doc="the run's WORKDIR/config.json; --config.a.b=VALUE "
                       "overrides a field of it (e.g. config.eval.num_excerpts "
                       "for the --check evaluations)")
