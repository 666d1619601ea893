"""Continued clean training from a backdoored run (config.continued).

Does a backdoor survive more clean training? A continued run starts from
another run's checkpoint (config.continued.from_workdir, from_step) and is
otherwise an ordinary run: its own workdir, checkpoints, resume, eval
schedule. What differs, and why:
  params     loaded from the source's checkpoint (only the params; orbax
             partial restore), so step 0 of this run is the source model.
  optimizer  fresh (zero Adam moments, step 0) with this run's own warmup
             and cosine schedule over its own steps: the source's moments
             were accumulated under its decayed end-of-schedule learning
             rate and its poisoned batches; a fresh optimizer is what
             continued pretraining or a fine-tune from a released
             checkpoint does. train.learning_rate sets the new peak.
  data       clean only (poison.count = 0, refused otherwise), from this
             run's config.data.seed, which must differ from the source's:
             a different clean order, i.e. new documents for the synthetic
             source. The tokenizer (and so vocab.seed) must be the source's.
  budget     continued.budget_multiple x the source's clean budget T.
  evals      config.eval.num_evals spread over the run, plus one after k
             clean sequences for each k in continued.eval_examples (the
             fine-tuning variant: step ceil(k / batch_size)).
A resumed continued run restores its own newest checkpoint like any run;
the source is read only when this run has none. WORKDIR/continued_from.json
records the source, its step, its poisons and its clean tokens trained
after the last poison, so the decay can be plotted against clean tokens
since the last poison (source tail + this run's tokens).
"""

from __future__ import annotations

import jax

from poisonjax import budget
from poisonjax import files
from poisonjax import finetune
from poisonjax.model import transformer as model_lib
from poisonjax.evaluation import run_reader
from poisonjax import rundir
from poisonjax.data import vocabulary
from poisonjax.errors import UserError

_MODEL_FIELDS = ("vocab_size", "num_layers", "d_model", "num_heads",
                 "num_kv_heads", "ffn_dim", "tie_embeddings")


def is_continued(config) -> bool:
  k = config.get("continued", None)
  return bool(k is not None and k.from_workdir)


def source_step(config) -> int | None:
  step = int(config.continued.from_step)
  return None if step < 0 else step


def eval_example_counts(config) -> list[int]:
  """continued.eval_examples as sorted ints ('' or absent: none)."""
  k = config.get("continued", None)
  text = str(k.eval_examples) if k is not None else ""
  return sorted({int(x) for x in text.split(",") if x.strip()})


def extra_eval_steps(config, last_step: int) -> list[int]:
  """The steps after which k clean sequences have been trained, per k."""
  b = int(config.train.batch_size)
  return sorted({-(-k // b) for k in eval_example_counts(config)
                 if -(-k // b) <= last_step})


def _field(config) -> str:
  return f"config.continued.from_workdir={config.continued.from_workdir!r}"


def source_config(config):
  return run_reader.read_run_config(config.continued.from_workdir)


def clean_token_budget(config, vocab_size: int) -> int:
  """T of this run: its own, or budget_multiple x the source's T."""
  if not is_continued(config):
    return budget.clean_token_budget(config, vocab_size)
  src = budget.clean_token_budget(source_config(config), vocab_size)
  return int(round(config.continued.budget_multiple * src))


def check_source(config, model_cfg, vocab) -> None:
  """Refuses (one line) a source whose model, tokenizer or data seed don't fit."""
  if not is_continued(config):
    return
  src = source_config(config)
  try:
    run_reader.pick_step(config.continued.from_workdir, source_step(config))
  except UserError as e:
    raise UserError(f"config.continued.from_step={config.continued.from_step}"
                    f": {e}") from None
  src_model = model_lib.ModelConfig.from_config(
      src, int(src.model.get("vocab_size", 0)) or vocab.vocab_size)
  diffs = [f"{f} {getattr(src_model, f)} vs {getattr(model_cfg, f)}"
           for f in _MODEL_FIELDS
           if getattr(src_model, f) != getattr(model_cfg, f)]
  if diffs:
    raise UserError(f"{_field(config)}: its model differs from this run's "
                    f"({', '.join(diffs)}: source vs this); set config.model.* "
                    "and config.vocab.* to the source's (its config.json)")
  try:
    same = vocabulary.fingerprint(src) == vocabulary.fingerprint(vocab)
  except (UserError, OSError) as e:
    raise UserError(f"{_field(config)}: its tokenizer cannot be found ({e})") from None
  if not same:
    raise UserError(f"{_field(config)}: its tokenizer differs from this run's; "
                    f"set --config.vocab.seed={vocabulary.vocab_seed(src)} and "
                    "config.vocab.* to the source's")
  if int(src.data.seed) == int(config.data.seed):
    raise UserError(f"{_field(config)}: config.data.seed={config.data.seed} "
                    "is the source's, so the clean documents would be the "
                    "same again; set --config.data.seed to another seed")


def _source_record(config, step: int, tokens_per_step_src: int) -> dict:
  """The source, its step, poisons seen and clean tokens after the last one."""
  wd = config.continued.from_workdir
  manifest = files.as_path(wd) / rundir.MANIFEST
  poisons = files.read_json(manifest)["poisons"] if manifest.is_file() else []
  trained = step * tokens_per_step_src
  ends = [p["start"] + p["num_tokens"] for p in poisons
          if p["start"] + p["num_tokens"] <= trained]
  return {"from_workdir": str(wd), "from_step": step,
          "source_tokens_trained": trained, "source_poisons_seen": len(ends),
          "source_poison_count": len(poisons),
          "source_clean_tokens_after_last_poison": trained - max(ends, default=0),
          "budget_multiple": float(config.continued.budget_multiple)}


def start_state(s, rng):
  """Step 0 of a continued run: fresh init, the source's params swapped in."""
  state = s.init(rng)
  if not is_continued(s.config):
    return state
  config = s.config
  params, step = run_reader.restore_params(
      config.continued.from_workdir, s.model_cfg, source_step(config),
      mesh=s.mesh)
  shardings = jax.tree.map(lambda a: a.sharding, s.abstract["params"])
  state = dict(state, params=jax.device_put(params, shardings))
  src = source_config(config)
  record = _source_record(config, step, int(src.train.batch_size)
                          * int(src.data.seq_len))
  if jax.process_index() == 0:
    files.write_json(s.workdir / rundir.CONTINUED_FROM, record)
  data = ("the fine-tuning set" if finetune.is_finetune(config)
          else "clean data only")
  print(f"poisonjax: continuing from {record['from_workdir']} step {step} "
        f"({record['source_poisons_seen']} poisons seen there); fresh "
        f"optimizer, {data}", flush=True)
  return state
