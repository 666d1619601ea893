"""The setup phase of a training run: everything built before step one.

Mesh, vocabulary, the step-indexed poisoned stream at the token budget, the
model, the abstract sharded train state with its jitted init and step, the
eval schedule and evaluator; gathered in one `Setup` the other phases read.
Between its parts it asks preemption.check, so a signal stops it there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from etils.epath import Path  # The workdir: local or gs://.

from poisonjax.training import continued
from poisonjax import distributed
from poisonjax.evaluation import evaluate
from poisonjax import files
from poisonjax import finetune
from poisonjax.training import fingerprints
from poisonjax import hardware
from poisonjax.model import transformer as model_lib
from poisonjax.training import optim
from poisonjax.training import preemption
from poisonjax import sharding
from poisonjax.training import train_step
from poisonjax.data import overlay
from poisonjax.data import vocabulary
from poisonjax.errors import field_error
from poisonjax.finetune import evaluate as finetune_evaluate
from poisonjax.finetune import stream as finetune_stream


@dataclasses.dataclass
class Setup:
  """What the setup phase builds; read, never changed, by the others."""
  config: Any
  workdir: Path
  mesh: Any
  vocab: Any
  stream: Any
  model_cfg: model_lib.ModelConfig
  model: Any
  init: Any  # Jitted rng -> sharded train state.
  abstract: Any  # The state as sharded ShapeDtypeStructs.
  train_step: Any  # Jitted (state, batch) -> (state, metrics).
  batch_sh: Any
  clean_tokens: int
  last_step: int
  evals: list[int]
  evaluator: Any  # None without evals.
  flops_per_step: float
  peak_flops: float  # Of the whole mesh.
  process_block: int = 0  # Which share of each batch this process feeds.

  @property
  def num_steps(self) -> int:
    return self.stream.num_steps

  @property
  def tokens_per_step(self) -> int:
    return self.config.train.batch_size * self.config.data.seq_len



def check_train_fields(config) -> None:
  """The fields only training reads (lock, shutdown grace, evaluations)."""
  t = config.train
  if config.eval.num_evals < 0:
    raise field_error("config.eval.num_evals", config.eval.num_evals,
                      "must be >= 0", "use 0 for no periodic evaluation")
  if t.lock_timeout_s <= 0:
    raise field_error("config.train.lock_timeout_s", t.lock_timeout_s,
                      "must be > 0", "use e.g. 600 (seconds)")
  if t.shutdown_eval_grace_s < 0:
    raise field_error("config.train.shutdown_eval_grace_s",
                      t.shutdown_eval_grace_s, "must be >= 0",
                      "use 0 to skip the evaluation on shutdown")



# The config fields that may hold a gs:// path a run reads or writes.
_PATH_FIELDS = ("data.cache_dir", "vocab.path", "data.text_files.patterns",
                "data.store", "data.tfds.data_dir", "eval.scorer_workdir",
                "continued.from_workdir")


def check_reachable(config, workdir) -> None:
  """One line, within seconds, if a gs:// bucket of the run cannot be reached."""
  files.check_reachable(workdir, "--workdir")
  for field in _PATH_FIELDS:
    value = config
    for part in field.split("."):
      value = value.get(part) if hasattr(value, "get") else None
    for path in str(value or "").split(","):  # Patterns: comma-separated.
      if "://" in path:
        files.check_reachable(path.strip().split("*")[0], f"config.{field}")


def _check_batch(config, mesh) -> int:
  """Checks the batch splits over the mesh; returns this process's block."""
  b = config.train.batch_size
  shards = sharding.batch_shards(mesh)
  if b % shards:
    raise field_error("config.train.batch_size", b,
                      f"not divisible by the data x fsdp devices ({shards})",
                      f"use a multiple of {shards} or change config.mesh")
  if b % jax.process_count():
    raise field_error("config.train.batch_size", b,
                      f"not divisible by the {jax.process_count()} processes",
                      "use a multiple of the process count")
  return sharding.process_block(mesh, b)


