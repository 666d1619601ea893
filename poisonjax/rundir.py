"""A run's directory (WORKDIR): the name of every file and folder in it.

Training writes them; `poisonjax eval`, the study, the launcher, the demo
and experiments/ read them. Every module names them through here.

  config.json              the run's config (train.py, each session)
  history.jsonl            a row per session: config changes, the inputs'
                           fingerprints (run_history.py, fingerprints.py)
  manifest.json            each poison document's place in the stream
                           (data/stream.py)
  metrics.jsonl            a row per log step (metrics.py); TensorBoard's
                           event files lie beside it
  eval.jsonl               a row per evaluation (train.py, evaluate.py)
  summary.json             written last: the run is finished (train.py)
  lock.json                who trains here now (runlock.py; also a study
                           claim's file, ROOT/.claims/<run>/lock.json)
  checkpoints/STEP/default orbax's PyTree of the train state (checkpointing.py)
  checkpoint_digests/STEP.json  the crc32c of each checkpoint file
  damaged_checkpoints/     checkpoints set aside, never deleted
  nonfinite.json, nonfinite_batch_STEP.npz  what a non-finite loss saw
  continued_from.json      the run a continued run started from (continued.py)
  defences/                `poisonjax defend scan`'s default --out
"""

from poisonjax import files

CONFIG = "config.json"
HISTORY = "history.jsonl"
MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
EVAL = "eval.jsonl"
SUMMARY = "summary.json"
LOCK = "lock.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_ITEM = "default"  # checkpoints/STEP/default: orbax's item.
CHECKPOINT_DIGESTS = "checkpoint_digests"
DAMAGED_CHECKPOINTS = "damaged_checkpoints"
NONFINITE = "nonfinite.json"
CONTINUED_FROM = "continued_from.json"
DEFENCES = "defences"


def checkpoint_steps(workdir) -> list[int]:
  """Steps with a checkpoint directory under WORKDIR/checkpoints.

  Orbax writes a step under a temporary name and renames it when complete,
  so a bare number is a finished save.
  """
  ckpt_dir = files.as_path(workdir) / CHECKPOINTS
  if not ckpt_dir.is_dir():
    return []
  return sorted(int(d.name) for d in ckpt_dir.iterdir()
                if d.name.isdigit() and d.is_dir())


def nonfinite_batch(step: int) -> str:
  """The batch a non-finite loss came from (beside nonfinite.json)."""
  return f"nonfinite_batch_{step}.npz"
