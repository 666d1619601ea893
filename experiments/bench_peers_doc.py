"""The tables and the docs/benchmarks.md page of experiments/bench_peers.py.

Pure functions of the measurement rows (one dict per JSON line a benchmark
process printed, tagged with side/job/key/cmd/round by bench_peers), so a
page can be rendered again from a --raw file without measuring.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

# The targets (ratios measured side by side in one sitting).
TRAIN_TARGET = {"tiny": 1.2, "small": 1.0, "medium": 1.0}
SAMPLE_TARGET = 1.5
DATA_TARGET = 10.0
COMPILE_TARGET_S = 20.0
RSS_TARGET_MIB = 2048.0
DASH = "—"


@dataclasses.dataclass
class Report:
  rows: list[dict]
  machine: dict
  command: str


def medians(rows: list[dict]) -> dict:
  """{'side/job': {shape: {field: {median, min, max, n}}}} over rounds.

  Numeric fields only (bools excluded); rows that failed or carry no key
  (the machine row) are skipped.
  """
  values: dict = {}
  for r in rows:
    if "key" not in r or "error" in r:
      continue
    side, job, shape = r["key"].split("/", 2)
    cell = values.setdefault(f"{side}/{job}", {}).setdefault(shape, {})
    for field, v in r.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        cell.setdefault(field, []).append(float(v))
  return {g: {s: {f: {"median": statistics.median(v), "min": min(v),
                      "max": max(v), "n": len(v)} for f, v in fields.items()}
              for s, fields in shapes.items()} for g, shapes in values.items()}


def _get(meds: dict, group: str, shape: str, field: str):
  cell = meds.get(group, {}).get(shape, {}).get(field)
  return None if cell is None else cell


def fmt(cell, digits: int = 0) -> str:
  """'12,345' or '12,345 (11,900–12,800)' when several rounds differ."""
  if cell is None:
    return DASH
  one = lambda x: f"{x:,.{digits}f}"
  if cell["n"] > 1 and cell["min"] != cell["max"]:
    return f"{one(cell['median'])} ({one(cell['min'])}–{one(cell['max'])})"
  return one(cell["median"])


def _ratio(num, den) -> float | None:
  if num is None or den is None or not den:
    return None
  return num / den


def _ratio_text(ratio: float | None, target: float) -> str:
  if ratio is None:
    return DASH
  mark = "met" if ratio >= target else "missed"
  return f"{ratio:.2f}× ({mark})"


def _median(cell):
  return None if cell is None else cell["median"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(r) + " |" for r in rows]
  return out


def _shapes(meds: dict, *groups: str) -> list[str]:
  order = ["tiny", "small", "medium"]
  seen = {s for g in groups for s in meds.get(g, {})}
  return [s for s in order if s in seen] + sorted(seen - set(order))


def train_table(meds: dict) -> list[str]:
  """Peer eager / compiled / poisonjax training tokens/s and the ratio."""
  rows = []
  for s in _shapes(meds, "peer/train", "poisonjax/train"):
    g = lambda grp, f: _get(meds, grp, s, f)
    eager, comp = g("peer/train", "tokens_per_s"), g("peer/train_compiled", "tokens_per_s")
    ours = g("poisonjax/train", "tokens_per_s")
    best = max((_median(c) for c in (eager, comp) if c), default=None)
    rows.append([
        s, f"{fmt(g('peer/train', 'params'))} / {fmt(g('poisonjax/train', 'params'))}",
        fmt(eager), fmt(comp), fmt(ours),
        _ratio_text(_ratio(_median(ours), best), TRAIN_TARGET.get(s, 1.0)),
        fmt(g("poisonjax/train", "compile_s"), 1),
        fmt(g("poisonjax/train", "peak_rss_mib"))])
  return _table(["shape", "params (peer / poisonjax)", "peer eager tok/s",
                 "peer torch.compile tok/s", "poisonjax tok/s",
                 "ratio to the peer's best (target)", "poisonjax compile s",
                 "poisonjax peak RSS MiB"], rows)


def flops_table(meds: dict) -> list[str]:
  """Achieved GFLOP/s of each side and its share of the measured matmul peak."""
  peer_peak = _median(_get(meds, "peer/peak", "-", "gflops"))
  rows = []
  for s in _shapes(meds, "peer/train", "poisonjax/train"):
    g = lambda grp, f: _get(meds, grp, s, f)
    peer = max((_median(c) for c in (g("peer/train", "gflops"),
                                     g("peer/train_compiled", "gflops")) if c),
               default=None)
    ours, our_peak = g("poisonjax/train", "gflops"), g("poisonjax/train", "peak_gflops")
    share = lambda x, p: DASH if x is None or not p else f"{100 * x / p:.0f}%"
    rows.append([s, DASH if peer is None else f"{peer:,.1f}", share(peer, peer_peak),
                 fmt(ours, 1), share(_median(ours), _median(our_peak))])
  peaks = (f"Matmul peak: peer (torch, 4096² fp32) "
           f"{fmt(_get(meds, 'peer/peak', '-', 'gflops'), 1)} GFLOP/s; "
           f"poisonjax (bench_train's own measurement) "
           f"{fmt(_get(meds, 'poisonjax/train', _first(meds), 'peak_gflops'), 1)} GFLOP/s.")
  return _table(["shape", "peer best GFLOP/s", "of peer peak",
                 "poisonjax GFLOP/s", "poisonjax MFU"], rows) + ["", peaks]


def _first(meds: dict) -> str:
  shapes = _shapes(meds, "poisonjax/train")
  return shapes[0] if shapes else ""


def sample_table(meds: dict) -> list[str]:
  rows = []
  for s in _shapes(meds, "peer/sample", "poisonjax/sample"):
    peer = _get(meds, "peer/sample", s, "gen_tokens_per_s")
    ours = _get(meds, "poisonjax/sample", s, "gen_tokens_per_s")
    rows.append([s, fmt(_get(meds, "poisonjax/sample", s, "params")), fmt(peer),
                 fmt(ours), _ratio_text(_ratio(_median(ours), _median(peer)),
                                        SAMPLE_TARGET),
                 fmt(_get(meds, "poisonjax/sample", s, "compile_s"), 1)])
  return _table(["shape", "params", "HF generate gen. tok/s",
                 "poisonjax sampler gen. tok/s", "ratio (target 1.5×)",
                 "poisonjax compile s"], rows)


def preset_table(meds: dict) -> list[str]:
  """CPU presets: train compile time, speed, RSS and one full evaluation."""
  rows = []
  for s in _shapes(meds, "poisonjax/preset_train", "poisonjax/full_eval"):
    g = lambda grp, f: _get(meds, grp, s, f)
    compile_s = _median(g("poisonjax/preset_train", "compile_s"))
    ok = DASH if compile_s is None else (
        "met" if compile_s <= COMPILE_TARGET_S else "missed")
    mfu = _median(g("poisonjax/preset_train", "mfu"))
    rows.append([s, fmt(g("poisonjax/preset_train", "params")),
                 f"{fmt(g('poisonjax/preset_train', 'compile_s'), 1)} ({ok})",
                 fmt(g("poisonjax/preset_train", "tokens_per_s")),
                 DASH if mfu is None else f"{100 * mfu:.0f}%",
                 fmt(g("poisonjax/preset_train", "peak_rss_mib")),
                 fmt(g("poisonjax/full_eval", "first_s"), 1),
                 fmt(g("poisonjax/full_eval", "warm_s"), 1)])
  return _table(["preset", "params", "train compile s (target ≤ 20)",
                 "train tok/s", "MFU", "peak RSS MiB", "full eval s (first, with compile)",
                 "full eval s (warm)"], rows)


def data_table(rows: list[dict]) -> list[str]:
  """One line per (shape, stream kind, process count) of bench_data."""
  out = []
  for r in rows:
    if r.get("what") != "data" or "error" in r:
      continue
    ratio = r["ratio"]
    out.append([r["shape"], r["stream"], str(r["processes"]), f"{r['call_ms']:.3f}",
                f"{r['tokens_per_s']:,.0f}", f"{r['step_tokens_per_s']:,.0f}",
                f"{ratio:,.0f}× ({'met' if ratio >= DATA_TARGET else 'missed'})"])
  return _table(["shape", "stream", "processes P", "batch() ms",
                 "stream tok/s", "train step tok/s", "ratio (target ≥ 10×)"], out)


def failures(rows: list[dict]) -> list[str]:
  return [f"- `{r['key']}` (round {r.get('round', '?')}): {r['error']}"
          for r in rows if "error" in r]


def tables(report: Report) -> str:
  """The tables as markdown (also what bench_peers prints)."""
  meds = medians(report.rows)
  parts = ["Training (batch 16 × 256, fp32, AdamW + clip; median step after "
           "warm-up):", "", *train_table(meds), "", *flops_table(meds), "",
           "Sampling (batch 32, 64-token prompts, 64 new tokens, temperature 1):",
           "", *sample_table(meds), "",
           "CPU presets (configs/cpu_micro.py per size; one measurement each):", "",
           *preset_table(meds), "", "Training stream vs the train step:", "",
           *data_table(report.rows)]
  bad = failures(report.rows)
  if bad:
    parts += ["", "Failed measurements:", *bad]
  return "\n".join(parts)


def _machine_lines(m: dict) -> list[str]:
  if not m:
    return ["(not measured yet)"]
  load = f"{m.get('load_avg', float('nan')):.2f}"
  if "load_avg_end" in m:
    load += f" at the start, {m['load_avg_end']:.2f} at the end"
  return [
      f"- CPU: {m.get('cpu', '?')}, {m.get('cores', '?')} logical cores "
      f"({m.get('usable_cores', '?')} usable by the benchmark)",
      f"- RAM: {m.get('ram_gib', float('nan')):.1f} GiB",
      f"- poisonjax side: Python {m.get('python', '?')}, jax {m.get('jax', '?')}, "
      f"jaxlib {m.get('jaxlib', '?')}",
      f"- peer side: Python {m.get('peer_python', '?')}, torch {m.get('torch', '?')} "
      f"({m.get('torch_threads', '?')} threads), transformers "
      f"{m.get('transformers', '?')}",
      f"- date: {m.get('date', '?')}; process niceness {m.get('nice', '?')}; "
      f"1-minute load average {load}",
  ]


def _commands(report: Report) -> list[str]:
  """The driver's command, then each distinct benchmark command it ran."""
  seen = []
  for r in report.rows:
    cmd = r.get("cmd")
    if cmd and cmd not in seen:
      seen.append(cmd)
  return ["```", report.command, "```", "", "It ran, one process at a time:", "",
          "```", *(seen or ["(nothing yet)"]), "```"]


