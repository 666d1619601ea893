"""The `poisonjax` command: one entry point, one sub-command per job.

    poisonjax vocab build   --config=configs/cpu_micro.py
    poisonjax data inspect  --config=configs/cpu_micro.py --steps=0:2
    poisonjax train         --config=configs/cpu_micro.py --workdir=runs/x
    poisonjax eval          --workdir=runs/x [--step=N]
    poisonjax demo          [--workdir=runs/demo]
    poisonjax study plan|run|collect|figures --config=configs/study_*.py

Every command reads an ml_collections config file (`--config=FILE[:ARG]`)
whose fields can be overridden with `--config.a.b=value`. Bad input ends in
one line `poisonjax: error: ...` and exit status 2.
"""

from __future__ import annotations

import importlib
import os
import sys

# Sub-command words -> "module:function". Each function takes the parsed
# absl FLAGS and returns an exit status.
COMMANDS = {
    ("vocab", "build"): "poisonjax.data.commands:vocab_build",
    ("data", "inspect"): "poisonjax.data.commands:data_inspect",
    ("train",): "poisonjax.train:main",
    ("eval",): "poisonjax.evaluate:main",
    ("demo",): "poisonjax.demo:main",
    ("study", "plan"): "poisonjax.study:plan_main",
    ("study", "run"): "poisonjax.study:run_main",
    ("study", "collect"): "poisonjax.study:collect_main",
    ("study", "figures"): "poisonjax.study:figures_main",
}


def _usage() -> str:
  names = "\n".join("  poisonjax " + " ".join(k) for k in COMMANDS)
  return f"usage: poisonjax COMMAND [flags]\ncommands:\n{names}\n"


def _define_flags():
  from absl import flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
      "config", None, "Config file (FILE or FILE:ARG); override fields with "
      "--config.a.b=value.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).")
  flags.DEFINE_string("steps", "0:1", "data inspect: steps A:B to print.")
  flags.DEFINE_integer("step", None, "eval: checkpoint step (default newest).")
  flags.DEFINE_integer("samples", 2, "eval: generations to print per kind.")
  flags.DEFINE_string("root", None, "study: directory holding one workdir per run.")
  flags.DEFINE_string("only", "", "study run: only runs whose name contains this.")
  flags.DEFINE_bool("print_only", False, "study run: print launch commands.")
  flags.DEFINE_string("out", None, "Output path (vocab build / figures).")
  flags.DEFINE_float("mfu", 0.4, "study plan: assumed MFU for hours.")
  return flags.FLAGS


def main(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)
  words = [a for a in argv[1:3] if not a.startswith("-")]
  key = next((k for k in COMMANDS if tuple(words[:len(k)]) == k), None)
  if key is None:
    sys.stderr.write(_usage())
    return 2
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from absl import logging as absl_logging

  from poisonjax.errors import UserError

  absl_logging.set_verbosity(absl_logging.WARNING)
  flags = _define_flags()
  rest = [argv[0]] + argv[1 + len(key):]
  try:
    flags(rest)
  except Exception as e:  # absl wraps some config errors, not all.
    print(f"poisonjax: error: {_explain_flag_error(flags, rest, e)}",
          file=sys.stderr)
    return 2
  module_name, fn_name = COMMANDS[key].split(":")
  try:
    # Commands read FLAGS.config through load_config(), which turns a broken
    # config file into a UserError.
    fn = getattr(importlib.import_module(module_name), fn_name)
    return int(fn(flags) or 0)
  except UserError as e:
    print(f"poisonjax: error: {e}", file=sys.stderr)
    return 2


def _explain_flag_error(flags, args, error: Exception) -> str:
  """One line for a flag that failed to parse; names an unknown config field."""
  root = flags["config"].value
  if root is None:  # Overrides read from sys.argv failed mid-load.
    root = _load_config_file(args)
  for arg in args:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    try:
      node = root
      for part in path.split("."):
        node = node[part]
    except (KeyError, AttributeError, TypeError):
      return (f"--config.{path}: unknown config field; check the spelling "
              "(every field is listed in poisonjax/config.py)")
    except Exception:  # The config file itself failed to load.
      break
  return str(error).strip().splitlines()[-1]


def _load_config_file(args):
  """The config of --config=FILE[:ARG] without overrides (None if unreadable).

  ml_collections applies overrides from sys.argv while loading, so after a
  bad override the flag holds no value; this re-reads the file to find which
  override named an unknown field.
  """
  import importlib.util

  spec = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
  if not spec:
    return None
  path, _, arg = spec.partition(":")
  try:
    mod_spec = importlib.util.spec_from_file_location("_pj_config_file", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception:  # A broken file: the caller falls back to absl's text.
    return None


def load_config(flags, required: bool = True):
  """The validated config from --config (+ overrides), or None if absent."""
  from poisonjax import config as config_lib
  from poisonjax.errors import UserError

  try:
    cfg = flags.config
  except Exception as e:  # ml_collections raises various types for bad files.
    raise UserError(f"--config: {e}") from None
  if cfg is None:
    if required:
      raise UserError("--config is required; pass --config=configs/cpu_micro.py")
    return None
  return config_lib.validate(cfg)


if __name__ == "__main__":
  sys.exit(main())
