"""The one owner of the run's small files and of paths, local or `gs://`.

Every user path (workdir, cache, vocabulary, text-file patterns, scorer
workdir, study root) becomes an `etils.epath.Path` through `as_path`, so
`gs://b/x` keeps its scheme (pathlib's `Path("gs://b/x")` is the local
folder `gs:/b/x`). epath picks the cloud library: tf.io.gfile when
TensorFlow is installed, fsspec/gcsfs with EPATH_USE_TF=false.

Readers tolerate a half-written last line (a process killed mid-append
leaves one). Whole files appear at once: locally a temporary file renamed
into place; on an object store a single object write, which readers see
whole or not at all (stores have no rename, and need none for that).
"""

from __future__ import annotations

import glob as glob_lib
import json
import os
import re
import shutil
import uuid
from typing import Any, Iterable

from etils import epath

_CHUNK = 16 << 20  # Bytes per read when copying between stores.


def as_path(path) -> epath.Path:
  """An epath.Path for a str/PathLike, local (`~` expanded) or `gs://`."""
  if isinstance(path, epath.Path):
    return path
  text = os.fspath(path)
  return epath.Path(os.path.expanduser(text) if is_local(text) else text)


def is_local(path) -> bool:
  """False for `scheme://` paths (object stores), True for local ones."""
  return "://" not in os.fspath(path)


def absolute(path) -> epath.Path:
  """Local paths made absolute (orbax wants them so); cloud ones unchanged."""
  path = as_path(path)
  return path.absolute() if is_local(path) else path


# ---------------------------------------------------------------------------
# Small files: JSON and JSONL.
# ---------------------------------------------------------------------------


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
  """Appends one row; first ends a half-written last line, if any.

  Object stores have no append: the object is read and written again whole
  (fine for the run's small logs, written by one process).
  """
  path = as_path(path)
  text = json.dumps(row, default=str) + "\n"
  old = path.read_bytes() if path.exists() else b""
  if old and not old.endswith(b"\n"):
    text = "\n" + text
  if not is_local(path):
    path.write_bytes(old + text.encode())
    return
  with path.open("a") as f:
    f.write(text)


def rewrite_jsonl(path, rows: Iterable[dict]) -> None:
  """Replaces a JSONL file atomically with `rows`."""
  write_text_atomic(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def write_json(path, obj: Any) -> None:
  """Writes `obj` as indented JSON, atomically."""
  write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path) -> Any:
  return json.loads(as_path(path).read_text())


def write_text_atomic(path, text: str) -> None:
  write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path, data: bytes) -> None:
  """Readers see the old file or the new one, never a part of it."""
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(path):
    path.write_bytes(data)  # One object write: whole or absent.
    return
  tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
  tmp.write_bytes(data)
  tmp.replace(path)  # rename() refuses to overwrite an existing file.


# ---------------------------------------------------------------------------
# Trees: listing, matching, copying.
# ---------------------------------------------------------------------------


def list_files(root) -> list[epath.Path]:
  """Every file under `root`, sorted (walk: stores have no recursive glob)."""
  root = as_path(root)
  if not root.is_dir():
    return []
  tail = _without_scheme(root)
  out = []
  for top, _, names in root.walk():
    # epath's fsspec walk yields `bucket/dir` without its scheme: rebuild
    # each path from `root` and the part of `top` below it.
    below = _without_scheme(top)[len(tail):].strip("/")
    folder = root / below if below else root
    out += [folder / name for name in names]
  return sorted(out)


def _without_scheme(path) -> str:
  text = os.fspath(path).rstrip("/")
  return text.split("://", 1)[1] if "://" in text else text


def glob(pattern) -> list[epath.Path]:
  """The files matching `pattern`, sorted; `*`, `?`, `[...]` and `**`.

  Local patterns go to the glob module (recursive); a cloud pattern lists
  the files under its longest literal prefix and matches their names.
  """
  pattern = os.fspath(pattern)
  if is_local(pattern):
    hits = glob_lib.glob(os.path.expanduser(pattern), recursive=True)
    return [as_path(h) for h in sorted(hits) if os.path.isfile(h)]
  scheme, rest = pattern.split("://", 1)
  parts = rest.split("/")
  literal = next((i for i, p in enumerate(parts) if glob_lib.has_magic(p)),
                 len(parts))
  base = as_path(f"{scheme}://" + "/".join(parts[:literal]))
  if literal == len(parts):
    return [base] if base.is_file() else []
  regex = _glob_regex("/".join(parts[literal:]))
  return [p for p in list_files(base)
          if regex.fullmatch(os.fspath(p)[len(os.fspath(base)) + 1:])]


def _glob_regex(pattern: str) -> re.Pattern:
  """`**/` any folders (or none), `*`/`?` within one name, `[...]` a class."""
  out, i = [], 0
  while i < len(pattern):
    if pattern.startswith("**/", i):
      out.append("(?:.*/)?")
      i += 3
    elif pattern.startswith("**", i):
      out.append(".*")
      i += 2
    elif pattern[i] == "*":
      out.append("[^/]*")
      i += 1
    elif pattern[i] == "?":
      out.append("[^/]")
      i += 1
    elif pattern[i] == "[" and "]" in pattern[i + 2:]:
      end = pattern.index("]", i + 2)
      body = pattern[i + 1:end]
      out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
      i = end + 1
    else:
      out.append(re.escape(pattern[i]))
      i += 1
  return re.compile("".join(out))


def copy_file(src, dst) -> None:
  """Copies one file between any two stores (local <-> gs:// included)."""
  src, dst = as_path(src), as_path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  with src.open("rb") as fin, dst.open("wb") as fout:
    shutil.copyfileobj(fin, fout, _CHUNK)


def move_tree(src, dst) -> None:
  """Moves a folder: a rename locally; on a store, copies then deletes."""
  src, dst = as_path(src), as_path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  if is_local(src) and is_local(dst):
    shutil.move(os.fspath(src), os.fspath(dst))
    return
  for path in list_files(src):
    copy_file(path, dst / os.fspath(path)[len(os.fspath(src)) + 1:])
  src.rmtree()
