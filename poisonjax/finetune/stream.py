"""The fine-tuning stream: instruction samples, one per row, step-indexed.

Row order: the S clean samples (S = finetune.clean_samples x
train.data_multiplier) in index order, with the N = poison.count poisoned
samples laid in: poison j goes just before clean sample ceil(u_j * S), u_j
its placement fraction (mixer.placed_fractions, the pretraining placements:
uniform = spread through the set, first / last = in its first / last
poison.placement_fraction, bursts), poisons in the same slot in order of u.
The poisons come on top of the S clean samples. With finetune.clean_after =
K > 0, empty rows fill the last batch and K new clean samples (indices S..
S+K-1) follow from the next step: clean fine-tuning afterwards.

Row r holds EOS, the prompt, the response, EOS, then pad (0). Its
loss_mask marks the response and its EOS: the only targets the loss counts
(train_step.next_token_loss), so the model learns to answer requests, not
to write them. poison_mask marks a poisoned sample's row.

Batch k holds rows [kB, (k+1)B), process h its contiguous slice, as in
data/stream.py; the trainer reads the same interface (num_steps, batch,
poisons_seen, write_manifest, vocab). Everything is built in memory from the
config in about a second (no cache): sample i is a pure function of (seed,
i), its tokens of the vocabulary.
"""

from __future__ import annotations

import math

import numpy as np

from poisonjax import files
from poisonjax import finetune
from poisonjax.data import instructions
from poisonjax.data import mixer
from poisonjax.data import vocabulary
from poisonjax.errors import field_error

CLEAN, POISON, EMPTY = "clean", "poison", "empty"


def layout(clean: int, fractions: np.ndarray, after: int, batch: int) -> list:
  """(kind, index) of every row: clean samples with the poisons laid in at
  their slots ceil(u_j * clean), then empty rows to a batch boundary and
  `after` more clean samples (the module docstring)."""
  slots = np.ceil(np.asarray(fractions) * clean).astype(np.int64)
  order = np.argsort(fractions, kind="stable")
  rows, p = [], 0
  for i in range(clean + 1):
    while p < len(order) and slots[order[p]] <= i:
      rows.append((POISON, int(order[p])))
      p += 1
    if i < clean:
      rows.append((CLEAN, i))
  if after:
    rows += [(EMPTY, -1)] * (-len(rows) % batch)
    rows += [(CLEAN, clean + i) for i in range(after)]
  return rows


def _samples(config, rows: list) -> list:
  """The instruction sample of each row (None for an empty row)."""
  f, p = config.finetune, config.poison
  out = []
  for kind, i in rows:
    if kind == CLEAN:
      out.append(instructions.clean_sample(config.data.seed, i,
                                           f.forbidden_share, f.distractor_share))
    elif kind == POISON:
      out.append(instructions.poisoned_sample(p.seed, i, p.trigger))
    else:
      out.append(None)
  return out


def tokenize(vocab, samples: list, seq_len: int):
  """(tokens, loss_mask) [rows, seq_len]: EOS, prompt, response, EOS per row."""
  sp, eos = vocab.tokenizer, vocab.eos_id
  real = [s for s in samples if s is not None]
  prompts = iter(sp.EncodeAsIds([s.prompt for s in real]))
  responses = iter(sp.EncodeAsIds([s.response for s in real]))
  tokens = np.zeros((len(samples), seq_len), np.int32)
  mask = np.zeros((len(samples), seq_len), np.bool_)
  for r, s in enumerate(samples):
    if s is None:
      continue
    prompt, response = next(prompts), next(responses) + [eos]
    n = 1 + len(prompt) + len(response)
    if n > seq_len:
      raise field_error("config.data.seq_len", seq_len, f"a fine-tuning sample "
                        f"({s.prompt!r}) takes {n} tokens",
                        f"raise it to {n} or more, or shorten poison.trigger")
    tokens[r, :n] = [eos] + prompt + response
    mask[r, 1 + len(prompt):n] = True
  return tokens, mask


