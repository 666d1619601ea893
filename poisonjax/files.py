"""The one owner of the run's small files and of paths, local or `gs://`.

Every user path (workdir, cache, vocabulary, text-file patterns, scorer
workdir, study root) becomes an `etils.epath.Path` through `as_path`, so
`gs://b/x` keeps its scheme (pathlib's `Path("gs://b/x")` is the local
folder `gs:/b/x`). epath picks the cloud library: tf.io.gfile when
TensorFlow is installed, fsspec/gcsfs with EPATH_USE_TF=false.

Readers tolerate a half-written last line (a process killed mid-append
leaves one); any other unreadable line is skipped with a warning naming the
file. Whole files appear at once: locally a temporary file renamed into
place; on an object store a single object write, which readers see whole
or not at all (stores have no rename, and need none for that).

A bucket is probed once per process before its first use by a command
(`check_reachable`): without network or credentials the command stops
within REACH_TIMEOUT_S with one line, instead of a client's minutes of
retries and a traceback.
"""

from __future__ import annotations

import glob as glob_lib
import json
import os
import re
import shutil
import sys
import threading
import uuid
from typing import Any, Iterable

from etils import epath

from poisonjax.errors import UserError

_CHUNK = 16 << 20  # Bytes per read when copying between stores.
# Seconds a bucket may take to answer its first look-up ($POISONJAX_REACH_TIMEOUT_S).
REACH_TIMEOUT_S = float(os.environ.get("POISONJAX_REACH_TIMEOUT_S", "15"))
_REACHED: set[str] = set()  # Buckets that answered (this process).
_WARNED: set[tuple] = set()  # (file, skipped lines) already warned about.


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


def bucket_of(path) -> str | None:
  """'gs://bucket' of a cloud path; None for a local one."""
  text = os.fspath(path)
  if is_local(text):
    return None
  scheme, rest = text.split("://", 1)
  return f"{scheme}://{rest.split('/', 1)[0]}"


def check_reachable(path, field: str) -> None:
  """UserError (one line) if `path`'s bucket does not answer a look-up.

  Local paths pass at once; a bucket that answered once is not asked
  again. The look-up runs in a daemon thread so a client retrying for
  minutes is abandoned after REACH_TIMEOUT_S.
  """
  bucket = bucket_of(path)
  if bucket is None or bucket in _REACHED:
    return
  outcome: dict = {}

  def look():
    try:
      outcome["exists"] = epath.Path(os.fspath(path)).exists()
    except BaseException as e:  # pylint: disable=broad-except
      outcome["error"] = e

  thread = threading.Thread(target=look, daemon=True, name="poisonjax-reach")
  thread.start()
  thread.join(REACH_TIMEOUT_S)
  if "exists" in outcome:
    _REACHED.add(bucket)
    return
  error = outcome.get("error")
  what = (f"no answer within {REACH_TIMEOUT_S:g}s" if error is None else
          f"{type(error).__name__}: {_first_line(error)}")
  raise UserError(
      f"{field}={os.fspath(path)}: cannot reach {bucket} ({what}); check the "
      "network and the credentials (`gcloud auth application-default login`;"
      f" `gcloud storage ls {bucket}` must work from this machine)")


def make_dir(path, field: str) -> epath.Path:
  """Creates the directory `path` (and parents); UserError if a file is in the way."""
  path = as_path(path)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError):
    raise UserError(f"{field}={os.fspath(path)}: it or a folder above it is a "
                    "file, not a directory; pass a directory path") from None
  return path


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:200] if text else type(e).__name__


# ---------------------------------------------------------------------------
# Small files: JSON and JSONL.
# ---------------------------------------------------------------------------


def read_jsonl(path, strict: bool = False) -> list[dict]:
  """The rows of a JSONL file ([] if absent); undecodable lines are skipped.

  A line cut short by a kill is the usual undecodable one: it is always the
  last, and the next append starts on a fresh line (see append_jsonl); it
  is skipped quietly. Any other line that is not a UTF-8 JSON object is
  skipped with a warning on stderr naming the file and the line, or, with
  `strict`, raises ValueError saying so.
  """
  path = as_path(path)
  if not path.exists():
    return []
  lines = path.read_bytes().split(b"\n")
  rows, bad = [], []
  for number, raw in enumerate(lines, 1):
    if not raw.strip():
      continue
    try:
      row = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
      row = None
    if isinstance(row, dict):
      rows.append(row)
    elif number < len(lines):  # Not the unterminated last line.
      bad.append(number)
  if bad:
    what = (f"{path}: line {bad[0]} is not a UTF-8 JSON object"
            f"{f' (and {len(bad) - 1} more lines)' if len(bad) > 1 else ''}")
    if strict:
      raise ValueError(what)
    if (str(path), tuple(bad)) not in _WARNED:
      _WARNED.add((str(path), tuple(bad)))
      print(f"poisonjax: warning: {what}; skipped (fix or delete "
            f"{'them' if len(bad) > 1 else 'it'} to silence this)",
            file=sys.stderr, flush=True)
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
  check_reachable(pattern.split("*")[0], "pattern")
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