_METHOD = """\
How each side is measured (each figure: the median over the rounds, the
range in brackets; every measurement in its own process, one at a time,
with a pause between; odd rounds run the list backwards):

- Peer: `../shared/peers/torch_peer.py` (nanoGPT-style GPT: LayerNorm, 4d
  GELU MLP, tied embeddings; AdamW + clip 1.0; median of 10 steps after 3
  warm-up steps; eager and `torch.compile`) and Hugging Face GPT-2
  `generate` with its KV cache (median of 3 after a warm-up). Its FLOPs:
  6 N + 12 L d S per token (N: parameters without the position table).
- poisonjax: `experiments/bench_train.py` times the real jitted train step
  (sharded, donated state) and states its FLOP formula in its output;
  `experiments/bench_sample.py` times the evaluator's jitted sampler
  (poisonjax.evaluation.evaluate, the same function training evaluates with).
  Shapes are the peer's with SwiGLU ffn = round(8/3 d) and tied
  embeddings, so parameter counts match (experiments/bench_shapes.py).
- Ratios divide figures taken minutes apart in the same sitting. These
  machines are shared and noisy: compare ratios, never absolute figures
  from different days.
"""


def page(report: Report) -> str:
  """docs/benchmarks.md: the tables, the machine, the method, the commands."""
  head = ["# Benchmarks: poisonjax side by side with a PyTorch peer", "",
          "Written by `experiments/bench_peers.py --write_doc docs/benchmarks.md`;"
          " do not edit by hand, rerun it (on a quiet machine).", ""]
  if not report.rows:
    head += ["**Not measured yet**: this is the page's template. Run",
             "`python experiments/bench_peers.py --write_doc docs/benchmarks.md`",
             "(about an hour with the defaults) to fill it.", ""]
  return "\n".join([
      *head, "## Results", "", tables(report), "", "## Machine", "",
      *_machine_lines(report.machine), "", "## Method", "", _METHOD,
      "## Commands", "", *_commands(report), ""])