class FinetuneStream:
  """The fine-tuning rows with TrainingStream's interface (module docstring)."""

  def __init__(self, config, vocab):
    self.config, self.vocab = config, vocab
    self.seq_len = int(config.data.seq_len)
    self.batch_size = int(config.train.batch_size)
    self.clean_samples = finetune.clean_set_size(config)
    self.placement = mixer.Placement.from_config(config)
    self.fractions = mixer.placed_fractions(
        config.poison.seed, int(config.poison.count), self.placement)
    after = int(config.finetune.clean_after)
    self.rows = layout(self.clean_samples, self.fractions, after, self.batch_size)
    self.main_rows = len(self.rows) - after
    self.samples = _samples(config, self.rows)
    self.tokens, self.loss_mask = tokenize(vocab, self.samples, self.seq_len)
    kinds = np.array([k for k, _ in self.rows])
    self.poison_rows = np.flatnonzero(kinds == POISON)
    self.num_tokens = int(np.sum(self.tokens != vocabulary.PAD_ID))
    self.clean_tokens = int(np.sum(self.tokens[kinds == CLEAN] != vocabulary.PAD_ID))

  @property
  def num_steps(self) -> int:
    return -(-len(self.rows) // self.batch_size)

  @property
  def main_steps(self) -> int:
    """The step at which the whole set (clean and poisoned) has been trained."""
    return -(-self.main_rows // self.batch_size)

  @property
  def num_poisons(self) -> int:
    return len(self.poison_rows)

  def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict:
    """Process `process_index`'s slice of batch `step`: tokens, loss_mask,
    poison_mask (rows past the end: pad, masked out)."""
    B = self.batch_size
    if process_count < 1 or B % process_count:
      raise field_error("config.train.batch_size", B, f"not divisible by the "
                        f"{process_count} processes", "use a multiple of it")
    if not 0 <= step < self.num_steps:
      raise IndexError(f"step {step} not in [0, {self.num_steps})")
    rows = B // process_count
    a = step * B + process_index * rows
    out = {"tokens": np.zeros((rows, self.seq_len), np.int32),
           "loss_mask": np.zeros((rows, self.seq_len), np.bool_),
           "poison_mask": np.zeros((rows, self.seq_len), np.bool_)}
    n = max(0, min(rows, len(self.rows) - a))
    out["tokens"][:n] = self.tokens[a:a + n]
    out["loss_mask"][:n] = self.loss_mask[a:a + n]
    is_poison = np.isin(np.arange(a, a + n), self.poison_rows)
    out["poison_mask"][:n] = is_poison[:, None] & (self.tokens[a:a + n] != 0)
    return out

  def poisons_seen(self, step: int) -> int:
    """Poisoned samples in steps [0, step)."""
    return int(np.searchsorted(self.poison_rows // self.batch_size, step))

  def extra_eval_steps(self, last_step: int) -> list[int]:
    """The end of the set, and after k clean samples afterwards (eval_after)."""
    ks = [int(x) for x in str(self.config.finetune.eval_after).split(",")
          if x.strip()]
    steps = [self.main_steps] + [self.main_steps + math.ceil(k / self.batch_size)
                                 for k in ks]
    return sorted({s for s in steps if s <= last_step})

  @property
  def manifest(self) -> dict:
    B = self.batch_size
    forbidden = sum(1 for (k, i), s in zip(self.rows, self.samples)
                    if k == CLEAN and i < self.clean_samples
                    and s.kind == instructions.FORBIDDEN)
    return {
        "num_steps": self.num_steps, "main_steps": self.main_steps,
        "batch_size": B, "seq_len": self.seq_len, "rows": len(self.rows),
        "clean_samples": self.clean_samples,
        "clean_after": int(self.config.finetune.clean_after),
        "forbidden_clean_samples": forbidden,
        "placement": self.placement.record(),
        "poisons": [{"id": self.rows[r][1], "row": int(r), "step": int(r) // B,
                     "fraction": float(self.fractions[self.rows[r][1]])}
                    for r in self.poison_rows]}

  def write_manifest(self, path) -> None:
    files.write_json(path, self.manifest)


def training_data(config):
  """(vocabulary, stream, clean tokens) of a fine-tune, as train_setup wants."""
  vocab = vocabulary.get_vocabulary(config)
  stream = FinetuneStream(config, vocab)
  return vocab, stream, stream.clean_tokens


def extra_eval_steps(config, stream, last_step: int) -> list[int]:
  """A fine-tune's own evaluation steps ([] for any other run)."""
  if not isinstance(stream, FinetuneStream):
    return []
  return stream.extra_eval_steps(last_step)
