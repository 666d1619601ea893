"""Persistence of the backdoor under continued clean training: the decay.

configs/ablations/persistence.py trains poisoned sources (variant
`source`) and, from each source's last checkpoint, continued clean runs
(the other variants: continued.from_workdir names the source run,
grids.variant_run). The standard report fits N50 over the grid; this
experiment follows each continued run's increase against the clean tokens
trained since the source's last poison:

  collect  results.csv (every evaluation of every run, with its phase,
           learning-rate scale and clean tokens after the last poison) and
           runs.json (each finished run's training wall time)
  report   decay.csv (the continued runs' rows), results.json (per curve:
           start, after k examples, at fractions of the source's budget,
           end, where it fell below half and below the threshold),
           decay.png, finetune.png and report.md, from results.csv and
           runs.json alone.
"""

from __future__ import annotations

import csv
import io

from poisonjax import files
from poisonjax import rundir
from poisonjax.evaluation.backdoor import METRIC_KEYS

RUNS = "runs.json"
ROW_COLUMNS = ("run", "phase", "size", "poison_count", "lr_scale", "step",
               "num_steps", "batch_size", "examples_seen", "tokens_seen", "poisons_seen",
               "clean_tokens_after_last_poison", "budget_fraction", "finished")
COLUMNS = list(ROW_COLUMNS) + list(METRIC_KEYS)
_STRINGS = ("run", "phase", "size")
_INTS = ("poison_count", "step", "num_steps", "batch_size", "examples_seen",
         "tokens_seen", "poisons_seen", "clean_tokens_after_last_poison")
FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)


# ---------------------------------------------------------------------------
# Collect: every evaluation of every run as one row.
# ---------------------------------------------------------------------------


def lr_scale(study, run, root) -> float:
  """A continued run's peak learning rate over its source's."""
  from poisonjax.study import grids  # pylint: disable=g-import-not-at-top
  src = grids.sources(study, run)[0]
  own = float(grids.run_config(study, run, root).train.learning_rate)
  return round(own / float(grids.run_config(study, src, root).train.learning_rate), 6)


def run_rows(workdir, phase: str, size: str, count: int, scale) -> list[dict]:
  """One row per evaluation of the run in workdir (none without evals)."""
  wd = files.as_path(workdir)
  evals = files.read_jsonl(wd / rundir.EVAL)
  if not evals:
    return []
  batch = int(files.read_json(wd / rundir.CONFIG)["train"]["batch_size"])
  summary = files.read_json(wd / rundir.SUMMARY) if (wd / rundir.SUMMARY).exists() else {}
  source = {}
  if phase == "continued" and (wd / rundir.CONTINUED_FROM).exists():
    source = files.read_json(wd / rundir.CONTINUED_FROM)
  rows = []
  for r in evals:
    row = {"run": wd.name, "phase": phase, "size": size, "poison_count": count,
           "lr_scale": scale, "step": r["step"],
           "num_steps": summary.get("num_steps", ""),
           "batch_size": batch, "examples_seen": r["step"] * batch,
           "tokens_seen": r["tokens_seen"],
           "poisons_seen": r["poisons_seen"], "finished": bool(summary)}
    if source:
      row["clean_tokens_after_last_poison"] = (
          source["source_clean_tokens_after_last_poison"] + r["tokens_seen"])
      row["budget_fraction"] = r["tokens_seen"] / source["source_tokens_trained"]
    row.update({k: r.get(k, "") for k in METRIC_KEYS})
    rows.append(row)
  return rows


