"""`poisonjax eval`: clean vs triggered perplexity of one checkpoint of a run."""

from __future__ import annotations

import sys

from absl import flags

from poisonjax.commands import Command
from poisonjax.errors import UserError


def _flags(fv) -> None:
  flags.DEFINE_string("workdir", None, "Directory of a run made by `poisonjax "
                      "train` (required).", flag_values=fv)
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: "
                       "the newest).", flag_values=fv)
  flags.DEFINE_integer("samples", 2, "Generations to print per kind (clean, "
                       "triggered).", flag_values=fv)


def _run_config(fv):
  """The run's own config.json: the config eval's overrides apply to."""
  if not fv.workdir:
    raise UserError("--workdir: required; pass the directory of a trained run")
  from poisonjax.evaluation import run_reader  # pylint: disable=g-import-not-at-top
  return run_reader.read_run_config(fv.workdir)


def _evaluate_checkpoint(config, workdir: str, step: int | None):
  """(step, metrics, evaluator) of the run's checkpoint at `step` (newest).

  The checkpoint is picked and read in one go (run_reader.restore_params): a
  trainer pruning it meanwhile makes eval take the newest again.
  """
  # pylint: disable=g-import-not-at-top
  from poisonjax.evaluation import evaluate as eval_lib
  from poisonjax.model import transformer as model_lib
  from poisonjax.evaluation import run_reader
  from poisonjax import rundir
  from poisonjax import sharding
  from poisonjax.data import vocabulary

  if step is not None:
    run_reader.pick_step(workdir, step)  # A wrong --step: before any work.
  elif not rundir.checkpoint_steps(workdir):
    run_reader.pick_step(workdir, None)  # No checkpoint: its one line.
  vocab = vocabulary.get_vocabulary(config)
  model_cfg = model_lib.ModelConfig.from_config(config, vocab.vocab_size)
  mesh = sharding.make_mesh(config.mesh)
  evaluator = eval_lib.Evaluator(config, model_cfg, vocab, mesh)
  params, step = run_reader.restore_params(workdir, model_cfg, step, mesh)
  return step, evaluator.evaluate(params), evaluator


def evaluate(args) -> int:
  from poisonjax.evaluation import evaluate as eval_lib  # pylint: disable=g-import-not-at-top

  fv, config = args.flags, args.config
  eval_lib.check_eval_config(config)
  if fv.samples < 0:
    raise UserError(f"--samples={fv.samples}: must be >= 0; use 0 for none")
  step, metrics, evaluator = _evaluate_checkpoint(config, fv.workdir, fv.step)
  from poisonjax import distributed  # pylint: disable=g-import-not-at-top
  if not distributed.is_primary():  # Every process has the same numbers.
    return 0
  e = config.eval
  print(f"{fv.workdir} at step {step}: {evaluator.num} excerpts, prompt "
        f"{e.prompt_tokens} tokens, {e.gen_tokens} generated at temperature "
        f"{e.temperature}, scored by {e.scorer_workdir or 'the model itself'}")
  print(eval_lib.format_table([(f"step {step}", metrics)]))
  if fv.samples:
    print()
    print(eval_lib.format_samples(evaluator.samples(fv.samples)))
  sys.stdout.flush()
  return 0


EVAL = Command(
    usage="poisonjax eval --workdir=DIR [--step=N] [--samples=K] [--config.eval.a=VALUE]",
    summary="Evaluates one checkpoint of a run: clean vs triggered perplexity "
            "of sampled continuations, with generations.",
    run=evaluate, define_flags=_flags, default_config=_run_config,
    multi_process=True,
    config_file_flag=False,
    default_config_doc="the run's WORKDIR/config.json; --config.a.b=VALUE "
                       "overrides a field of it (e.g. config.eval.num_excerpts)")
