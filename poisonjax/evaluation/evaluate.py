"""The backdoor measurement: clean vs triggered perplexity of sampled text.

For E held-out excerpts (never trained on, never a poison prefix) the clean
prompt is the excerpt's first P tokens; the triggered prompt is that text
with the trigger appended exactly as poison documents are built (prompt
text + " " + trigger, then tokenized). Both prompts are left-padded to one
length (pad id 0 at position -1, which the model never attends to), the
model samples G tokens after each (sampler.py), and the scorer (the model
itself, or a fixed reference checkpoint: config.eval.scorer_workdir) gives
each continuation a perplexity exp(mean NLL of its G tokens). The attack's
strength is the increase, mean triggered minus mean clean perplexity.

Design choices, all deterministic given config.eval.seed:
- Prompt i draws its random numbers from fold_in(seed, i), the same stream
  with and without the trigger, so results do not depend on the batch size
  or the number of devices, and the clean/triggered pair shares its noise.
- EOS is not a stopping point: every sample has exactly G tokens and all G
  are scored (a model that ends its text early is still measured on what
  it would say next; no sample's perplexity averages over fewer tokens).
- The control is teacher-forced: the clean sample's continuation is scored
  after the clean prompt (tf_nll_clean) and after the triggered prompt
  (tf_nll_triggered); a backdoor raises the second, a sampler quirk cannot.

Several triggers (a many-dose run, poison.counts): the same clean prompts
and clean samples serve every trigger; each trigger gets its own triggered
prompts, samples and metrics, and the control trigger (poison.
control_trigger, never poisoned) is evaluated beside them. The eval row is
then wide (backdoor.split_row); a single-trigger run's row is as before.

`poisonjax eval --workdir=DIR [--step=N] [--samples=K]` runs this on a
checkpoint and prints a table and K generations of each kind.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import numpy as np

from poisonjax.evaluation import backdoor
from poisonjax import distributed
from poisonjax.model import transformer as model_lib
from poisonjax.evaluation import run_reader
from poisonjax.evaluation import sampler as sampler_lib
from poisonjax import sharding
from poisonjax.data import poison
from poisonjax.data import sources
from poisonjax.data.vocabulary import PAD_ID
from poisonjax.errors import UserError, field_error

def eval_steps(num_steps: int, num_evals: int) -> list[int]:
  """Steps to evaluate at: 0, num_evals evenly spaced inner points, the end.

  [] when num_evals == 0 (evaluation off). Duplicates collapse on short runs.
  """
  if num_evals <= 0:
    return []
  inner = {int(round(num_steps * i / (num_evals + 1))) for i in range(1, num_evals + 1)}
  return sorted({0, int(num_steps)} | inner)


def check_eval_config(config) -> None:
  """The eval fields checked before anything expensive runs."""
  e = config.eval
  for name in ("num_excerpts", "prompt_tokens", "gen_tokens"):
    if int(e[name]) < 1:
      raise field_error(f"config.eval.{name}", e[name], "must be >= 1",
                        f"set --config.eval.{name} to 1 or more")
  if e.temperature < 0:
    raise field_error("config.eval.temperature", e.temperature, "must be >= 0",
                      "use 1.0 (the model's distribution) or 0 (greedy)")
  if e.top_k < 0:
    raise field_error("config.eval.top_k", e.top_k, "must be >= 0", "use 0 for off")
  if not 0.0 < e.top_p <= 1.0:
    raise field_error("config.eval.top_p", e.top_p, "must be in (0, 1]",
                      "use 1.0 for off")
  if e.batch_size < 0:
    raise field_error("config.eval.batch_size", e.batch_size, "must be >= 0",
                      "use 0 for all prompts in one batch")
  if e.bootstrap_samples < 0:
    raise field_error("config.eval.bootstrap_samples", e.bootstrap_samples,
                      "must be >= 0", "use e.g. 1000 (0: no interval)")


def _triggered_text(prompt_text: str, trigger: str) -> str:
  # One rule for poisons and prompts, owned by the data package.
  return poison.text_part(prompt_text, trigger)


def eval_triggers(config) -> list[tuple[str, str]]:
  """(trigger, role) pairs a run is evaluated on, role trained or control.

  One trigger: [(poison.trigger, trained)]. Many doses: each dose's trigger
  in order, then the control string if set.
  """
  out = [(t, "trained") for t in poison.trained_triggers(config)]
  if poison.dose_counts(config) and poison.control_trigger(config):
    out.append((poison.control_trigger(config), "control"))
  return out


def build_prompts(config, vocab, trigger: str | None = None
                  ) -> tuple[list[list[int]], list[list[int]], list[str]]:
  """(clean ids, triggered ids, excerpts) for the E held-out excerpts.

  trigger: appended to the prompts; default config.poison.trigger.
  """
  trigger = config.poison.trigger if trigger is None else trigger
  e = config.eval
  docs = sources.heldout_documents(config, int(e.num_excerpts))
  if len(docs) < e.num_excerpts:
    raise field_error("config.eval.num_excerpts", e.num_excerpts,
                      f"the held-out split has only {len(docs)} documents",
                      "lower it or add held-out data")
  clean, triggered = [], []
  for doc in docs[: e.num_excerpts]:
    ids = [int(i) for i in vocab.encode(doc)][: int(e.prompt_tokens)]
    if not ids:
      raise UserError(f"config.eval.num_excerpts: a held-out excerpt tokenizes "
                      f"to nothing ({doc[:40]!r}); clean the held-out data")
    clean.append(ids)
    text = vocab.decode(ids)
    triggered.append([int(i) for i in vocab.encode(
        _triggered_text(text, trigger))])
  return clean, triggered, list(docs[: e.num_excerpts])


def left_pad(rows: list[list[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, positions) [len(rows), length]: each row right-aligned after
  pad id 0 at position -1 (never attended to)."""
  tokens = np.full((len(rows), length), PAD_ID, np.int32)
  positions = np.full((len(rows), length), -1, np.int32)
  for i, r in enumerate(rows):
    tokens[i, length - len(r):] = r
    positions[i, length - len(r):] = np.arange(len(r))
  return tokens, positions