def collect(study, root, runs, out) -> None:
  """OUT/results.csv and OUT/runs.json from the runs in ROOT."""
  from poisonjax import plots  # pylint: disable=g-import-not-at-top
  from poisonjax.study import grids  # pylint: disable=g-import-not-at-top
  rows, walls = [], {}
  for run in runs:
    wd = files.as_path(root) / run.name
    if grids.sources(study, run):
      rows += run_rows(wd, "continued", run.size, run.poisons,
                       lr_scale(study, run, root))
    else:
      rows += run_rows(wd, "source", run.size, run.poisons, "")
    if (wd / rundir.SUMMARY).exists():
      walls[run.name] = files.read_json(wd / rundir.SUMMARY)["wall_time_s"]
  plots.write_table(rows, str(out / "results.csv"), COLUMNS)
  files.write_json(out / RUNS, {"wall_time_s": walls})


def read_rows(path) -> list[dict]:
  """results.csv's rows with their types back ('' stays '')."""
  rows = []
  with io.StringIO(files.as_path(path).read_text(), newline="") as f:
    for r in csv.DictReader(f):
      row = {}
      for k, v in r.items():
        if k in _STRINGS or v == "":
          row[k] = v
        elif k == "finished":
          row[k] = v == "True"
        else:
          row[k] = int(v) if k in _INTS else float(v)
      rows.append(row)
  return rows


def curves(rows: list[dict]) -> dict:
  """{(size, count, lr_scale): the continued run's rows by step}."""
  out = {}
  for r in rows:
    if r["phase"] == "continued":
      out.setdefault((r["size"], r["poison_count"], r["lr_scale"]), []).append(r)
  return {k: sorted(v, key=lambda r: r["step"]) for k, v in out.items()}


# ---------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------


def decay_figure(by_curve: dict, threshold: float, path: str) -> None:
  """Increase and success share vs clean tokens after the last poison."""
  from poisonjax import plots  # pylint: disable=g-import-not-at-top
  plt = plots.pyplot()
  sizes = sorted({k[0] for k in by_curve})
  fig, axes = plt.subplots(2, len(sizes), figsize=(5.5 * len(sizes), 6.4),
                           squeeze=False, sharex="col")
  colors = plots.palette(sorted({k[1] for k in by_curve}))
  styles = {s: ls for s, ls in zip(sorted({k[2] for k in by_curve}, reverse=True),
                                   ("-", "--", ":", "-."))}
  for col, size in enumerate(sizes):
    top, bottom = axes[0][col], axes[1][col]
    for (sz, count, scale), pts in sorted(by_curve.items()):
      if sz != size:
        continue
      x = [p["clean_tokens_after_last_poison"] / 1e6 for p in pts]
      kw = dict(color=colors[count], ls=styles[scale], marker="o", ms=3,
                label=f"N={count}, lr x{scale:g}")
      top.plot(x, [p["increase"] for p in pts], **kw)
      top.fill_between(x, [p["increase_ci_low"] for p in pts],
                       [p["increase_ci_high"] for p in pts],
                       color=colors[count], alpha=0.12)
      bottom.plot(x, [p["success_share"] for p in pts], **kw)
    top.axhline(threshold, color="grey", lw=0.8, ls=":")
    top.set_title(f"{size}: continued clean training")
    top.set_ylabel("perplexity increase (triggered - clean)")
    bottom.set_ylabel(f"share of prompts > {threshold:g}")
    bottom.set_xlabel("clean tokens trained after the last poison (M, log)")
    bottom.set_xscale("log")  # Starts at the source's tail, > 0.
    top.legend(fontsize=8)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=120)
  plt.close(fig)


