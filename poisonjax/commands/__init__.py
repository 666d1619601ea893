"""The command-line layer: what each `poisonjax ...` command reads and calls.

One module per command group (data, train, evaluate, demo, study). Each
command is a `Command`: its usage line, its own flags, what --config holds,
and a function taking the parsed `Args` that calls a library entry point
with a config and a workdir (e.g. `train.run(config, workdir)`). Library
modules never import this package or cli.py. Command modules import the
library inside their functions, so `--help` and bad flags answer at once.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

# What --config holds for a command.
RUN_CONFIG = "run"  # A run config (poisonjax/config.py), validated.
STUDY_CONFIG = "study"  # A study config (configs/study_*.py).
NO_CONFIG = "none"  # The command takes no --config.


@dataclasses.dataclass(frozen=True)
class Command:
  """One `poisonjax WORDS` command."""

  usage: str  # "poisonjax train --config=FILE --workdir=DIR"
  summary: str  # What it does, one or two sentences.
  run: Callable[["Args"], int]  # Returns the exit status.
  define_flags: Callable[[Any], None] = lambda fv: None  # fv: absl FlagValues.
  config: str = RUN_CONFIG
  config_required: bool = True
  # The config used without --config (overrides apply to it): called with the
  # parsed flags; None: without --config there is no config.
  default_config: Callable[[Any], Any] | None = None
  default_config_doc: str = ""  # Said in --help: where the default comes from.
  # False: no --config=FILE (only overrides of the default config).
  config_file_flag: bool = True
  # True: may run as one of several processes (--coordinator_address,
  # --num_processes, --process_id; poisonjax/distributed.py).
  multi_process: bool = False
  # True: SIGTERM/SIGINT are recorded from the start (before the command's
  # imports) for the run to stop cleanly at its first check (preemption.py).
  early_signals: bool = False


@dataclasses.dataclass
class Args:
  """A parsed command line: the command's flags and the resolved config."""

  flags: Any  # absl FlagValues holding the command's own flags.
  config: Any  # ConfigDict with overrides applied (validated), or None.
  config_file: str | None  # FILE of --config=FILE[:ARG]; None for a default.
  overrides: dict  # --config.a.b values as given: {"a.b": value}.


# Sub-command words -> "module:attribute" of a Command, imported when chosen.
COMMANDS = {
    ("vocab", "build"): "poisonjax.commands.data:VOCAB_BUILD",
    ("data", "inspect"): "poisonjax.commands.data:DATA_INSPECT",
    ("data", "build-store"): "poisonjax.commands.data:DATA_BUILD_STORE",
    ("train",): "poisonjax.commands.train:TRAIN",
    ("eval",): "poisonjax.commands.evaluate:EVAL",
    ("demo",): "poisonjax.commands.demo:DEMO",
    ("study", "plan"): "poisonjax.commands.study:PLAN",
    ("study", "run"): "poisonjax.commands.study:RUN",
    ("study", "status"): "poisonjax.commands.study:STATUS",
    ("study", "collect"): "poisonjax.commands.study:COLLECT",
    ("study", "figures"): "poisonjax.commands.study:FIGURES",
    ("study", "reproduce"): "poisonjax.commands.study:REPRODUCE",
    ("launch", "tpu"): "poisonjax.commands.launch:LAUNCH_TPU",
    ("launch", "gpu"): "poisonjax.commands.launch:LAUNCH_GPU",
    ("defend", "score"): "poisonjax.commands.defend:SCORE",
    ("defend", "scan"): "poisonjax.commands.defend_scan:SCAN",
}


def find(words: list[str]) -> tuple[str, ...] | None:
  """The command named by the leading words of a command line, if any."""
  return next((k for k in COMMANDS if tuple(words[:len(k)]) == k), None)


def group(word: str) -> list[tuple[str, ...]]:
  """The commands starting with `word` (`study` -> plan, run, ...)."""
  return [k for k in COMMANDS if k[0] == word]


def load(key: tuple[str, ...]) -> Command:
  module_name, attr = COMMANDS[key].split(":")
  return getattr(importlib.import_module(module_name), attr)
