"""From a command's arguments to `Args`: its own flags, then its config.

--config=FILE[:ARG] is FILE's get_config(ARG); without it a command uses
its default config if it has one (the demo's, a run's config.json for
eval). --config.a.b=VALUE overrides one field of that config (parsed by
ml_collections against the field's type). Every problem becomes a
UserError of one line before the command runs: the CLI prints it and exits
with status 2.
"""

from __future__ import annotations


from absl import flags
import ml_collections
from ml_collections import config_flags

from poisonjax import config_files
from poisonjax.commands import NO_CONFIG, RUN_CONFIG, STUDY_CONFIG, Args, Command
from poisonjax.errors import UserError, field_error

_PROG = "poisonjax"
_OVERRIDE_PREFIXES = ("--config.", "-config.", "--noconfig.", "-noconfig.")
EXAMPLE_CONFIG = {RUN_CONFIG: "configs/cpu_micro.py",
                  STUDY_CONFIG: "configs/paper/cpu_nano.py"}


def new_flag_values(cmd: Command) -> flags.FlagValues:
  """A fresh flag set holding only this command's flags."""
  fv = flags.FlagValues()
  if cmd.config != NO_CONFIG and cmd.config_file_flag:
    need = "required" if cmd.config_required and not cmd.default_config else "optional"
    flags.DEFINE_string(
        "config", None, f"Config file FILE or FILE:ARG ({need}; e.g. "
        f"{EXAMPLE_CONFIG[cmd.config]}). Override a field with "
        "--config.a.b=VALUE.", flag_values=fv)
  if cmd.config != NO_CONFIG:
    flags.DEFINE_bool("print_config", False, "Print the resolved config as JSON "
                      "(overrides applied) and exit.", flag_values=fv)
  cmd.define_flags(fv)
  if cmd.multi_process:
    define_process_flags(fv)
  return fv


def define_process_flags(fv: flags.FlagValues) -> None:
  """Where this process stands among a run's processes (distributed.py)."""
  flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 "
                      "(a free port), the same on every process of a run over "
                      "several processes (default: $JAX_COORDINATOR_ADDRESS; "
                      "found automatically on Cloud TPU).", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "How many processes run it "
                       "(default: $JAX_NUM_PROCESSES, else 1).", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "This process's index, 0 to "
                       "num_processes - 1 (default: $JAX_PROCESS_ID).",
                       flag_values=fv)
  flags.DEFINE_integer("heartbeat_timeout_s", None, "Seconds without news from "
                       "another process before the run stops with an error "
                       "(default: $POISONJAX_HEARTBEAT_TIMEOUT_S, else 100).",
                       flag_values=fv)


def parse(cmd: Command, name: str, args: list[str]) -> Args:
  """Parses `args` (after the command words) for `cmd`; UserError if bad."""
  overrides, other = split_overrides(args)
  fv = new_flag_values(cmd)
  _parse_flags(fv, name, other)
  if cmd.config == NO_CONFIG:
    if overrides:
      raise UserError(f"{overrides[0].split('=', 1)[0]}: `{name}` takes no "
                      "config; drop the --config.* flags")
    return Args(fv, None, None, {})
  config, config_file = _base_config(cmd, fv)
  if config is None:
    if overrides:
      raise UserError(f"{overrides[0].split('=', 1)[0]}: nothing to override "
                      f"without a config; add --config=FILE")
    return Args(fv, None, None, {})
  config, values = apply_overrides(config, overrides)
  return Args(fv, _checked(cmd, config), config_file, values)


def split_overrides(args: list[str]) -> tuple[list[str], list[str]]:
  """(--config.a.b[=V] arguments, the rest); `--config.a.b V` is joined."""
  overrides, other, i = [], [], 0
  while i < len(args):
    arg = args[i]
    if arg.startswith(_OVERRIDE_PREFIXES):
      if ("=" not in arg and i + 1 < len(args)
          and not args[i + 1].startswith("-") and "noconfig" not in arg):
        arg = f"{arg}={args[i + 1]}"
        i += 1
      overrides.append(arg)
    else:
      other.append(arg)
    i += 1
  return overrides, other


def _parse_flags(fv: flags.FlagValues, name: str, args: list[str]) -> None:
  try:
    rest = fv([_PROG] + args)
  except flags.UnrecognizedFlagError as e:
    raise UserError(f"--{e.flagname}: not a flag of `{name}`; see "
                    f"`{name} --help`") from None
  except flags.Error as e:
    raise UserError(f"{_last_line(e)}; see `{name} --help`") from None
  if len(rest) > 1:
    raise UserError(f"{rest[1]!r}: unexpected argument; flags are --name=value "
                    f"(see `{name} --help`)")


def _base_config(cmd: Command, fv):
  """(config before overrides, FILE or None)."""
  spec = fv["config"].value if "config" in fv else None
  if spec:
    return config_files.load(spec), spec.split(":", 1)[0]
  if cmd.default_config is not None:
    return cmd.default_config(fv), None
  if cmd.config_required:
    raise UserError(f"--config: required; pass e.g. "
                    f"--config={EXAMPLE_CONFIG[cmd.config]}")
  return None, None


def _override_path(arg: str) -> str:
  return arg.split("=", 1)[0].lstrip("-").split(".", 1)[1]


def _check_field(config, path: str) -> None:
  node = config
  for part in path.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise UserError(f"--config.{path}: unknown config field; check the "
                      "spelling (every field is listed in poisonjax/config.py)")
    node = node[part]


def apply_overrides(config, overrides: list[str]):
  """(config with --config.a.b=V applied, {"a.b": V}); UserError if bad."""
  for arg in overrides:
    _check_field(config, _override_path(arg))
  fv = flags.FlagValues()
  argv = [_PROG] + overrides
  try:
    config_flags.DEFINE_config_dict("config", config, flag_values=fv,
                                    sys_argv=argv, lock_config=True)
    fv(argv)
  except Exception as e:  # absl and ml_collections raise many types.
    raise UserError(_override_error(overrides, e)) from None
  return fv.config, dict(config_flags.get_override_values(fv["config"]))


def _override_error(overrides: list[str], error: Exception) -> str:
  line = _last_line(error).removeprefix("flag ")
  named = next((a for a in overrides if a.split("=", 1)[0] in line), None)
  if named and not line.startswith(named.split("=", 1)[0]):
    line = f"{named}: {line}"
  return (f"{line}; give a value of the field's type (--print_config shows "
          "the current ones)")


def _checked(cmd: Command, config):
  is_study = "grid" in config and "base" in config
  if cmd.config == STUDY_CONFIG and not is_study:
    raise UserError("--config: not a study config (no grid/base); use a "
                    "configs/study_*.py file")
  if cmd.config == RUN_CONFIG:
    if is_study:
      raise UserError("--config: a study config, not a run config; pick one "
                      "run with --config=FILE:run=NAME (names: `poisonjax "
                      "study plan`)")
    from poisonjax import config_checks
    config = config_checks.validate(config)
  return config


def _last_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return lines[-1].strip() if lines else type(error).__name__
