"""The `poisonjax` command: one entry point, one sub-command per job.

    poisonjax vocab build   --config=configs/cpu_micro.py
    poisonjax data inspect  --config=configs/cpu_micro.py --steps=0:2
    poisonjax train         --config=configs/cpu_micro.py --workdir=runs/x
    poisonjax eval          --workdir=runs/x [--step=N]
    poisonjax demo          [--workdir=runs/demo]
    poisonjax study plan|run|collect|figures --config=configs/study_*.py

Commands read an ml_collections config (`--config=FILE[:ARG]`, or the
command's default) whose fields can be overridden with `--config.a.b=value`.
`poisonjax COMMAND --help` lists a command's flags. Bad input ends in one
line `poisonjax: error: ...` and exit status 2, before anything runs. The
commands themselves live in poisonjax/commands/.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

_HELP = ("-h", "--help", "-help", "--helpshort", "--helpfull", "help")


def main(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)
  quiet_tensorflow_start()
  from poisonjax import commands
  from poisonjax.errors import UserError

  args = argv[1:]
  key = commands.find([a for a in args[:2] if not a.startswith("-")])
  if key is None:
    return _no_command(args)
  cmd, name, rest = commands.load(key), "poisonjax " + " ".join(key), args[len(key):]
  if cmd.early_signals:
    from poisonjax.training import preemption
    preemption.install_early()
  if any(a in _HELP for a in rest):
    print(command_help(cmd))
    return 0
  from absl import logging as absl_logging

  from poisonjax.commands import parsing

  absl_logging.set_verbosity(absl_logging.WARNING)
  try:
    parsed = parsing.parse(cmd, name, rest)
    if parsed.config is not None and parsed.flags.print_config:
      print(parsed.config.to_json_best_effort(indent=2, sort_keys=True))
      return 0
    if not cmd.multi_process:
      return int(cmd.run(parsed) or 0)
    return _run_among_processes(cmd, parsed)
  except UserError as e:
    print(f"poisonjax: error: {e}", file=sys.stderr)
    return 2


def quiet_tensorflow_start() -> None:
  """Keeps TensorFlow's start-up notices out of the command's output.

  TensorFlow is imported lazily, on the paths that need it (TensorBoard
  summaries through clu, seqio, TFDS). TF_CPP_MIN_LOG_LEVEL=3 (unless set)
  hides its C++ log lines once its logging is set up, but TF 2.16+ writes a
  few INFO lines while its shared libraries load, before that ("Could not
  find cuda drivers on your machine, GPU will not be used", "oneDNN custom
  operations are on", "All log messages before absl::InitializeLog() ..."),
  which read like errors. So the first `import tensorflow` runs with file
  descriptor 2 sent to a temporary file; afterwards every captured line is
  written back to stderr except the C++ log records (and their continuation
  lines) that TF_CPP_MIN_LOG_LEVEL asks to hide: I at >= 1, W at >= 2, E at
  >= 3. With TF_CPP_MIN_LOG_LEVEL=0 nothing is hidden or touched.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  try:
    level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
  except ValueError:
    return
  if (level < 1 or "tensorflow" in sys.modules
      or any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path)):
    return
  sys.meta_path.insert(0, _QuietTensorFlowImport(level))


# An absl/glog C++ log record: severity letter, date, time, thread, file:line].
# (Before absl::InitializeLog the seconds field holds the epoch time.)
_CXX_RECORD = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+(\.\d+)? +\d+ \S+:\d+\] ")
_ABSL_PRE_INIT = "WARNING: All log messages before absl::InitializeLog() is called"
# A Python warning or traceback line starts a new (kept) record.
_PY_LINE = re.compile(r"^(\S.*:\d+: \w*(Warning|Error)\b|Traceback )")


def filter_tensorflow_start(text: str, level: int) -> str:
  """`text` without the C++ log records that TF_CPP_MIN_LOG_LEVEL=`level` hides."""
  hidden = "IWE"[:max(0, min(level, 3))]
  kept, dropping = [], False
  for line in text.splitlines(keepends=True):
    record = _CXX_RECORD.match(line)
    if record:
      dropping = record.group(1) in hidden
    elif line.startswith(_ABSL_PRE_INIT):
      dropping = bool(hidden)
    elif _PY_LINE.match(line):
      dropping = False
    if not dropping:
      kept.append(line)
  return "".join(kept)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
  """Wraps the loader of `tensorflow` (quiet_tensorflow_start).

  It stays on sys.meta_path until TensorFlow is imported: libraries probe
  with importlib.util.find_spec("tensorflow") without importing it.
  """

  def __init__(self, level: int):
    self.level = level

  def find_spec(self, name, path=None, target=None):
    if name != "tensorflow":
      return None
    for finder in sys.meta_path:  # The real finders do the finding.
      if finder is self or not hasattr(finder, "find_spec"):
        continue
      spec = finder.find_spec(name, path, target)
      if spec is not None:
        if spec.loader is not None:
          spec.loader = _QuietLoader(spec.loader, self)
        return spec
    return None


