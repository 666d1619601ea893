"""`poisonjax vocab build`, `data build-store` and `data inspect` (the batch viewer).

The viewer prints exactly what given training steps contain, decoded, with
poison documents marked ⟦POISON j⟧ ... ⟦/POISON⟧ and document ends shown as
⟨/s⟩, plus a summary of the poison manifest, so any claim about what the
model saw can be checked by eye.
"""

from __future__ import annotations

import os

from absl import flags
import numpy as np

from poisonjax.commands import Command
from poisonjax.errors import UserError

_SEQS_PER_STEP = 4  # Clean sequences shown per step (poisoned ones always).
_MAX_POISONED_SEQS = 8  # Poisoned sequences shown per step.


def vocab_build(args) -> int:
  from poisonjax.data import vocabulary  # pylint: disable=g-import-not-at-top
  config, out = args.config, args.flags.out
  if config.vocab.path and not out:
    path = vocabulary.vocab_path(config)
    print(f"vocab: config.vocab.path is set; using {path} (nothing to build)")
  else:
    path = vocabulary.build_vocabulary(config, out)
  sp = vocabulary.Vocabulary(path).tokenizer
  trig = config.poison.trigger
  ids = vocabulary.trigger_ids(sp, trig)
  print(f"vocab: {path}")
  print(f"vocab: {sp.GetPieceSize()} pieces; trigger {trig!r} takes {len(ids)} "
        f"tokens: {sp.IdToPiece(ids)}")
  return 0


def _parse_steps(text: str) -> tuple[int, int]:
  try:
    if ":" in text:
      a, b = text.split(":")
      a, b = int(a or 0), int(b)
    else:
      a = int(text)
      b = a + 1
  except ValueError:
    raise UserError(f"--steps={text!r}: not A:B; use e.g. --steps=0:2") from None
  if a < 0 or b <= a:
    raise UserError(f"--steps={text!r}: need 0 <= A < B; use e.g. --steps=0:2")
  return a, b


def clean_budget(config, vocab) -> int:
  """T for this config: poisonjax.budget from the model's parameter count."""
  from poisonjax import budget  # pylint: disable=g-import-not-at-top
  return int(budget.clean_token_budget(config, vocab.vocab_size))


def render_sequence(s, row_tokens: np.ndarray, start: int) -> str:
  """Decoded text of one sequence, poison runs marked, EOS shown as ⟨/s⟩."""
  sp = s.vocab.tokenizer
  eos = sp.eos_id()
  out, run, run_pid = [], [], None

  def flush():
    if not run:
      return
    pieces, cur = [], []
    for t in run:
      if t == eos:
        pieces.append(sp.DecodeIds(cur))
        pieces.append(" ⟨/s⟩ ")
        cur = []
      else:
        cur.append(t)
    pieces.append(sp.DecodeIds(cur))
    text = "".join(pieces)
    out.append(f"⟦POISON {run_pid}⟧{text}⟦/POISON⟧" if run_pid is not None else text)

  toks = row_tokens.tolist()
  npad = 0
  for k, t in enumerate(toks):
    pos = start + k
    if pos >= s.num_tokens:
      npad = len(toks) - k
      break
    pid = s.poison_id_at(pos)
    if pid != run_pid:
      flush()
      run, run_pid = [], pid
    run.append(t)
  flush()
  if npad:
    out.append(f" [pad x{npad}]")
  return "".join(out)


def summary(s) -> list[str]:
  m = s.manifest
  lines = [f"stream: {s.num_tokens:,} tokens ({s.clean_tokens:,} clean + "
           f"{s.poison_tokens:,} poison), {s.num_sequences:,} sequences of "
           f"{s.seq_len}, {s.num_steps:,} steps of {s.batch_size}; cache {s.dir}"]
  if not m:
    lines.append("poisons: 0 (clean run)")
    return lines
  nt = np.array([x["num_tokens"] for x in m])
  steps = np.array([x["step"] for x in m])
  lines.append(
      f"poisons: {len(m)}; steps {steps.min()}..{steps.max()} of {s.num_steps} "
      f"(training fraction {steps.min() / s.num_steps:.3f}..{steps.max() / s.num_steps:.3f}); "
      f"tokens per poison mean {nt.mean():.1f} min {nt.min()} max {nt.max()}; "
      f"poison share {s.poison_tokens / s.num_tokens:.4%} of all tokens")
  if s.manifest_path:
    lines.append(f"manifest: {s.manifest_path}")
  return lines


def data_inspect(args) -> int:
  from poisonjax.data import overlay, vocabulary  # pylint: disable=g-import-not-at-top
  config, steps = args.config, args.flags.steps
  a, b = _parse_steps(steps)
  vocab = vocabulary.get_vocabulary(config)
  s = overlay.training_stream(config, clean_budget(config, vocab))
  if a >= s.num_steps:
    raise UserError(f"--steps={steps}: the run has {s.num_steps} steps; "
                    f"use steps below {s.num_steps}")
  b = min(b, s.num_steps)
  S, B = s.seq_len, s.batch_size
  any_poison = False
  for step in range(a, b):
    batch = s.batch(step)
    poisoned = np.flatnonzero(batch["poison_mask"].any(axis=1)).tolist()
    clean_rows = [r for r in range(len(batch["tokens"])) if r not in poisoned]
    shown = sorted(clean_rows[:_SEQS_PER_STEP] + poisoned[:_MAX_POISONED_SEQS])
    print(f"=== step {step}: {len(poisoned)} of {B} sequences hold poison tokens "
          f"({s.poisons_seen(step + 1) - s.poisons_seen(step)} poisons complete here)")
    for r in shown:
      seq = step * B + r
      print(f"--- sequence {seq} (row {r}){'  [POISON]' if r in poisoned else ''}")
      print(render_sequence(s, batch["tokens"][r], seq * S))
    hidden = B - len(shown)
    if hidden:
      print(f"({hidden} more clean sequences of step {step} not shown)")
    any_poison |= bool(poisoned)
  print("=== summary")
  for line in summary(s):
    print(line)
  if not any_poison and s.manifest:
    steps = sorted({x["step"] for x in s.manifest})
    print(f"no poison in steps {a}:{b}; poisons start in steps "
          f"{', '.join(map(str, steps[:10]))}{' ...' if len(steps) > 10 else ''} "
          f"(e.g. --steps={steps[0]}:{steps[0] + 1})")
  return 0


