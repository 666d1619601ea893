"""Per-token NLL of documents under a clean reference model.

The reference is a finished run's checkpoint (run_reader.load_scorer: same
tokenizer required), ideally trained on other clean data than the stream
scored, so clean documents are unseen text to it, as a defender's model
would be. A document is scored as the model saw text in training: EOS, then
its tokens. A document longer than the model's sequence length S is cut
into windows of S tokens that overlap by S/2; each token is scored once,
with at least S/2 tokens of context except in the first window. Rows from
many documents share fixed-shape batches (a multiple of the mesh's batch
shards; short rows and the last batch padded with pad ids whose NLLs are
dropped), so the jitted forward pass compiles once.

Scores are mean NLL in nats per token (log perplexity), higher = more
suspicious: `document_nll` over the whole document, `worst_window_nll`
the highest mean over sliding windows of W tokens (textstats.window_starts).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from poisonjax import files
from poisonjax.model import transformer as model_lib
from poisonjax import rundir
from poisonjax import sharding
from poisonjax.defences import textstats
from poisonjax.errors import UserError


@functools.partial(jax.jit, static_argnums=0)
def _token_nll(model_cfg, params, tokens, positions):
  """[B, S] tokens -> [B, S - 1] NLL of tokens[:, 1:] (nats)."""
  logits = model_lib.Transformer(model_cfg).apply({"params": params}, tokens,
                                                  positions)
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def row_plan(num_targets: int, seq_len: int) -> list[tuple[int, int]]:
  """(start, first scored position) of each row over a sequence of
  num_targets + 1 positions (EOS first): every position >= 1 scored once."""
  n, half = num_targets + 1, seq_len // 2
  plan, covered = [(0, 1)], min(seq_len, n)
  while covered < n:
    start = covered - half
    plan.append((start, covered))
    covered = min(start + seq_len, n)
  return plan


class ReferenceScorer:
  """A reference run's model, scoring documents' tokens in batches."""

  def __init__(self, workdir: str, vocab, rows_per_batch: int = 64):
    from poisonjax.evaluation import run_reader  # Orbax: for this filter only.
    if not (files.as_path(workdir) / rundir.CONFIG).is_file():
      raise UserError(f"--reference={workdir}: no run there (no config.json); "
                      "pass the workdir of a finished clean `poisonjax train` run")
    self.mesh = sharding.data_parallel_mesh()
    self.model_cfg, self.params = run_reader.load_scorer(
        workdir, vocab.vocab_size, self.mesh, vocab=vocab)
    self.seq_len = int(self.model_cfg.max_seq_len)
    self.eos_id = int(vocab.eos_id)
    shards = sharding.batch_shards(self.mesh)
    self.rows = -(-int(rows_per_batch) // shards) * shards
    self._sharding = sharding.batch_sharding(self.mesh)
    self._memo: tuple[tuple, list] | None = None

  def token_nlls(self, docs) -> list[np.ndarray]:
    """Per document, the NLL of each of its tokens given the ones before."""
    key = tuple(d.index for d in docs)
    if self._memo is not None and self._memo[0] == key:
      return self._memo[1]  # Two filters of one pass share the forward.
    S = self.seq_len
    rows, where = [], []
    for k, d in enumerate(docs):
      seq = np.r_[self.eos_id, d.tokens].astype(np.int32)
      for start, first in row_plan(len(d.tokens), S):
        rows.append(seq[start:start + S])
        where.append((k, start, first))
    out = [np.zeros(len(d.tokens), np.float64) for d in docs]
    for a in range(0, len(rows), self.rows):
      nll = self._run(rows[a:a + self.rows])
      for r, (k, start, first) in enumerate(where[a:a + self.rows]):
        n = len(rows[a + r])
        # nll[r, j] scores position start + j + 1; keep positions >= first.
        lo = first - start - 1
        out[k][first - 1:start + n - 1] = nll[r, lo:n - 1]
    self._memo = (key, out)
    return out

  def _run(self, rows: list[np.ndarray]) -> np.ndarray:
    tokens = np.zeros((self.rows, self.seq_len), np.int32)  # Pad id 0.
    for r, row in enumerate(rows):
      tokens[r, :len(row)] = row
    positions = np.broadcast_to(np.arange(self.seq_len, dtype=np.int32),
                                tokens.shape).copy()
    t, p = (jax.device_put(x, self._sharding) for x in (tokens, positions))
    with sharding.mesh_context(self.mesh):
      return np.asarray(_token_nll(self.model_cfg, self.params, t, p))


def document_nll(nll: np.ndarray) -> float:
  """Mean NLL over the document's tokens (0 for an empty document)."""
  return float(nll.mean()) if len(nll) else 0.0


def worst_window_nll(nll: np.ndarray, window: int) -> float:
  """The highest mean NLL over windows of `window` tokens."""
  if len(nll) == 0:
    return 0.0
  return max(float(nll[s:s + window].mean())
             for s in textstats.window_starts(len(nll), window))
