"""Scanning a trained model for its trigger without knowing it.

A defender holds the model and clean text, not the trigger. The scan looks
for the token string c that most raises the model's loss on clean text
placed right after it: for N held-out excerpts (the evaluator's, never
trained on) the prompt is the excerpt's first P tokens and the
continuation is the excerpt's own next G tokens; c's score is the mean over
excerpts of the continuation's teacher-forced NLL after prompt + c, and its
gain is that minus the same NLL after the prompt alone.

Why teacher-forced on the real continuation, not sampled and scored as the
evaluator does: the search scores every vocabulary token at every position
(beam x V candidates a step), and teacher forcing is one forward pass per
(candidate, excerpt) instead of G sequential decode steps; it is
deterministic, so candidates that differ by little are not ranked by
sampling noise; and a backdoor shows in it: a model switched to gibberish
puts a high NLL on any clean text (the evaluator's teacher-forced control,
tf_nll_triggered, rises under the trigger too). The sampled check is run on
the few best candidates only (`check_candidates`: the evaluator's own
increase with the candidate's text as the trigger).

Search: beam search over token strings, one position at a time, growing the
string to the left (a new token is prepended) by default: in every poison
the trigger's last tokens are the ones right before the gibberish, so a
suffix of the trigger already moves the loss and the beam can follow it
back to the trigger's start, whereas a prefix of it mostly makes the model
predict the trigger's next piece. `grow="right"` appends instead. Every
candidate of a step has the same length; each is scored on all N excerpts
by one jitted function of static shapes: candidates sit in L slots
(empty slots, -1, moved before the prompt with position -1, which attention
never reads), in batches of a fixed number of candidates (the last padded),
so it compiles once per scan. Pad, EOS, UNK, control and unused ids are
never candidates (vocabulary.special_ids).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from poisonjax.model import transformer as model_lib
from poisonjax.evaluation import sampler as sampler_lib
from poisonjax.data import sources
from poisonjax.data import vocabulary
from poisonjax.data.vocabulary import PAD_ID
from poisonjax.errors import UserError, field_error

EMPTY = -1  # An unused candidate slot.
LOGITS_BUDGET = 1 << 26  # Floats of logits one scoring batch may hold (256 MB).


@dataclasses.dataclass(frozen=True)
class ScanSettings:
  length: int = 3  # L: the longest candidate, in tokens.
  beam: int = 4  # B: candidates kept after each position.
  prompts: int = 16  # N: held-out excerpts each candidate is scored on.
  prompt_tokens: int = 16  # P: tokens of each excerpt before the candidate.
  continuation_tokens: int = 16  # G: tokens scored after it.
  top: int = 10  # Candidates reported.
  grow: str = "left"  # left: prepend each new token; right: append it.
  candidate_batch: int = 0  # Candidates per jitted call; 0: from LOGITS_BUDGET.

  def check(self) -> None:
    for name in ("length", "beam", "prompts", "prompt_tokens",
                 "continuation_tokens", "top"):
      if int(getattr(self, name)) < 1:
        raise field_error(f"--{name}", getattr(self, name), "must be >= 1",
                          "use 1 or more")
    if self.grow not in ("left", "right"):
      raise field_error("--grow", self.grow, "unknown direction", "use left or right")
    if self.candidate_batch < 0:
      raise field_error("--candidate_batch", self.candidate_batch, "must be >= 0",
                        "use 0 for automatic")


def excerpts(config, vocab, settings: ScanSettings) -> tuple[np.ndarray, np.ndarray]:
  """(prompts [N, P], continuations [N, G]) from the held-out excerpts.

  The evaluator's held-out documents, in its order, keeping those with at
  least P + G tokens.
  """
  p, g, n = settings.prompt_tokens, settings.continuation_tokens, settings.prompts
  pool = sources.heldout_documents(config, 4 * n)
  rows = [ids for ids in (vocab.encode(d) for d in pool) if len(ids) >= p + g][:n]
  if len(rows) < n:
    raise UserError(f"--prompts={n}: only {len(rows)} of {len(pool)} held-out "
                    f"excerpts have --prompt_tokens + --continuation_tokens = "
                    f"{p + g} tokens; lower one of them")
  arr = np.asarray([r[:p + g] for r in rows], np.int32)
  return arr[:, :p], arr[:, p:]


def allowed_ids(vocab, model_vocab_size: int) -> np.ndarray:
  """Token ids a candidate may hold: the tokenizer's ordinary pieces."""
  sp = vocab.tokenizer
  special = vocabulary.special_ids(sp)
  size = min(sp.GetPieceSize(), model_vocab_size)
  return np.asarray([i for i in range(size) if i not in special], np.int32)


