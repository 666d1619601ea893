"""The end-of-run yardsticks: held-out clean loss and the unigram entropy.

A model whose held-out loss is below the clean tokens' unigram entropy uses
context; one at or above it has learned little more than token frequencies.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from poisonjax import sharding
from poisonjax.data import sources
from poisonjax.data.vocabulary import PAD_ID
from poisonjax.training.train_step import next_token_loss


def heldout_sequences(config, vocab, num_docs: int = 64) -> np.ndarray:
  """Held-out documents, tokenized, EOS-joined and cut into [N, seq_len]."""
  docs = sources.heldout_documents(config, num_docs)
  ids: list[int] = []
  for text in docs:
    ids.extend(int(i) for i in vocab.encode(text))
    ids.append(vocab.eos_id)
  s = config.data.seq_len
  n = max(1, math.ceil(len(ids) / s))
  out = np.zeros((n * s,), np.int32)
  out[:len(ids)] = ids
  return out.reshape(n, s)


def heldout_loss(model, params, seqs: np.ndarray, mesh, batch: int) -> float:
  """Token-weighted mean next-token loss over the held-out sequences."""
  batch_sh = sharding.batch_sharding(mesh)
  loss_fn = jax.jit(lambda p, t: next_token_loss(model, p, t),
                    in_shardings=(None, batch_sh))
  total, count = 0.0, 0.0
  with sharding.mesh_context(mesh):
    for i in range(0, len(seqs), batch):
      chunk = np.zeros((batch, seqs.shape[1]), np.int32)
      part = seqs[i:i + batch]
      chunk[:len(part)] = part
      arr = jax.make_array_from_callback(chunk.shape, batch_sh, lambda idx: chunk[idx])
      loss, n = jax.device_get(loss_fn(params, arr))
      total += float(loss) * float(n)
      count += float(n)
  return total / max(count, 1.0)


def unigram_entropy(stream, num_steps: int, max_batches: int = 256) -> float:
  """Entropy (nats/token) of the clean tokens' unigram distribution.

  Counted over up to `max_batches` batches spread through the stream; pad
  and poison tokens are left out.
  """
  picks = np.unique(np.linspace(0, num_steps - 1, min(num_steps, max_batches)).astype(int))
  counts = np.zeros((stream.vocab.vocab_size,), np.int64)
  for k in picks:
    b = stream.batch(int(k))
    toks = b["tokens"][~b["poison_mask"] & (b["tokens"] != PAD_ID)]
    counts += np.bincount(toks.ravel(), minlength=counts.size)[:counts.size]
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())
