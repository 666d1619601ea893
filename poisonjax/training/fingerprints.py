"""What a run reads, fingerprinted: a resume must read what the run read.

The config names the tokenizer, the data and the poisons; the files behind
those names can still change between two sessions of one run (a corpus
appended to, a cached vocabulary replaced by another of the same size, a
store rebuilt), and a resume would then silently train on other token ids
or other documents. So every session records, in its history.jsonl row:

  vocab    sha256 of the SentencePiece model file
  data     the clean source's identity (sources.*.identity: text files by
           name, size and sha256; a TFDS build by version and split sizes;
           the synthetic generator by its version)
  store    with config.data.store: sha256 of the store's spec and of the
           index entries (with their files' sha256) of the shards the run
           reads; growing the store for a longer run does not change it
  poisons  sha256 of the poison manifest (ids, offsets, lengths, steps)

and a resume compares them with the last recorded ones: a difference is
refused with one line naming what changed, unless --allow_config_change
(then recorded like a config change). A fingerprint absent on either side
(a run older than this check, a store switched on) is not compared.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from poisonjax.training import run_history
from poisonjax import rundir
from poisonjax.data import sources
from poisonjax.data import vocabulary
from poisonjax.errors import UserError


def _sha256_json(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str)
                        .encode()).hexdigest()


def of_inputs(config, vocab, stream=None) -> dict[str, Any]:
  """The fingerprints of the vocabulary and the data (and poisons: `stream`)."""
  out = {"data": sources.get_source(config).identity()}
  if hasattr(vocab, "sentencepiece_model_file"):
    out["vocab"] = vocabulary.fingerprint(vocab)
  store = getattr(stream, "store", None)
  if store is not None:
    out["store"] = store_fingerprint(store.index, stream.clean_tokens)
  if stream is not None and hasattr(stream, "manifest"):
    out["poisons"] = _sha256_json(stream.manifest)
  return out


def store_fingerprint(index: dict, clean_tokens: int) -> str:
  """The store's spec and the index entries of the shards holding the
  first `clean_tokens` tokens (what the run reads)."""
  shards, total = [], 0
  for shard in index.get("shards", []):
    if total >= clean_tokens:
      break
    shards.append(shard)
    total += int(shard.get("num_tokens", 0))
  return _sha256_json({"spec": index.get("spec"), "shards": shards})


def last_recorded(workdir) -> dict | None:
  """The fingerprints of the run's last session that recorded any."""
  for row in reversed(run_history.history(workdir)):
    if isinstance(row.get("fingerprints"), dict):
      return row["fingerprints"]
  return None


def changes(old: dict, new: dict) -> list[str]:
  """What differs between two fingerprint records, one phrase per change."""
  out = []
  if _differ(old, new, "vocab"):
    out.append(f"the vocabulary file changed: sha256 {old['vocab'][:12]}… "
               f"→ {new['vocab'][:12]}…")
  if _differ(old, new, "data"):
    out += _data_changes(old["data"], new["data"])
  if _differ(old, new, "store"):
    out.append(f"the token store's shards changed: {old['store'][:12]}… → "
               f"{new['store'][:12]}… (rebuilt?)")
  if _differ(old, new, "poisons") and not out:  # Else a consequence.
    out.append(f"the poison manifest changed: sha256 {old['poisons'][:12]}… "
               f"→ {new['poisons'][:12]}… (same config: another version of "
               "the poison code?)")
  return out


def _differ(old: dict, new: dict, key: str) -> bool:
  return key in old and key in new and old[key] != new[key]


def _data_changes(old: dict, new: dict) -> list[str]:
  if old.get("source") != "text_files" or new.get("source") != "text_files":
    return [f"the clean data changed: {_short(old)} → {_short(new)}"]
  was, now = old.get("files", {}), new.get("files", {})
  out = []
  for path in sorted(set(was) | set(now)):
    if path not in now:
      out.append(f"text_files: {path} is gone")
    elif path not in was:
      out.append(f"text_files: {path} is new ({_mb(now[path][0])})")
    elif was[path][0] != now[path][0]:
      verb = "grew" if now[path][0] > was[path][0] else "shrank"
      out.append(f"text_files: {path} {verb} from {_mb(was[path][0])} to "
                 f"{_mb(now[path][0])}")
    elif was[path][1] != now[path][1]:
      out.append(f"text_files: {path} changed (same size, other content)")
  return out


def _mb(n: int) -> str:
  return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def _short(obj) -> str:
  text = json.dumps(obj, sort_keys=True, default=str)
  return text if len(text) <= 120 else text[:117] + "..."


def check(workdir, new: dict, *, allow_change: bool) -> list[str]:
  """The changes since the last recorded fingerprints ([] if none).

  Raises UserError (one line) if there are any and not `allow_change`.
  Writes nothing.
  """
  old = last_recorded(workdir)
  found = changes(old, new) if old else []
  if found and not allow_change:
    raise UserError(
        f"{workdir} holds a run that read other inputs: {'; '.join(found)}; "
        "resuming would mix two runs; use a new --workdir, or pass "
        "--allow_config_change to resume anyway (recorded in "
        f"{rundir.HISTORY})")
  return found