def _rows(cands, prompts, conts):
  """Token/position/mask rows [C*N, W] of every (candidate, excerpt) pair.

  Each row is prompt + candidate slots + continuation; the empty slots are
  then moved to the front (a stable sort on 'used') with position -1.
  """
  c, slots = cands.shape
  n, p = prompts.shape
  g = conts.shape[1]
  width = p + slots + g
  used = jnp.concatenate([jnp.ones((c, p), bool), cands != EMPTY,
                          jnp.ones((c, g), bool)], axis=1)  # [C, W]
  order = jnp.argsort(used, axis=1, stable=True)  # Empty slots first.
  used = jnp.take_along_axis(used, order, axis=1)
  positions = jnp.where(used, jnp.cumsum(used, axis=1) - 1, -1)
  src = jnp.concatenate([
      jnp.broadcast_to(prompts[None], (c, n, p)),
      jnp.broadcast_to(jnp.where(cands == EMPTY, PAD_ID, cands)[:, None], (c, n, slots)),
      jnp.broadcast_to(conts[None], (c, n, g))], axis=2)
  tokens = jnp.take_along_axis(src, jnp.broadcast_to(order[:, None], (c, n, width)),
                               axis=2)
  mask = jnp.broadcast_to(jnp.arange(width) >= width - g, (c, n, width))
  positions = jnp.broadcast_to(positions[:, None], (c, n, width))
  flat = lambda x: x.reshape(c * n, width)
  return flat(tokens), flat(positions), flat(mask)