class _QuietLoader(importlib.abc.Loader):

  def __init__(self, inner, finder: _QuietTensorFlowImport):
    self.inner, self.finder, self.level = inner, finder, finder.level

  def __getattr__(self, name):  # get_filename, is_package, ...: the real loader's.
    return getattr(self.inner, name)

  def create_module(self, spec):
    return self.inner.create_module(spec)

  def exec_module(self, module):
    if self.finder in sys.meta_path:  # Imported now: the finder's job is done.
      sys.meta_path.remove(self.finder)
    module.__loader__ = module.__spec__.loader = self.inner
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    try:
      with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
          self.inner.exec_module(module)
        finally:
          sys.stderr.flush()
          os.dup2(saved, 2)
          captured.seek(0)
          text = captured.read().decode("utf-8", errors="replace")
          sys.stderr.write(filter_tensorflow_start(text, self.level))
          sys.stderr.flush()
    finally:
      os.close(saved)


def _run_among_processes(cmd, parsed) -> int:
  """Joins the run's other processes first (before any JAX use)."""
  from poisonjax import distributed

  fv = parsed.flags
  distributed.initialize(fv.coordinator_address, fv.num_processes,
                         fv.process_id, fv.heartbeat_timeout_s)
  with distributed.exit_on_any_error():
    return int(cmd.run(parsed) or 0)


def _no_command(args: list[str]) -> int:
  """`poisonjax [--help]`, `poisonjax study [--help]`, or an unknown word."""
  from poisonjax import commands

  asked = any(a in _HELP for a in args)
  words = [a for a in args if not a.startswith("-") and a != "help"]
  keys = commands.group(words[0]) if words else list(commands.COMMANDS)
  problem = None
  if words and not keys:
    problem, keys = f"{words[0]!r}: unknown command; pick one below", list(commands.COMMANDS)
  elif words and not asked:
    problem = f"{words[0]!r}: needs a sub-command; pick one below"
  elif not words and not asked:
    problem = "no command given; pick one below"
  if problem is None:
    print(overview(keys))
    return 0
  print(f"poisonjax: error: {problem}\n{overview(keys)}", file=sys.stderr)
  return 2


def overview(keys) -> str:
  """The usage line and a one-line summary per command."""
  from poisonjax import commands

  lines = ["usage: poisonjax COMMAND [flags]   (poisonjax COMMAND --help: its flags)",
           "", "commands:"]
  for key in keys:
    first = commands.load(key).summary.split(". ")[0].rstrip(".")
    lines.append(f"  poisonjax {' '.join(key):15s} {first}")
  return "\n".join(lines)


def command_help(cmd) -> str:
  """A command's usage, summary, own flags and where the config fields are."""
  from poisonjax.commands import NO_CONFIG, STUDY_CONFIG, parsing

  fv = parsing.new_flag_values(cmd)
  lines = [f"usage: {cmd.usage}", "", cmd.summary, "", "flags:"]
  for name in fv:
    flag = fv[name]
    if flag.name != name:  # A short alias.
      continue
    lines.append(f"  {_flag_form(flag)}")
    default = "" if flag.default in (None, False, "") else f" (default: {flag.default})"
    lines.append(f"      {flag.help}{default}")
  if cmd.config == NO_CONFIG:
    return "\n".join(lines)
  example = "base.train.batch_size=4" if cmd.config == STUDY_CONFIG else "poison.count=64"
  lines.append("  --config.a.b=VALUE")
  lines.append(f"      Override one config field (e.g. --config.{example}).")
  if cmd.default_config_doc:
    lines.append(f"  Default config: {cmd.default_config_doc}.")
  here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py")
  lines += ["", "config fields: every field of a run config, with its default "
            f"and meaning, is documented in poisonjax/config.py ({here}); "
            "--print_config shows the resolved values."]
  if cmd.config == STUDY_CONFIG:
    lines.append("A study config (configs/study_*.py) holds a run config "
                 "`base` and a `grid` (poisonjax/study/grids.py).")
  return "\n".join(lines)


def _flag_form(flag) -> str:
  if flag.boolean:
    return f"--[no]{flag.name}"
  kind = {"int": "N", "integer": "N", "float": "X"}.get(flag.flag_type(), "")
  if flag.name == "config":
    kind = "FILE[:ARG]"
  return f"--{flag.name}={kind or flag.name.upper()}"


if __name__ == "__main__":
  sys.exit(main())