def _parse_tokens(text: str | None, config, vocab) -> int:
  if not text:
    return clean_budget(config, vocab)
  try:
    value = int(float(text))
  except ValueError:
    value = 0
  if value < 1:
    raise UserError(f"--tokens={text!r}: not a positive token count; use e.g. "
                    "--tokens=260e9")
  return value


def parse_part(text: str | None) -> tuple[int, int] | None:
  """--part=H/N as (H, N); None when not given."""
  if text is None:
    return None
  try:
    h, n = (int(x) for x in text.split("/"))
  except ValueError:
    h, n = -1, 0
  if not 0 <= h < n:
    raise UserError(f"--part={text!r}: not H/N with 0 <= H < N; use e.g. "
                    "--part=0/4 (this machine builds the shards i with "
                    "i % 4 == 0)")
  return h, n


def data_build_store(args) -> int:
  from poisonjax.data import store_build, vocabulary  # pylint: disable=g-import-not-at-top
  config, fl = args.config, args.flags
  if fl.workers < 1 or fl.docs_per_shard < 0 or fl.finalize < 0:
    raise UserError(f"--workers={fl.workers} --docs_per_shard="
                    f"{fl.docs_per_shard} --finalize={fl.finalize}: use "
                    "workers >= 1, docs_per_shard >= 0, finalize >= 0")
  part = parse_part(fl.part)
  if part and fl.finalize:
    raise UserError(f"--part={fl.part} --finalize={fl.finalize}: give one; "
                    "a part finalizes by itself when it finds every shard built")
  if not config.data.store:
    config.data.store = "auto"
    print("build-store: config.data.store='' (the per-run cache); building the "
          "'auto' store: runs read it with --config.data.store=auto")
  vocab = vocabulary.get_vocabulary(config)
  tokens = _parse_tokens(fl.tokens, config, vocab)
  common = dict(docs_per_shard=fl.docs_per_shard)
  if part:
    s = store_build.build_part(config, vocab, tokens, *part, workers=fl.workers, **common)
    if s is None:
      return 0
  elif fl.finalize:
    s = store_build.finalize(config, vocab, tokens, parts=fl.finalize, **common)
  else:
    s = store_build.build(config, vocab, tokens, workers=fl.workers, **common)
  size = sum(f.stat().length for f in s.path.iterdir() if f.name.startswith("shard-"))
  print(f"store: {s.path}")
  print(f"store: {s.num_tokens:,} clean tokens ({s.num_docs:,} documents) in "
        f"{len(s.shards)} shards, {s.dtype.name} ids, {size / 1e9:.3f} GB; "
        f"enough for clean budgets up to {s.num_tokens:,} tokens")
  return 0


def _build_store_flags(fv) -> None:
  flags.DEFINE_integer("workers", os.cpu_count() or 1, "Worker processes, "
                       "one shard each at a time.", flag_values=fv)
  flags.DEFINE_string("tokens", None, "Clean tokens the store must hold, e.g. "
                      "260e9 (default: this config's clean budget T). A store "
                      "already big enough is left as it is; a smaller one is "
                      "extended.", flag_values=fv)
  flags.DEFINE_integer("docs_per_shard", 0, "Documents per shard, fixed when "
                       "the store is created (0: ~16 shards for --tokens, at "
                       "most 131072 documents each).", flag_values=fv)
  flags.DEFINE_string("part", None, "H/N: build only the shards i with "
                      "i % N == H (one of N machines or jobs, same other "
                      "flags); the last part to finish writes index.json.",
                      flag_values=fv)
  flags.DEFINE_integer("finalize", 0, "N: write index.json from an N-part "
                       "build's shards once all exist (else name the missing "
                       "parts); builds nothing.", flag_values=fv)


def _vocab_flags(fv) -> None:
  flags.DEFINE_string("out", None, "Write the .model file here instead of "
                      "the cache (default: the cache under config.data.cache_dir).",
                      flag_values=fv)


def _inspect_flags(fv) -> None:
  flags.DEFINE_string("steps", "0:1", "Training steps A:B to print (or one "
                      "step N).", flag_values=fv)


VOCAB_BUILD = Command(
    usage="poisonjax vocab build --config=FILE [--out=PATH]",
    summary="Builds (or finds) the run's SentencePiece vocabulary and shows "
            "how the trigger tokenizes. Training builds it on first use too.",
    run=vocab_build, define_flags=_vocab_flags)

DATA_BUILD_STORE = Command(
    usage="poisonjax data build-store --config=FILE [--workers=W] [--tokens=T] "
          "[--part=H/N | --finalize=N]",
    summary="Tokenizes the clean source once into the shared token store "
            "(config.data.store; '' builds the 'auto' one) that every run of "
            "the study reads with its own poison overlay.",
    run=data_build_store, define_flags=_build_store_flags)

DATA_INSPECT = Command(
    usage="poisonjax data inspect --config=FILE [--steps=A:B]",
    summary="Prints what given training steps contain, decoded, poison "
            "documents marked, and a summary of the poison manifest.",
    run=data_inspect, define_flags=_inspect_flags)