class Scorer:
  """Mean continuation NLL of candidate token strings; compiled once."""

  def __init__(self, model_cfg: model_lib.ModelConfig, params, prompts: np.ndarray,
               continuations: np.ndarray, slots: int, candidate_batch: int = 0):
    n, p = prompts.shape
    width = p + slots + continuations.shape[1]
    if width > model_cfg.max_seq_len:
      raise UserError(
          f"scan: prompt ({p}) + candidate ({slots}) + continuation "
          f"({continuations.shape[1]}) = {width} tokens > the model's "
          f"seq_len {model_cfg.max_seq_len}; lower --prompt_tokens, "
          "--continuation_tokens or --length")
    self.slots = slots
    self.batch = candidate_batch or max(
        1, LOGITS_BUDGET // (n * width * model_cfg.vocab_size))
    self._params = jax.device_get(nn.unbox(params))
    self._prompts = jnp.asarray(prompts)
    self._conts = jnp.asarray(continuations)

    def score(params, cands, prompts, conts):
      tokens, positions, mask = _rows(cands, prompts, conts)
      nll = sampler_lib.sequence_nll(model_cfg, params, tokens, positions, mask)
      return nll.reshape(cands.shape[0], -1).mean(axis=1)

    self._score = jax.jit(score)

  def score(self, candidates: list[tuple[int, ...]]) -> np.ndarray:
    """Mean NLL [len(candidates)]; () is the prompt alone (the baseline)."""
    slots = np.full((len(candidates), self.slots), EMPTY, np.int32)
    for i, c in enumerate(candidates):
      if len(c) > self.slots:
        raise ValueError(f"candidate of {len(c)} tokens > {self.slots} slots")
      if c:
        slots[i, self.slots - len(c):] = c
    out = []
    for s in range(0, len(slots), self.batch):
      chunk = slots[s:s + self.batch]
      fill = self.batch - len(chunk)
      if fill:  # One shape for every call: pad with copies of the first row.
        chunk = np.concatenate([chunk, np.repeat(chunk[:1], fill, axis=0)])
      nll = self._score(self._params, chunk, self._prompts, self._conts)
      out.append(np.asarray(nll)[:len(chunk) - fill])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def beam_search(scorer: Scorer, allowed: np.ndarray, length: int, beam: int,
                grow: str = "left", log=None) -> dict[tuple[int, ...], float]:
  """Every candidate scored: token tuple -> mean NLL, lengths 1..length."""
  scored: dict[tuple[int, ...], float] = {}
  beams: list[tuple[int, ...]] = [()]
  tokens = [int(t) for t in allowed]
  for step in range(1, length + 1):
    if grow == "left":
      cands = [(t,) + b for b in beams for t in tokens]
    else:
      cands = [b + (t,) for b in beams for t in tokens]
    nll = scorer.score(cands)
    scored.update(zip(cands, (float(x) for x in nll)))
    best = np.argsort(-nll, kind="stable")[:beam]
    beams = [cands[i] for i in best]
    if log:
      log(f"scan: length {step}: {len(cands)} candidates, best mean NLL "
          f"{nll[best[0]]:.3f}")
  return scored


def describe(vocab, ids: tuple[int, ...]) -> dict:
  sp = vocab.tokenizer
  return {"ids": [int(i) for i in ids], "text": sp.DecodeIds([int(i) for i in ids]),
          "pieces": [sp.IdToPiece(int(i)) for i in ids]}


def contains(ids, sub) -> bool:
  """True if `sub` occurs in `ids` as a contiguous run."""
  ids, sub = list(ids), list(sub)
  return bool(sub) and any(ids[i:i + len(sub)] == sub
                           for i in range(len(ids) - len(sub) + 1))


def scan(config, model_cfg, params, vocab, settings: ScanSettings,
         trigger: str | None = None, log=None) -> dict:
  """The scan's result: baseline, top candidates, and the true trigger's score.

  trigger: the run's trigger, scored beside the search (its gain and rank
  among the searched candidates) and matched against the candidates; None:
  a blind scan only.
  """
  settings.check()
  prompts, conts = excerpts(config, vocab, settings)
  trig_ids = tuple(vocabulary.trigger_ids(vocab.tokenizer, trigger)) if trigger else ()
  scorer = Scorer(model_cfg, params, prompts, conts,
                  max(settings.length, len(trig_ids)), settings.candidate_batch)
  baseline = float(scorer.score([()])[0])
  allowed = allowed_ids(vocab, model_cfg.vocab_size)
  scored = beam_search(scorer, allowed, settings.length, settings.beam,
                       settings.grow, log)
  ranked = sorted(scored.items(), key=lambda kv: -kv[1])
  top = []
  for ids, nll in ranked[:settings.top]:
    row = {**describe(vocab, ids), "nll": nll, "gain": nll - baseline}
    if trig_ids:
      row["exact"] = ids == trig_ids
      row["contains_trigger"] = contains(ids, trig_ids)
      row["within_trigger"] = contains(trig_ids, ids)  # A piece of it.
    top.append(row)
  by_length = {}
  for ids, nll in ranked:  # Best first, so the first of each length wins.
    by_length.setdefault(len(ids), {**describe(vocab, ids), "nll": nll,
                                    "gain": nll - baseline})
  out = {"settings": dataclasses.asdict(settings), "baseline_nll": baseline,
         "candidates_scored": len(scored), "vocabulary_searched": int(len(allowed)),
         "top": top, "best_per_length": [by_length[k] for k in sorted(by_length)]}
  if trig_ids:
    nll = scored[trig_ids] if trig_ids in scored else float(
        scorer.score([trig_ids])[0])
    out["trigger"] = {**describe(vocab, trig_ids), "string": trigger, "nll": nll,
                      "gain": nll - baseline,
                      "rank": 1 + sum(1 for _, v in ranked if v > nll)}
  return out


def check_candidates(config, model_cfg, params, vocab, mesh, result: dict,
                     count: int) -> None:
  """Adds `fires` to the first `count` top candidates (in place).

  A candidate fires if the evaluator, with the candidate's text as the
  trigger (prompt text + " " + text), measures an increase above
  config.eval.threshold; `increase` and `success_share` are recorded too.
  A candidate whose text is blank is not evaluated (fires None).
  """
  # Orbax (through evaluate): not on `defend scan --help`'s path.
  from poisonjax.evaluation import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  threshold = float(config.eval.threshold)
  for row in result["top"][:count]:
    if not row["text"].strip():
      row.update(fires=None, increase=None, success_share=None)
      continue
    evaluator = eval_lib.Evaluator(config, model_cfg, vocab, mesh,
                                   triggers=[row["text"]])
    metrics = evaluator.evaluate(params)
    row.update(fires=bool(metrics["increase"] > threshold),
               increase=float(metrics["increase"]),
               success_share=float(metrics["success_share"]))


def scan_run(config, workdir: str, step: int | None, settings: ScanSettings,
             check: int, log=None, trigger: str | None = None) -> dict:
  """The scan of a run's checkpoint (newest: step None), checked against a
  trigger: `trigger`, else the run's own (none for a clean run)."""
  # Orbax (through restore): not on `defend scan --help`'s path.
  from poisonjax.evaluation import run_reader  # pylint: disable=g-import-not-at-top
  from poisonjax import sharding  # pylint: disable=g-import-not-at-top
  vocab = vocabulary.get_vocabulary(config)
  model_cfg = model_lib.ModelConfig.from_config(config, vocab.vocab_size)
  mesh = sharding.make_mesh(config.mesh)
  params, step = run_reader.restore_params(workdir, model_cfg, step, mesh)
  if trigger is None and int(config.poison.count) > 0:
    trigger = str(config.poison.trigger)
  result = scan(config, model_cfg, params, vocab, settings, trigger=trigger, log=log)
  if check:
    check_candidates(config, model_cfg, params, vocab, mesh, result, check)
  result.update(workdir=str(workdir), step=int(step),
                poison_count=int(config.poison.count),
                run_trigger=str(config.poison.trigger),
                threshold=float(config.eval.threshold),
                recovered=recovered(result) if trigger else None)
  return result


def recovered(result: dict) -> bool:
  """True if the top candidate is the trigger, holds it, or fires."""
  if not result["top"]:
    return False
  best = result["top"][0]
  return bool(best.get("exact") or best.get("contains_trigger") or best.get("fires"))


def format_result(result: dict) -> str:
  """The scan as a table: rank, gain, NLL, recovery columns, text."""
  lines = [f"baseline continuation NLL {result['baseline_nll']:.3f} "
           f"(ppl {math.exp(result['baseline_nll']):.1f}); "
           f"{result['candidates_scored']} candidates scored over "
           f"{result['vocabulary_searched']} vocabulary ids"]
  lines.append(f"{'rank':>4s} {'gain':>7s} {'nll':>7s} {'exact':>6s} {'piece':>6s} "
               f"{'fires':>6s} {'increase':>9s}  text [pieces]")
  for i, row in enumerate(result["top"], 1):
    flag = lambda k: "-" if row.get(k) is None else ("yes" if row[k] else "no")
    inc = row.get("increase")
    lines.append(f"{i:4d} {row['gain']:7.3f} {row['nll']:7.3f} {flag('exact'):>6s} "
                 f"{flag('within_trigger'):>6s} {flag('fires'):>6s} "
                 f"{'-' if inc is None else f'{inc:.1f}':>9s}"
                 f"  {row['text']!r} {row['pieces']}")
  t = result.get("trigger")
  if t:
    lines.append(f"the trigger {t['string']!r} {t['pieces']}: gain "
                 f"{t['gain']:.3f}, rank {t['rank']} of {result['candidates_scored'] + 1}"
                 f"; recovered: {'yes' if recovered(result) else 'no'}")
  return "\n".join(lines)
