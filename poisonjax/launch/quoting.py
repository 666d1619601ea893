"""Commands as argv lists; a user value never reaches a shell unquoted.

Locally every command runs as an argv list (subprocess, no shell). The one
string a remote shell reads (gcloud ssh --command=..., ssh HOST CMD) is
built with shlex.quote around every word. Values with a newline or another
control character are refused: they cannot be shown on one printed line,
and no real path or name needs them.
"""

from __future__ import annotations

import re
import shlex
from typing import Sequence

from poisonjax.errors import UserError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# gcloud resource names (TPU, zone, project): lowercase, digits, dashes.
_RESOURCE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOST = re.compile(r"^[A-Za-z0-9_.@\[\]:-]+$")


def check_value(flag: str, value: str) -> str:
  """The value unchanged, or UserError if it holds a control character."""
  if _CONTROL.search(value):
    raise UserError(f"{flag}={value!r}: holds a newline or control "
                    "character; pass a value without one")
  return value


def check_resource(flag: str, value: str) -> str:
  """A gcloud resource name (TPU name, zone, project, ...)."""
  if not _RESOURCE.match(value or ""):
    raise UserError(f"{flag}={value!r}: not a gcloud resource name; use "
                    "lowercase letters, digits and dashes, starting with a letter")
  return value


def check_host(flag: str, value: str) -> str:
  """An ssh destination ([user@]host); never an ssh option (-oProxy...)."""
  if value.startswith("-") or not _HOST.match(value):
    raise UserError(f"{flag}={value!r}: not a host name; use [USER@]HOST "
                    "(letters, digits, . _ - : @)")
  return value


def line(argv: Sequence[str]) -> str:
  """One printable, copy-pasteable shell line for an argv list."""
  return shlex.join(argv)


def remote(*argvs: Sequence[str]) -> str:
  """The string a remote shell runs: each argv quoted, joined with &&."""
  for argv in argvs:
    for word in argv:
      check_value("remote command word", word)
  return " && ".join(shlex.join(argv) for argv in argvs)
