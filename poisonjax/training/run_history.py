"""A run directory's config and history: resume only the run it holds.

WORKDIR/config.json is the resolved config of the run (model sizes filled
in, so readers rebuild the exact model). On resume the new config is compared
with it field by field before anything is built or written:

* a change to a field that defines the run (model, vocabulary, data, poison,
  seed, batch, sequence length, token budget, optimizer schedule, evaluation
  protocol) is refused with one line listing each change, unless the caller
  allows it explicitly;
* other fields (logging and checkpoint cadence, checkpoints kept, mesh,
  max_steps, cache paths, eval batch size) may change.

Every session appends a row to WORKDIR/history.jsonl with the changes it
brought (allowed defining ones flagged), and how it ended.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from typing import Any

import ml_collections

from poisonjax import config as config_lib
from poisonjax import files
from poisonjax import rundir
from poisonjax.model import sizes
from poisonjax.errors import UserError

# Fields that do not change what is trained or measured (dotted, no
# "config." prefix). A prefix ending in "." covers a whole section. Every
# other field, including any added later, defines the run.
NOT_DEFINING = (
    "mesh.",  # Layout only: the same math on another mesh.
    "data.cache_dir", "data.tfds.data_dir",  # Where files live.
    "data.store",  # The store + overlay give the per-run cache's batches.
    "model.remat",  # Memory/compute trade, same values.
    "train.microbatches",  # Same update; sums differ only in float rounding.
    "train.max_steps",  # Where to stop; the stream and schedule stay.
    "train.log_every", "train.ckpt_every", "train.keep_checkpoints",
    "train.keep_period", "train.skip_nonfinite", "train.peak_flops",
    "train.lock_timeout_s", "train.shutdown_eval_grace_s",
    "eval.batch_size", "eval.num_evals",
)

# Sections every config.json has (a JSON file without them is no run's config).
_SECTIONS = ("model", "data", "vocab", "poison", "train", "eval")

_MODEL_DERIVED = ("num_layers", "d_model", "num_heads", "num_kv_heads",
                  "ffn_dim", "vocab_size")


def is_defining(field: str) -> bool:
  return not any(field == p or (p.endswith(".") and field.startswith(p))
                 for p in NOT_DEFINING)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON values (what config.json holds)."""
  return json.loads(config.to_json_best_effort())


def resolve_model(tree: dict, vocab_size: int) -> dict:
  """`tree` with the model fields left at 0 filled in (a copy)."""
  tree = json.loads(json.dumps(tree))
  model = ml_collections.ConfigDict(tree["model"])
  sizes.resolve_model_config(model, vocab_size)
  tree["model"].update({k: model[k] for k in _MODEL_DERIVED})
  return tree


def resolved_config(config, vocab_size: int) -> dict:
  """What WORKDIR/config.json holds: the config, model sizes resolved."""
  return resolve_model(config_dict(config), vocab_size)


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{field: (old, new)} for fields whose resolved values differ.

  A field the old file lacks (added to the code since) counts as unchanged
  when the new value is its default. The new model sizes are resolved with
  the old vocabulary size: a different vocabulary shows in vocab.*/data.*.
  """
  old_vocab = old.get("model", {}).get("vocab_size", 0)
  new = resolve_model(new, old_vocab) if old_vocab else new
  old_flat, new_flat = _renamed(flatten(old)), flatten(new)
  defaults = flatten(config_dict(config_lib.base_config()))
  changes = {}
  for field, value in new_flat.items():
    before = old_flat.get(field, defaults.get(field, value))
    if before != value:
      changes[field] = (before, value)
  return changes


def _renamed(flat: dict) -> dict:
  """An older config.json's renamed fields under today's names."""
  if "poison.inside_budget" in flat and "poison.budget_mode" not in flat:
    flat = dict(flat)
    inside = flat.pop("poison.inside_budget")
    flat["poison.budget_mode"] = "replace" if inside else "on_top"
  return flat


def read_config(path) -> dict:
  """A run's config.json as a dict; UserError (one line) if it is none."""
  try:
    old = files.read_json(path)
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError included.
    why = f"not JSON: {str(e).splitlines()[0][:120]}"
  else:
    missing = ([s for s in _SECTIONS if not isinstance(old.get(s), dict)]
               if isinstance(old, dict) else None)
    if missing == []:
      return old
    why = (f"a JSON {type(old).__name__}, not an object" if missing is None
           else f"no {', '.join(missing)} section")
  raise UserError(f"{path}: unreadable as a run's config ({why}); restore "
                  "it from a copy of the run, or use a new --workdir")


def check_resume(workdir, config, *, allow_change: bool) -> dict | None:
  """None for a new run; else the changes this resume brings.

  Raises UserError (one line) on a change to a defining field unless
  `allow_change`. Writes nothing.
  """
  path = files.as_path(workdir) / rundir.CONFIG
  if not path.exists():
    return None
  old = read_config(path)
  changes = config_changes(old, config_dict(config))
  defining = [f for f in changes if is_defining(f)]
  if defining and not allow_change:
    listed = ", ".join(f"config.{f} {changes[f][0]!r} -> {changes[f][1]!r}"
                       for f in defining)
    raise UserError(
        f"{workdir} holds a run with another config: {listed}; resuming would "
        "mix two runs; use a new --workdir, or pass --allow_config_change to "
        f"resume anyway (recorded in {rundir.HISTORY})")
  return changes


def record(workdir, event: str, **fields) -> None:
  """Appends one row to WORKDIR/history.jsonl (call on process 0 only)."""
  row = {"event": event,
         "time": datetime.datetime.now().isoformat(timespec="seconds"),
         "host": socket.gethostname(), "pid": os.getpid()}
  row.update(fields)
  files.append_jsonl(files.as_path(workdir) / rundir.HISTORY, row)


def record_start(workdir, changes: dict | None, **fields) -> None:
  """The session's first row: new run, or resume with its config changes."""
  if changes is None:
    record(workdir, "start", **fields)
    return
  record(workdir, "resume", **fields,
         changes={f: list(v) for f, v in changes.items()},
         defining_changes_allowed=[f for f in changes if is_defining(f)])


def history(workdir) -> list[dict]:
  return files.read_jsonl(files.as_path(workdir) / rundir.HISTORY)