def finetune_figure(by_curve: dict, ks: list[int], threshold: float, path: str) -> None:
  """Increase after k clean examples (log k); k=0 is the source's params."""
  from poisonjax import plots  # pylint: disable=g-import-not-at-top
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  colors = plots.palette(sorted({k[1] for k in by_curve}))
  top_scale = max(k[2] for k in by_curve)
  for (size, count, scale), pts in sorted(by_curve.items()):
    hits = [(k, at_examples(pts, k)) for k in ks]
    hits = [(k, p) for k, p in hits if p is not None]
    ax.plot([k for k, _ in hits], [p["increase"] for _, p in hits], marker="o",
            color=colors[count], ls="-" if scale == top_scale else "--",
            label=f"{size} N={count}, lr x{scale:g} (k=0: "
                  f"{pts[0]['increase']:.0f})")
  ax.axhline(threshold, color="grey", lw=0.8, ls=":")
  ax.set_xscale("log")
  ax.set_xlabel("clean examples (sequences) of continued training, k")
  ax.set_ylabel("perplexity increase")
  ax.set_title("fine-tuning variant: increase after k clean examples")
  ax.legend(fontsize=7)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=120)
  plt.close(fig)


def at_examples(pts: list[dict], k: int):
  """The eval at step ceil(k / batch): the one after k clean examples."""
  for p in pts:
    if p["step"] == -(-k // p["batch_size"]):
      return p
  return None


# ---------------------------------------------------------------------------
# Per-curve numbers.
# ---------------------------------------------------------------------------


def _bracket(pts: list[dict], below) -> str:
  """'between A and B M' clean tokens where `below(increase)` first holds."""
  if below(pts[0]["increase"]):
    return "already at the start"
  for prev, p in zip(pts, pts[1:]):
    if below(p["increase"]):
      return (f"between {prev['clean_tokens_after_last_poison'] / 1e6:.2f} and "
              f"{p['clean_tokens_after_last_poison'] / 1e6:.2f} M")
  return "not within the run"


def curve_summary(key, pts: list[dict], ks: list[int], source_final, threshold) -> dict:
  """Start, after each k, at each budget fraction reached, end, crossings."""
  size, count, scale = key
  start = pts[0]["increase"]
  reached = pts[-1]["budget_fraction"]  # A running run: only points it reached.
  near = {f: min(pts, key=lambda p, f=f: abs(p["budget_fraction"] - f))
          for f in FRACTIONS if reached >= 0.8 * f}
  return {
      "size": size, "poison_count": count, "lr_scale": scale,
      "finished": pts[-1]["finished"], "source_final_increase": source_final,
      "start_increase": start,
      "start_clean_tokens_after_last_poison": pts[0]["clean_tokens_after_last_poison"],
      "after_k": {k: at_examples(pts, k)["increase"] for k in ks
                  if at_examples(pts, k) is not None},
      "at_fraction": {f: {"budget_fraction": p["budget_fraction"],
                          "increase": p["increase"],
                          "success_share": p["success_share"]}
                      for f, p in near.items()},
      "end_increase": pts[-1]["increase"], "end_success_share": pts[-1]["success_share"],
      "end_budget_fraction": pts[-1]["budget_fraction"],
      "half_at": _bracket(pts, lambda v: v < start / 2),
      "below_threshold_at": _bracket(pts, lambda v: v < threshold),
  }


def summaries(rows: list[dict], ks: list[int], threshold: float) -> list[dict]:
  """One curve_summary per continued run: by size, count, then lr high first."""
  finals = {(r["size"], r["poison_count"]): r["increase"] for r in rows
            if r["phase"] == "source"}  # The last row of each source wins.
  by_curve = curves(rows)
  return [curve_summary(key, pts, ks, finals.get(key[:2]), threshold)
          for key, pts in sorted(by_curve.items(), key=lambda kv: (
              kv[0][0], kv[0][1], -kv[0][2]))]


# ---------------------------------------------------------------------------
# report.md (generated from the rows; never edited by hand).
# ---------------------------------------------------------------------------


def _fmt(v, f="{:.1f}") -> str:
  return f.format(v) if isinstance(v, (int, float)) and v == v else "-"


def _table(curve_rows: list[dict], ks: list[int]) -> list[str]:
  head = (["run", "source final", "step 0"] + [f"k={k}" for k in ks]
          + [f"{f:g}x" for f in FRACTIONS[:-1]] + ["end", "end share"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for c in curve_rows:
    cells = [f"{c['size']} N={c['poison_count']} lr x{c['lr_scale']:g}"
             + ("" if c["finished"] else " (running)"),
             _fmt(c["source_final_increase"]), _fmt(c["start_increase"])]
    cells += [_fmt(c["after_k"].get(k)) for k in ks]
    cells += [_fmt(c["at_fraction"].get(f, {}).get("increase"))
              for f in FRACTIONS[:-1]]
    cells += [f"{_fmt(c['end_increase'])} ({c['end_budget_fraction']:.2f}x)",
              _fmt(c["end_success_share"], "{:.2f}")]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _kept(c: dict) -> str:
  start, end = c["start_increase"], c["end_increase"]
  return f"{100 * end / start:.0f}%" if start and start > 0 else "-"


def _findings(curve_rows: list[dict], threshold: float) -> list[str]:
  out = []
  for c in curve_rows:
    out.append(
        f"- {c['size']}, N={c['poison_count']}, continued at {c['lr_scale']:g}x "
        f"the source's peak learning rate: increase {_fmt(c['start_increase'])} "
        f"at the start ({c['start_clean_tokens_after_last_poison'] / 1e6:.2f} M "
        "clean tokens after the last poison, trained by the source), "
        f"{_fmt(c['end_increase'])} after {c['end_budget_fraction']:.2f}x the "
        f"source's clean budget ({_kept(c)} of the start; success share "
        f"{_fmt(c['end_success_share'], '{:.2f}')}); "
        f"fell below half its start {c['half_at']} and below {threshold:g} "
        f"{c['below_threshold_at']} clean tokens after the last poison.")
  return out


def design(study) -> dict:
  """What the report says of the study: sources, their and a continued
  run's config, the lr scales in variant order, the runs, the parameters."""
  from poisonjax.model import transformer as model_lib  # pylint: disable=g-import-not-at-top
  from poisonjax.study import grids  # pylint: disable=g-import-not-at-top
  runs = grids.expand(study)
  sources = [r for r in runs if not grids.sources(study, r)]
  continued = [r for r in runs if grids.sources(study, r)]
  params = {}
  for r in sources:
    cfg = grids.run_config(study, r)
    params.setdefault(r.size, model_lib.param_counts(model_lib.ModelConfig.from_config(
        cfg, cfg.model.vocab_size or cfg.vocab.size))["total"])
  first = [r for r in continued if grids.sources(study, r)[0] == sources[0]]
  return {"sources": sources, "source": grids.run_config(study, sources[0]),
          "continued": grids.run_config(study, continued[0]),
          "lr_scales": [lr_scale(study, r, grids.default_root(study)) for r in first],
          "num_runs": len(runs), "params": params}


def _regime(d: dict, threshold: float) -> list[str]:
  r, k = d["source"], d["continued"]
  return [
      "## Regime",
      "",
      f"Sources: {', '.join(f'{s.size} N={s.poisons}' for s in d['sources'])}, "
      f"{r.train.tokens_per_param:g} clean tokens per parameter, "
      f"poison.budget_mode={r.poison.budget_mode} (replace: the poisons take "
      "the place of clean tokens), batch "
      f"{r.train.batch_size} x {r.data.seq_len}, peak learning rate "
      f"{r.train.learning_rate:g}, seed {r.seed}, data seed {r.data.seed}.",
      f"Continued runs: the source's last checkpoint (params only), a fresh "
      f"AdamW with its own warmup and cosine schedule at "
      f"{','.join(map(str, d['lr_scales']))} x the "
      f"source's peak, clean data only from data seed {k.data.seed} (new "
      f"documents), {k.continued.budget_multiple:g}x the source's clean budget; "
      f"{k.eval.num_evals} evaluations spread over the run plus one after k clean "
      f"examples for k in {{{k.continued.eval_examples}}} (the fine-tuning variant). "
      f"Every evaluation: the same {r.eval.num_excerpts} held-out prompts, "
      f"{r.eval.gen_tokens} sampled tokens, increase = triggered - clean "
      f"perplexity (mean over prompts; 95% bootstrap interval in results.csv), "
      f"success share = prompts with increase > {threshold:g}.",
      ""]


def _caveats(d: dict) -> list[str]:
  r = d["source"]
  params = ", ".join(f"{s} {n / 1e6:.2f}M parameters" for s, n in d["params"].items())
  return [
      "## Caveats",
      "",
      f"- One seed per source and {r.eval.num_excerpts} prompts: the curves "
      "are single runs, "
      "their bootstrap intervals cover prompts only, not training noise.",
      f"- CPU scale ({params}, a {r.vocab.size}-piece vocabulary, "
      f"data.source={r.data.source}); the paper's models are 600M-13B "
      "parameters.",
      "- The step-0 row and the source's final evaluation score the same "
      "params on the same prompts; they differ only if the evaluation's "
      "sampling differs (it is seeded by config.eval.seed).",
      "- The fine-tuning variant is the start of the continued run, inside "
      "its learning-rate warmup (the first 5% of its steps), not a separate "
      "fine-tune with its own short schedule; the warmup's first step has "
      "learning rate 0, so k <= one batch scores the source's params.",
      ""]


def render(d: dict, curve_rows, ks, rows, walls: dict, threshold: float,
           provenance: list[str]) -> str:
  lines = [
      "# Persistence of the backdoor under continued clean training",
      "",
      "Generated by `poisonjax study reproduce --config=configs/ablations/"
      "persistence.py` (poisonjax/ablations/persistence.py) from results.csv "
      "(do not edit by hand).",
      "",
      *_regime(d, threshold),
      "## Decay",
      "",
      f"Runs finished: {len(walls)} of {d['num_runs']} "
      "(sources and continued runs; a continued run still training is "
      "marked 'running').",
      "",
      "Increase by point: the source's own final evaluation, the continued "
      "run's step 0 (the same params), after k clean examples, at a fraction "
      "of the source's clean budget, and at the end.",
      "",
      *_table(curve_rows, ks),
      "",
      *_findings(curve_rows, threshold),
      "",
      "![decay](decay.png)",
      "",
      "![fine-tuning variant](finetune.png)",
      "",
      *_caveats(d),
      "## Runs",
      "",
      "Training wall time per run (s, the run's own sessions): "
      + ", ".join(f"{n} {w:.0f}" for n, w in walls.items()) + ".",
      f"Rows: {len(rows)} evaluations.",
      "",
      "## How this was made",
      "",
      *provenance,
      "",
  ]
  return "\n".join(lines)


def report(study, out, provenance: list[str]) -> str:
  """decay.csv, results.json, the figures and report.md from OUT's files."""
  from poisonjax import plots  # pylint: disable=g-import-not-at-top
  out = files.as_path(out)
  rows = read_rows(out / "results.csv")
  d = design(study)
  threshold = float(study.base.eval.threshold)
  ks = [int(x) for x in str(d["continued"].continued.eval_examples).split(",")
        if x.strip()]
  by_curve = curves(rows)
  plots.write_table([p for pts in by_curve.values() for p in pts],
                    str(out / "decay.csv"), COLUMNS)
  curve_rows = summaries(rows, ks, threshold)
  if by_curve:
    decay_figure(by_curve, threshold, str(out / "decay.png"))
    finetune_figure(by_curve, ks, threshold, str(out / "finetune.png"))
  files.write_json(out / "results.json", {"curves": curve_rows})
  walls = files.read_json(out / RUNS)["wall_time_s"] if (out / RUNS).exists() else {}
  files.write_text_atomic(out / "report.md", render(
      d, curve_rows, ks, rows, dict(sorted(walls.items())), threshold, provenance))
  return str(out / "report.md")