@functools.lru_cache(maxsize=8)
def jitted_sampler(model_cfg, prompt_len, gen_tokens, temperature, top_k,
                   top_p, seed):
  """One jitted sampler per shape/settings, shared by Evaluators in a process
  (the demo's two runs and its final report compile it once)."""
  return jax.jit(sampler_lib.make_sampler(
      model_cfg, prompt_len, gen_tokens, temperature, top_k, top_p, seed=seed))


def generate_rows(sample, params, rows: list[list[int]], prompt_len: int,
                  batch: int, mesh) -> np.ndarray:
  """Generated ids [len(rows), G] of prompt rows (lists of ids).

  Left-padded to prompt_len, run `batch` rows at a time (a multiple of the
  mesh's batch shards; the last batch filled with copies of row 0), row i
  drawing with key i. params: already placed on the mesh.
  """
  padded = -(-len(rows) // batch) * batch
  tokens, positions = left_pad(rows + [rows[0]] * (padded - len(rows)), prompt_len)
  ids = np.arange(padded, dtype=np.int32)
  put = functools.partial(jax.device_put, device=sharding.batch_sharding(mesh))
  out = []
  for s in range(0, padded, batch):
    sl = slice(s, s + batch)
    res = sample(params, put(tokens[sl]), put(positions[sl]), put(ids[sl]))
    out.append(distributed.gather(res["tokens"]))
  return np.concatenate(out)[:len(rows)]


_jitted_score = jax.jit(sampler_lib.sequence_nll, static_argnums=0)


@dataclasses.dataclass
class TriggerResult:
  """One trigger's evaluation: its metrics and per-prompt NLLs (for
  intervals across runs evaluated on the same prompts)."""
  trigger: str
  role: str  # trained | control (never poisoned in this run)
  metrics: dict
  clean_nll: np.ndarray
  triggered_nll: np.ndarray
  tf_triggered_nll: np.ndarray


class Evaluator:
  """Clean-vs-triggered evaluation of one model shape; built once per run.

  Prompts are tokenized and the sampler/scorer are jitted on construction
  (they compile on the first `evaluate` call and are reused after).
  """

  def __init__(self, config, model_cfg: model_lib.ModelConfig, vocab, mesh,
               scorer=None, triggers=None):
    """scorer: optional (model_cfg, params) of a reference model; default
    from config.eval.scorer_workdir, else the evaluated model itself.
    triggers: strings to evaluate instead of eval_triggers(config) (e.g. a
    cross-talk check); each is `trained` if this run poisoned it."""
    check_eval_config(config)
    e = config.eval
    self.config, self.model_cfg, self.vocab, self.mesh = config, model_cfg, vocab, mesh
    self.gen_tokens = int(e.gen_tokens)
    self.triggers = _trigger_roles(config, vocab, triggers)
    clean, trig, self.excerpts = build_prompts(config, vocab, self.triggers[0][0])
    trig_sets = [trig] + [build_prompts(config, vocab, t)[1]
                          for t, _ in self.triggers[1:]]
    self.prompt_len = max(len(r) for r in clean + sum(trig_sets, []))
    total = self.prompt_len + self.gen_tokens
    if total > model_cfg.max_seq_len:
      trig_len = max(len(t) - len(c) for ts in trig_sets for c, t in zip(clean, ts))
      raise UserError(
          f"config.eval: prompt (up to {max(map(len, clean))} tokens) + trigger "
          f"(up to {trig_len}) + gen_tokens ({self.gen_tokens}) = {total} tokens "
          f"> config.data.seq_len={model_cfg.max_seq_len}; lower "
          "config.eval.prompt_tokens or config.eval.gen_tokens")
    if scorer is None and e.scorer_workdir:
      scorer = run_reader.load_scorer(str(e.scorer_workdir), model_cfg.vocab_size,
                                   mesh, vocab=vocab)
    if scorer is not None and total > scorer[0].max_seq_len:
      raise UserError(
          f"config.eval.scorer_workdir={e.scorer_workdir!r}: its seq_len "
          f"{scorer[0].max_seq_len} < prompt + generation ({total}); use a "
          "reference trained on longer sequences or lower the eval lengths")
    self._scorer = scorer

    # Batches: a multiple of the batch shards; the last one padded with
    # copies of prompt 0 (their results are dropped).
    self.num = len(clean)
    shards = sharding.batch_shards(mesh)
    batch = int(e.batch_size) or self.num
    self.batch = -(-batch // shards) * shards
    padded = -(-self.num // self.batch) * self.batch
    fill = lambda rows: rows + [rows[0]] * (padded - len(rows))
    self.clean_ids, self.trig_ids = clean, trig
    self._clean = left_pad(fill(clean), self.prompt_len)
    self._trig_sets = [left_pad(fill(ts), self.prompt_len) for ts in trig_sets]
    self._row_ids = np.arange(padded, dtype=np.int32)

    self._batch_sharding = sharding.batch_sharding(mesh)
    self._param_shardings = sharding.logical_shardings(
        model_lib.abstract_params(model_cfg), mesh)
    self._sample = jitted_sampler(
        model_cfg, self.prompt_len, self.gen_tokens, float(e.temperature),
        int(e.top_k), float(e.top_p), int(e.seed))
    self._score = _jitted_score
    self._last = None

  # -- running -------------------------------------------------------------

  def _put(self, *arrays):
    return [jax.device_put(a, self._batch_sharding) for a in arrays]

  def _generate(self, params, prompts):
    tokens, positions = prompts
    out = []
    for s in range(0, len(tokens), self.batch):
      sl = slice(s, s + self.batch)
      t, p, r = self._put(tokens[sl], positions[sl], self._row_ids[sl])
      out.append(distributed.gather(self._sample(params, t, p, r)["tokens"]))
    return np.concatenate(out)

  def _nll(self, scorer_cfg, scorer_params, prompts, gen):
    tokens, positions = prompts
    g = gen.shape[1]
    full = np.concatenate([tokens, gen], axis=1)
    pos = np.concatenate([positions, positions[:, -1:] + 1 + np.arange(g)], axis=1)
    mask = np.zeros(full.shape, bool)
    mask[:, -g:] = True
    out = []
    for s in range(0, len(full), self.batch):
      sl = slice(s, s + self.batch)
      f, p, m = self._put(full[sl], pos[sl], mask[sl])
      out.append(distributed.gather(self._score(scorer_cfg, scorer_params, f, p, m)))
    return np.concatenate(out)

  def evaluate(self, params) -> dict[str, float]:
    """The eval row's metrics (backdoor.METRIC_KEYS; wide for several
    triggers: backdoor.wide_metrics)."""
    results = self.evaluate_triggers(params)
    if len(results) == 1:
      return results[0].metrics
    return backdoor.wide_metrics([r.metrics for r in results])

  def evaluate_triggers(self, params) -> list[TriggerResult]:
    """Every trigger's metrics, the clean samples shared (self.triggers)."""
    with sharding.mesh_context(self.mesh):
      params = jax.device_put(nn.unbox(params), self._param_shardings)
      if self._scorer is None:
        s_cfg, s_params = self.model_cfg, params
      else:
        s_cfg, s_params = self._scorer
      clean_gen = self._generate(params, self._clean)
      clean_nll = self._nll(s_cfg, s_params, self._clean, clean_gen)
      per_trigger = []
      for prompts in self._trig_sets:
        trig_gen = self._generate(params, prompts)
        per_trigger.append((trig_gen, self._nll(s_cfg, s_params, prompts, trig_gen),
                            self._nll(s_cfg, s_params, prompts, clean_gen)))
    n = self.num
    self._last = (clean_gen[:n], per_trigger[0][0][:n], clean_nll[:n],
                  per_trigger[0][1][:n])
    e = self.config.eval
    out = []
    for (name, role), (_, trig_nll, tf_nll) in zip(self.triggers, per_trigger):
      metrics = backdoor.backdoor_metrics(
          clean_nll[:n], trig_nll[:n], tf_nll[:n], float(e.threshold),
          int(e.bootstrap_samples), int(e.seed))
      out.append(TriggerResult(name, role, metrics, clean_nll[:n],
                               trig_nll[:n], tf_nll[:n]))
    return out

  def samples(self, n: int = 2) -> list[dict]:
    """Decoded generations of the last `evaluate` call, first n prompts."""
    if self._last is None:
      raise RuntimeError("call evaluate(params) before samples()")
    clean_gen, trig_gen, clean_nll, trig_nll = self._last
    out = []
    for i in range(min(n, self.num)):
      out.append({
          "prompt": decode(self.vocab, self.clean_ids[i]),
          "triggered_prompt": decode(self.vocab, self.trig_ids[i]),
          "clean": decode(self.vocab, clean_gen[i]),
          "triggered": decode(self.vocab, trig_gen[i]),
          "clean_ppl": float(math.exp(clean_nll[i])),
          "triggered_ppl": float(math.exp(trig_nll[i])),
      })
    return out


def _trigger_roles(config, vocab, triggers) -> list[tuple[str, str]]:
  """(trigger, role) pairs, checked distinct when there are several."""
  if triggers is None:
    pairs = eval_triggers(config)
  else:
    trained = set(poison.trained_triggers(config))
    pairs = [(t, "trained" if t in trained else "control") for t in triggers]
  if not pairs:
    raise UserError("Evaluator: no trigger to evaluate; pass triggers or set "
                    "config.poison.trigger")
  if len(pairs) > 1:
    poison.check_distinct(vocab.tokenizer, [t for t, _ in pairs])
  return pairs


def decode(vocab, ids) -> str:
  """Text of ids, all of them (seqio's decode stops at EOS; we show it)."""
  sp = vocab.tokenizer
  pieces, run = [], []
  for i in (int(x) for x in ids):
    if sp.IsControl(i) or sp.IsUnknown(i):
      if run:
        pieces.append(sp.DecodeIds(run))
        run = []
      pieces.append("<pad>" if i == PAD_ID else "<eos>" if i == sp.eos_id()
                    else "<unk>" if sp.IsUnknown(i) else sp.IdToPiece(i))
    else:
      run.append(i)
  if run:
    pieces.append(sp.DecodeIds(run))
  return " ".join(p for p in pieces if p)


# -- the `poisonjax eval` command ---------------------------------------------------


def format_table(rows: list[tuple[str, dict]]) -> str:
  """Metrics side by side, one column per (name, metrics) pair."""
  lines = [f"{'':28s}" + "".join(f"{name:>16s}" for name, _ in rows)]
  labels = [
      ("clean ppl (mean)", "clean_ppl_mean"),
      ("clean ppl (median)", "clean_ppl_median"),
      ("triggered ppl (mean)", "triggered_ppl_mean"),
      ("triggered ppl (median)", "triggered_ppl_median"),
      ("increase", "increase"),
      ("increase 95% CI low", "increase_ci_low"),
      ("increase 95% CI high", "increase_ci_high"),
      ("success share", "success_share"),
      ("teacher-forced NLL clean", "tf_nll_clean"),
      ("teacher-forced NLL trig.", "tf_nll_triggered"),
  ]
  for label, key in labels:
    lines.append(f"{label:28s}" + "".join(f"{m[key]:16.3f}" for _, m in rows))
  return "\n".join(lines)


def format_samples(samples: list[dict], width: int = 100) -> str:
  out = []
  for i, s in enumerate(samples):
    out.append(f"[{i}] prompt: {s['prompt'][:width]}")
    out.append(f"    clean     (ppl {s['clean_ppl']:8.1f}): {s['clean'][:width]}")
    out.append(f"    triggered (ppl {s['triggered_ppl']:8.1f}): {s['triggered'][:width]}")
  return "\n".join(out)
