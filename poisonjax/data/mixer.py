"""Where poisons go: the fixed-count schedule and the rate-mode draw.

Count mode (the paper): poison j gets a fraction u_j of the clean stream
and is inserted at the first clean-document boundary at or after clean-token
offset ceil(u_j * C) (C = the clean tokens of the run). How u_j is drawn is
the placement (config.poison.placement), a pure function of (poison seed,
count, the placement fields):

  uniform   u_j ~ U(0,1) iid (the paper's pretraining runs; the default).
  first     u_j = f * v_j: all poisons in the first f of the clean stream.
  last      u_j = 1 - f + f * v_j: all in the last f.
  bursts    B windows, each f/B wide, one at a random place inside each of
            B equal segments of training (so they never overlap); poison j
            joins window j mod B at f/B * v_j inside it.
  periodic  k poisons back to back every M steps: poisons j = e*k..e*k+k-1
            (event e) start at the stream position of step e*M's first
            token (steps of batch_size * seq_len tokens). No randomness.

v_j are the uniform draws, so uniform is unchanged bit for bit and every
placement but periodic keeps two properties: u_j does not depend on C (every
model size of a seed sees the same poisons at the same fractions), and the
first n draws do not depend on N (the 250 poisons of a run are the first 250
of the 500-poison run; for bursts, in the same windows). Periodic keeps the
second in clean-token offsets: event e's offset is e*M steps of tokens less
the poison tokens before it, so it depends on the earlier poisons' lengths
only, not on N; its u_j (offset / C) does depend on C.

How exact periodic is: the poisons follow the first clean-document boundary
at or after that offset, so event e starts at most one clean document
(< data's longest document, 3000 tokens on the synthetic source) after
step e*M's first token, never before it; its k poisons are contiguous, so
they all lie in step e*M when that slack plus their tokens fit in one batch.

Rate mode (the old percentage assumption): each clean document is followed
by a poison with probability p, decided per document index (uniform only).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from poisonjax.errors import field_error

PLACEMENTS = ("uniform", "first", "last", "bursts", "periodic")
_FRACTION_STREAM = 2
_RATE_STREAM = 3
_BURST_STREAM = 4
_RATE_BLOCK = 1 << 16


@dataclasses.dataclass(frozen=True)
class Placement:
  """config.poison.placement and the fields it reads (config.py)."""
  kind: str = "uniform"
  fraction: float = 0.1  # first / last / bursts (all windows together).
  bursts: int = 5
  per_batch: int = 1  # periodic: k poisons per event...
  every_steps: int = 1  # ...every M steps...
  tokens_per_step: int = 0  # ...of batch_size * seq_len tokens.

  @classmethod
  def from_config(cls, config) -> "Placement":
    p = config.poison
    return cls(kind=str(p.get("placement", "uniform")),
               fraction=float(p.get("placement_fraction", 0.1)),
               bursts=int(p.get("placement_bursts", 5)),
               per_batch=int(p.get("poisons_per_batch", 1)),
               every_steps=int(p.get("placement_every_steps", 1)),
               tokens_per_step=int(config.train.batch_size) * int(config.data.seq_len))

  @property
  def is_uniform(self) -> bool:
    return self.kind == "uniform"

  def record(self) -> dict:
    """The fields this placement uses (the cache key part and the manifest's)."""
    fields = {"first": ("fraction",), "last": ("fraction",),
              "bursts": ("fraction", "bursts"),
              "periodic": ("per_batch", "every_steps", "tokens_per_step")}
    return {"kind": self.kind,
            **{f: getattr(self, f) for f in fields.get(self.kind, ())}}


UNIFORM = Placement()


def fractions(poison_seed: int, count: int) -> np.ndarray:
  """v_j for poisons j = 0..count-1 (not sorted; index = poison id)."""
  return np.random.default_rng([int(poison_seed), _FRACTION_STREAM]).random(int(count))


def burst_starts(poison_seed: int, bursts: int, fraction: float) -> np.ndarray:
  """Window b's start: uniform inside segment [b/B, (b+1)/B) less its width."""
  v = np.random.default_rng([int(poison_seed), _BURST_STREAM]).random(int(bursts))
  return (np.arange(bursts) + v * (1.0 - fraction)) / bursts


def placed_fractions(poison_seed: int, count: int, placement: Placement) -> np.ndarray:
  """u_j of every placement but periodic (module docstring)."""
  v = fractions(poison_seed, count)
  f, kind = placement.fraction, placement.kind
  if kind == "uniform":
    return v
  if kind == "first":
    return f * v
  if kind == "last":
    return np.minimum(1.0 - f + f * v, 1.0)
  if kind == "bursts":
    starts = burst_starts(poison_seed, placement.bursts, f)
    window = np.arange(int(count)) % placement.bursts
    return starts[window] + f / placement.bursts * v
  raise ValueError(f"no fractions for placement {kind!r}")


def periodic_offsets(placement: Placement, poison_tokens, clean_tokens: int) -> np.ndarray:
  """Clean offsets (by poison id) putting event e at step e*M's first token."""
  lengths = np.asarray(poison_tokens, np.int64)
  k, m, tps = placement.per_batch, placement.every_steps, placement.tokens_per_step
  event = np.arange(len(lengths)) // k
  before = np.concatenate([[0], np.cumsum(lengths)])[:-1]
  first = before[event * k]  # Poison tokens before each poison's event.
  offsets = event * m * tps - first  # Event 0: 0; never < 0 unless crowded.
  if len(offsets) and np.any(np.diff(offsets) < 0):
    raise field_error("config.poison.placement_every_steps", m,
                      f"{k} poisons per event need more than {m} steps of "
                      f"{tps} tokens", "raise placement_every_steps or lower "
                      "poisons_per_batch")
  if len(offsets) and offsets[-1] > clean_tokens:
    raise field_error("config.poison.placement_every_steps", m,
                      f"{int(event[-1]) + 1} events every {m} steps run past "
                      f"the run's {clean_tokens} clean tokens",
                      "lower placement_every_steps or the count, or raise "
                      "poisons_per_batch")
  return offsets


def schedule(poison_seed: int, count: int, clean_tokens: int,
             placement: Placement = UNIFORM, poison_tokens=None):
  """(order, offsets, u): poison ids in stream order, their clean offsets, u_j.

  offsets[k] is the clean-token position the k-th poison must follow (the
  stream inserts it at the first document boundary >= it); u[j] is poison
  j's fraction of the clean stream. poison_tokens (lengths by id) is needed
  by periodic only.
  """
  if placement.kind == "periodic":
    offsets = periodic_offsets(placement, poison_tokens, int(clean_tokens))
    return (np.arange(int(count)), offsets.astype(np.int64),
            offsets / max(int(clean_tokens), 1))
  u = placed_fractions(poison_seed, count, placement)
  order = np.argsort(u, kind="stable")
  offsets = np.ceil(u[order] * clean_tokens).astype(np.int64)
  return order, offsets, u


def run_schedule(config, clean_tokens: int, poison_tokens):
  """schedule() for a run's config; poison_tokens: lengths by poison id."""
  return schedule(config.poison.seed, len(poison_tokens), clean_tokens,
                  Placement.from_config(config), poison_tokens)


class RateDraw:
  """Whether clean document d is followed by a poison (rate mode)."""

  def __init__(self, poison_seed: int, rate: float):
    self.seed, self.rate = int(poison_seed), float(rate)
    self._block, self._u = -1, None

  def __call__(self, d: int) -> bool:
    b = d // _RATE_BLOCK
    if b != self._block:
      self._u = np.random.default_rng(
          [self.seed, _RATE_STREAM, b]).random(_RATE_BLOCK)
      self._block = b
    return bool(self._u[d % _RATE_BLOCK] < self.rate)
