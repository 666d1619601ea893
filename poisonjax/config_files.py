"""Config files: FILE[:ARG] to FILE's get_config(ARG), or one UserError line.

Every place that reads a config by path (the CLI's --config, the study
reproducer, the experiment scripts, the tests) goes through `load`, so a
broken file reads the same everywhere.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from poisonjax.errors import UserError, field_error


def _last_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return lines[-1].strip() if lines else type(error).__name__


def load(spec: str, flag: str = "--config") -> ml_collections.ConfigDict:
  """FILE's get_config(ARG) for spec FILE[:ARG]; errors name `flag`."""
  path, _, arg = str(spec).partition(":")
  if not os.path.isfile(path):
    raise field_error(flag, spec, "no such file",
                      f"pass a config file, e.g. {flag}=configs/cpu_micro.py")
  try:
    module_spec = importlib.util.spec_from_file_location("poisonjax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_config = module.get_config
  except UserError:
    raise
  except Exception as e:  # Any error of a user's Python file.
    raise UserError(f"{flag}={spec}: cannot load it ({_last_line(e)}); fix "
                    "the file (it must define get_config())") from None
  try:
    config = get_config(arg) if arg else get_config()
  except UserError:
    raise
  except Exception as e:  # Any error of a user's Python file.
    raise UserError(f"{flag}={spec}: get_config({arg!r}) failed "
                    f"({_last_line(e)}); fix the file or the :ARG") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"{flag}={spec}: get_config() returned "
                    f"{type(config).__name__}; it must return a ConfigDict")
  return config