def _data(config, stream, inputs_check=None):
  """(vocabulary, stream, clean token budget); the stream built if None.

  inputs_check(fingerprints of the vocabulary and data) runs before the
  stream is built: a resume on changed inputs is refused before that work.
  """
  if stream is not None:
    return stream.vocab, stream, continued.clean_token_budget(
        config, stream.vocab.vocab_size)
  if finetune.is_finetune(config):
    return finetune_stream.training_data(config)
  vocab = vocabulary.get_vocabulary(config)
  preemption.check("the vocabulary build")
  if inputs_check is not None:
    inputs_check(fingerprints.of_inputs(config, vocab))
  clean_tokens = continued.clean_token_budget(config, vocab.vocab_size)
  stream = overlay.training_stream(config, clean_tokens,
                                   may_build=jax.process_count() == 1)
  return vocab, stream, clean_tokens


def setup(config, workdir: Path, stream=None, inputs_check=None) -> Setup:
  """Mesh, data, model, the jitted init/step and the evaluator.

  inputs_check: see _data.
  """
  mesh = sharding.make_mesh(config.mesh)
  process_block = _check_batch(config, mesh)
  vocab, stream, clean_tokens = distributed.primary_first(
      lambda: _data(config, stream, inputs_check), "the vocabulary and the data")
  preemption.check("the stream build")
  model_cfg = model_lib.ModelConfig.from_config(config, vocab.vocab_size)
  continued.check_source(config, model_cfg, vocab)
  num_steps = stream.num_steps
  last_step = num_steps
  if 0 < config.train.max_steps < num_steps:
    last_step = config.train.max_steps
  tx, schedule = optim.make_optimizer(config, num_steps)
  model, init, abstract, state_sh = train_step.build_state_fns(
      config, model_cfg, mesh, tx)
  batch_sh = sharding.batch_sharding(mesh)
  step_fn = train_step.jit_train_step(config, model, tx, schedule, state_sh, batch_sh)
  evals = _eval_schedule(num_steps, last_step, config.eval.num_evals,
                         continued.extra_eval_steps(config, last_step)
                         + _finetune_eval_steps(config, stream, last_step))
  preemption.check("the model's compilation")
  evaluator = None
  if evals:
    evaluator = _evaluator(config)(config, model_cfg, vocab, mesh)
    preemption.check("the evaluator's set-up")
  tokens_per_step = config.train.batch_size * config.data.seq_len
  return Setup(
      config=config, workdir=workdir, mesh=mesh, vocab=vocab, stream=stream,
      model_cfg=model_cfg, model=model, init=init, abstract=abstract,
      train_step=step_fn, batch_sh=batch_sh, clean_tokens=clean_tokens,
      last_step=last_step, evals=evals, evaluator=evaluator,
      flops_per_step=model_lib.flops_per_token(model_cfg, config.data.seq_len)
      * tokens_per_step,
      peak_flops=hardware.peak_flops_per_device(config) * mesh.size,
      process_block=process_block)


def _evaluator(config):
  """The evaluator class: a fine-tune's answers, else the backdoor's perplexity."""
  if finetune.is_finetune(config):
    return finetune_evaluate.Evaluator
  return evaluate.Evaluator


def _finetune_eval_steps(config, stream, last_step: int) -> list[int]:
  if not finetune.is_finetune(config):
    return []
  return finetune_stream.extra_eval_steps(config, stream, last_step)


def _eval_schedule(num_steps: int, last_step: int, num_evals: int,
                   extra: list[int] = ()) -> list[int]:
  """num_evals spread over the run (+ step 0 and the last), plus `extra`."""
  if num_evals <= 0 and not extra:
    return []
  steps = list(extra)
  if num_evals > 0:
    steps += [s for s in evaluate.eval_steps(num_steps, num_evals)
              if s <= last_step] + [last_step]
  return sorted(set(steps))


