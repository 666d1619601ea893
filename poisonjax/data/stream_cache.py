"""A stream cache directory: its files, their checksums, its store mirror.

Cache layout (written into a temporary directory, renamed into place, with
checksum.json written last, so a directory that exists is complete):
  tokens.bin     raw uint16/uint32 ids (np.memmap), the whole stream
  spans.npy      int64 [n, 3]: (start, end, poison id) of each poison, sorted
  manifest.json  per poison: id, fraction, clean_offset, start, num_tokens...
  meta.json      the spec that was hashed, token counts, dtype
  checksum.json  sha256 of the files above
On load the checksum is verified; a mismatch prints the reason and rebuilds.

A cache on an object store (data.cache_dir=gs://...): np.memmap needs a
local file, so the stream is read from a local mirror,
$POISONJAX_MIRROR (default ~/.cache/poisonjax/mirror)/gs/BUCKET/PATH. If the
store holds the stream (its checksum.json, uploaded last, is there) it is
downloaded once per host and verified locally; otherwise it is built into
the mirror and uploaded, checksum.json last. Every run and host then reuses
it. (This is the small-scale path: data/store.py is the one that scales.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid

from poisonjax import files

_FULL_HASH_LIMIT = 4 << 30  # Bigger token files are checksummed by samples.


def file_digest(path: str) -> str:
  """sha256 of a cached file (sampled above _FULL_HASH_LIMIT), with its size."""
  size = os.path.getsize(path)
  h = hashlib.sha256(str(size).encode())
  with open(path, "rb") as f:
    if size <= _FULL_HASH_LIMIT:
      for block in iter(lambda: f.read(1 << 22), b""):
        h.update(block)
    else:  # 1024 evenly spaced 1 MiB samples: catches truncation and rot.
      for k in range(1024):
        f.seek(k * (size - (1 << 20)) // 1023)
        h.update(f.read(1 << 20))
  return h.hexdigest()


CHECKED = ("tokens.bin", "spans.npy", "manifest.json", "meta.json")


def verify(d: str) -> str | None:
  """None if the cached stream is intact, else the reason it is not."""
  path = os.path.join(d, "checksum.json")
  if not os.path.isfile(path):
    return "checksum.json missing"
  try:
    want = files.read_json(path)
  except (OSError, ValueError):
    return "checksum.json unreadable"
  for name in CHECKED:
    f = os.path.join(d, name)
    if not os.path.isfile(f):
      return f"{name} missing"
    if file_digest(f) != want.get(name):
      return f"{name} checksum mismatch"
  return None


def write_checksum(d: str) -> None:
  """checksum.json of the CHECKED files: written last, it says d is complete."""
  files.write_json(os.path.join(d, "checksum.json"),
                   {name: file_digest(os.path.join(d, name)) for name in CHECKED})


def mirror_dir(remote: str) -> str:
  """The local mirror of a stream directory on a store."""
  root = os.environ.get("POISONJAX_MIRROR") or os.path.join(
      os.path.expanduser("~"), ".cache", "poisonjax", "mirror")
  scheme, rest = str(remote).split("://", 1)
  return os.path.join(os.path.abspath(root), scheme, rest)


def download(remote: str, local: str) -> bool:
  """Makes `local` a copy of the store's stream; False if it has none.

  A mirror whose checksum.json equals the store's is kept as it is.
  """
  r = files.as_path(remote)
  try:
    want = (r / "checksum.json").read_bytes()
  except FileNotFoundError:
    return False
  mine = os.path.join(local, "checksum.json")
  if os.path.isfile(mine) and files.as_path(mine).read_bytes() == want:
    return True
  tmp = f"{local}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    for name in CHECKED:
      files.copy_file(r / name, os.path.join(tmp, name))
    files.as_path(tmp).joinpath("checksum.json").write_bytes(want)
    shutil.rmtree(local, ignore_errors=True)
    try:
      os.rename(tmp, local)
    except OSError:  # Another process on this host mirrored it first.
      pass
  except FileNotFoundError as e:
    print(f"stream cache {remote}: incomplete ({e.filename or e}); "
          "rebuilding", flush=True)
    return False
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(f"stream cache: downloaded {remote} to {local}", flush=True)
  return True


def upload(local: str, remote: str) -> None:
  """Copies the stream to the store; checksum.json last (it says complete)."""
  r = files.as_path(remote)
  for name in (*CHECKED, "checksum.json"):
    files.copy_file(os.path.join(local, name), r / name)
  print(f"stream cache: uploaded {local} to {remote}", flush=True)
