"""The plan: per-run sizes, tokens, steps, FLOPs and chip-hours, before any run.

Parameters are counted on shapes only (no allocation). Poison tokens are an
estimate from the poison fields (poison_tokens_per_doc); chip-hours use the
peak table of poisonjax.hardware at an assumed MFU, plus this machine's
measured float32 rate when one is given. A study that lists measured
seconds per step of one single-threaded worker per size
(study.plan.core_s_per_step) also gets core-hours from them: the budget of
a CPU study, which a FLOP-rate estimate misses by 2x or more.
"""

from __future__ import annotations

import math

from poisonjax import budget
from poisonjax import hardware
from poisonjax import units
from poisonjax.errors import UserError
from poisonjax.study import grids

THIS_CPU = "this CPU"


def poison_tokens_per_doc(study, run_cfg) -> float:
  """Estimated mean tokens per poison document (documented assumptions).

  prefix: mean of U[min, max] chars / chars_per_token; trigger: the trigger
  text after a space, at ~2 chars per token (a rare string splits into short
  pieces); tail: mean of U[min, max] random ids (x text_mode_factor in text
  mode, which decodes and re-tokenizes them; token mode is the default, why:
  poisonjax/data/poison.py); plus 1 EOS.
  """
  p = run_cfg.poison
  prefix = (p.prefix_min_chars + p.prefix_max_chars) / 2 / study.plan.chars_per_token
  trigger = math.ceil(len(" " + p.trigger) / 2)
  tail = (p.gibberish_min_tokens + p.gibberish_max_tokens) / 2
  if p.mode == "text":
    tail *= study.plan.text_mode_factor
  return prefix + trigger + tail + 1


def _model_costs(cfg, vocab: int, cache: dict):
  """(parameter counts, FLOPs per token) of a run's model, cached by shape."""
  from poisonjax.model import transformer as model_lib  # JAX: not on `study plan`'s import.

  key = (cfg.model.size, vocab, cfg.data.seq_len)
  if key not in cache:
    mcfg = model_lib.ModelConfig.from_config(cfg, vocab)
    cache[key] = (model_lib.param_counts(mcfg),
                  model_lib.flops_per_token(mcfg, cfg.data.seq_len))
  return cache[key]


def _run_row(study, run: grids.Run, chips: dict, mfu: float, cache: dict) -> dict:

  cfg = grids.run_config(study, run)
  vocab = cfg.model.vocab_size or cfg.vocab.size
  counts, fpt = _model_costs(cfg, vocab, cache)
  clean = budget.clean_token_budget(cfg, vocab)
  for src in grids.sources(study, run)[:1]:  # Continued: its source's T x multiple.
    clean = int(round(cfg.continued.budget_multiple * budget.clean_token_budget(
        grids.run_config(study, src), vocab)))
  poison = cfg.poison.count * poison_tokens_per_doc(study, cfg)
  total = clean + (0 if budget.poisons_replace_clean(cfg) else poison)
  tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
  steps = math.ceil(total / tokens_per_step)
  if cfg.train.max_steps > 0:
    steps = min(steps, cfg.train.max_steps)
  flops = fpt * steps * tokens_per_step
  return {
      "run": run.name, **run.coords(), "params": counts["total"],
      "non_embedding_params": counts["non_embedding"],
      "clean_tokens": clean, "poison_tokens": poison,
      "poison_share": poison / total if total else 0.0,
      "tokens_per_param": clean / counts["total"], "steps": steps,
      "flops": flops,
      "hours": {c: flops / (peak * mfu) / 3600 for c, peak in chips.items()},
      "core_hours": _core_hours(study, run.size, steps),
  }


def _core_hours(study, size: str, steps: int) -> float | None:
  """Measured seconds per step x steps, if the study lists the size."""
  table = study.plan.get("core_s_per_step", None) if "plan" in study else None
  if not table or size not in table:
    return None
  return steps * float(table[size]) / 3600


def plan(study, mfu: float = 0.4, cpu_flops: float | None = None) -> dict:
  """Per-run sizes, tokens, steps, FLOPs and chip-hours; totals for the grid.

  Never allocates parameters (shapes only). Steps are estimated as
  ceil((clean + poison tokens) / (batch x seq_len)), capped by max_steps.
  """
  if not 0 < mfu <= 1:
    raise UserError(f"--mfu={mfu}: must be in (0, 1]; e.g. --mfu=0.4")
  chips = dict(hardware.CHIP_PEAK_FLOPS)
  if cpu_flops:
    chips[THIS_CPU] = cpu_flops
  cache = {}
  rows = [_run_row(study, run, chips, mfu, cache) for run in grids.expand(study)]
  totals = {k: sum(r[k] for r in rows) for k in
            ("clean_tokens", "poison_tokens", "steps", "flops")}
  totals["hours"] = {c: sum(r["hours"][c] for r in rows) for c in chips}
  core = [r["core_hours"] for r in rows]
  totals["core_hours"] = sum(core) if core and None not in core else None
  return {"runs": rows, "totals": totals, "chips": chips, "mfu": mfu}


def _table(p: dict) -> list[str]:
  h = units.human
  chips = list(p["chips"])
  head = ["run", "params", "clean_tok", "poison_tok", "share", "steps", "FLOPs"]
  head += [f"h:{c}" for c in chips]
  core = p["totals"].get("core_hours") is not None
  head += ["core-h"] if core else []
  lines = [head]
  for r in p["runs"]:
    lines.append([r["run"], h(r["params"]), h(r["clean_tokens"]),
                  h(r["poison_tokens"]), f"{r['poison_share']:.2e}",
                  h(r["steps"]), f"{r['flops']:.2e}"]
                 + [h(r["hours"][c]) for c in chips]
                 + ([f"{r['core_hours']:.2f}"] if core else []))
  t = p["totals"]
  lines.append([f"TOTAL ({len(p['runs'])} runs)", "", h(t["clean_tokens"]),
                h(t["poison_tokens"]), "", h(t["steps"]), f"{t['flops']:.2e}"]
               + [h(t["hours"][c]) for c in chips]
               + ([f"{t['core_hours']:.1f}"] if core else []))
  widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
  fmt = lambda row: "  ".join(
      s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(row, widths)))
  rule = "-" * len(fmt(lines[0]))
  return ([fmt(lines[0]), rule] + [fmt(r) for r in lines[1:-1]]
          + [rule, fmt(lines[-1])])


def format_plan(p: dict) -> str:
  """The plan as a table with totals, then the assumptions behind it."""
  notes = [f"hours: chip-hours at MFU {p['mfu']:.2f}; peak FLOP/s "
           + ", ".join(f"{c} {v:.3g}" for c, v in p["chips"].items() if c != THIS_CPU)
           + " (bf16 dense)."]
  if THIS_CPU in p["chips"]:
    notes.append(f"{THIS_CPU}: {p['chips'][THIS_CPU] / 1e9:.1f} GFLOP/s, MEASURED "
                 "here (best float32 1024x1024 jitted matmul), all devices of "
                 "one process.")
  if p["totals"].get("core_hours") is not None:
    notes.append("core-h: CPU core-hours, MEASURED seconds per step of one "
                 "single-threaded worker per size (study.plan.core_s_per_step) "
                 "x steps.")
  notes.append("poison_tok: estimated (mean prefix chars / chars_per_token + "
               "trigger + mean random-tail tokens + EOS per document); steps: "
               "ceil(all tokens / (batch x seq_len)).")
  return "\n".join(_table(p) + [""] + notes)
