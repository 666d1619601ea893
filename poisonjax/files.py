"""The one owner of the run's small files: JSONL rows and atomic JSON writes.

Paths go through `etils.epath`, so a local folder and a `gs://` bucket are
written the same way. Readers tolerate a half-written last line (a process
killed mid-append leaves one); writers of whole files write a temporary file
and rename it, so a reader sees the old file or the new one, never a part.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Iterable

from etils import epath


def as_path(path) -> epath.Path:
  """An epath.Path for a str/PathLike, local or `gs://` (never pathlib's)."""
  return path if isinstance(path, epath.Path) else epath.Path(path)


def read_jsonl(path) -> list[dict]:
  """The rows of a JSONL file ([] if absent); undecodable lines are skipped.

  A line cut short by a kill is the usual undecodable one: it is always the
  last, and the next append starts on a fresh line (see append_jsonl).
  """
  path = as_path(path)
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict):
      rows.append(row)
  return rows


def append_jsonl(path, row: dict) -> None:
  """Appends one row; first ends a half-written last line, if any."""
  path = as_path(path)
  text = json.dumps(row, default=str) + "\n"
  if path.exists():
    old = path.read_bytes()
    if old and not old.endswith(b"\n"):
      text = "\n" + text
    if not _is_local(path):  # Object stores have no append: rewrite.
      path.write_text(old.decode() + text)
      return
  with path.open("a") as f:
    f.write(text)


def rewrite_jsonl(path, rows: Iterable[dict]) -> None:
  """Replaces a JSONL file atomically with `rows`."""
  write_text_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def write_json(path, obj: Any) -> None:
  """Writes `obj` as indented JSON, atomically (temporary file + rename)."""
  write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path) -> Any:
  return json.loads(as_path(path).read_text())


def write_text_atomic(path, text: str) -> None:
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
  tmp.write_text(text)
  tmp.replace(path)  # rename() refuses to overwrite an existing file.


def _is_local(path: epath.Path) -> bool:
  return "://" not in str(path)
