"""Persistence of the backdoor under continued clean training: train -> collect -> report.

    python experiments/exp_persistence.py                 # ~1 h on 2 busy CPU cores, resumable
    nohup nice -n 10 python experiments/exp_persistence.py > /tmp/exp_persistence.log 2>&1 &
    python experiments/exp_persistence.py --report_only   # no training

Trains the poisoned sources and their continued clean runs of --config
(default configs/exp_persistence.py) under --root (runs/exp_persistence),
in an order that completes one decay curve first; then writes into --out
(docs/results/persistence/) results.csv (every evaluation of every run),
decay.csv (the continued runs against clean tokens after the last poison),
decay.png, finetune.png and report.md (generated from those rows).

Resumable: finished runs (summary.json) are skipped; an interrupted run
resumes from its own last checkpoint (a continued run reads its source only
when it has none).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from poisonjax import files, rundir  # noqa: E402


def load_experiment(path: str):
  spec = importlib.util.spec_from_file_location("exp_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _floats(text: str) -> list[float]:
  return [float(x) for x in str(text).split(",") if x.strip()]


def sources(e) -> list[tuple[str, int]]:
  """(size, poison count) of each source, in run order."""
  out = []
  for item in str(e.sources).split(","):
    size, count = item.strip().split(":")
    out.append((size, int(count)))
  return out


def source_name(size: str, count: int) -> str:
  return f"source_size={size}_n={count}"


def continued_name(size: str, count: int, scale: float) -> str:
  return f"continued_size={size}_n={count}_lr={scale:g}"


def source_config(e, size: str, count: int):
  c = copy.deepcopy(e.run)
  c.model.size, c.poison.count = size, count
  return c


def continued_config(e, size: str, count: int, scale: float, source_wd: str):
  """Clean only, new data seed, fresh optimizer at scale x the source's peak."""
  c = source_config(e, size, count)
  c.poison.count = 0
  c.data.seed = e.continued.data_seed
  c.train.learning_rate = e.run.train.learning_rate * scale
  c.eval.num_evals = e.continued.num_evals
  c.continued.from_workdir = source_wd
  c.continued.budget_multiple = e.continued.budget_multiple
  c.continued.eval_examples = e.continued.eval_examples
  return c


def plan(e, root: str) -> list[tuple[str, object]]:
  """(workdir, config) in run order: per lr scale, each source then its run."""
  runs, seen = [], set()
  for scale in _floats(e.continued.lr_scales):
    for size, count in sources(e):
      src = os.path.join(root, source_name(size, count))
      if src not in seen:
        runs.append((src, source_config(e, size, count)))
        seen.add(src)
      runs.append((os.path.join(root, continued_name(size, count, scale)),
                   continued_config(e, size, count, scale, src)))
  return runs


def train_all(e, root: str) -> None:
  from poisonjax import train
  from poisonjax.study import results

  for workdir, config in plan(e, root):
    if results.is_finished(workdir):
      continue
    t0 = time.time()
    print(f"exp_persistence: training {workdir}", flush=True)
    train.run_or_exit(config, workdir)
    print(f"exp_persistence: {workdir} done in {time.time() - t0:.0f}s", flush=True)


# ---------------------------------------------------------------------------
# Collect: every evaluation of every run as one row.
# ---------------------------------------------------------------------------

ROW_COLUMNS = ("run", "phase", "size", "poison_count", "lr_scale", "step",
               "num_steps", "batch_size", "examples_seen", "tokens_seen", "poisons_seen",
               "clean_tokens_after_last_poison", "budget_fraction", "finished")


def _metric_keys():
  from poisonjax import backdoor
  return backdoor.METRIC_KEYS


def _run_rows(workdir: str, phase: str, size: str, count: int, scale) -> list[dict]:
  wd = files.as_path(workdir)
  evals = files.read_jsonl(wd / rundir.EVAL)
  if not evals:
    return []
  config = files.read_json(wd / rundir.CONFIG)
  batch = int(config["train"]["batch_size"])
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
    row.update({k: r.get(k, "") for k in _metric_keys()})
    rows.append(row)
  return rows


def collect(e, root: str) -> list[dict]:
  rows, seen = [], set()
  for scale in _floats(e.continued.lr_scales):
    for size, count in sources(e):
      if (size, count) not in seen:
        seen.add((size, count))
        rows += _run_rows(os.path.join(root, source_name(size, count)),
                          "source", size, count, "")
      rows += _run_rows(os.path.join(root, continued_name(size, count, scale)),
                        "continued", size, count, scale)
  return rows


def _curves(rows: list[dict]) -> dict:
  """{(size, count, lr_scale): the continued run's rows by step}."""
  out = {}
  for r in rows:
    if r["phase"] == "continued":
      out.setdefault((r["size"], r["poison_count"], r["lr_scale"]), []).append(r)
  return {k: sorted(v, key=lambda r: r["step"]) for k, v in out.items()}


# ---------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------


def _decay_figure(curves: dict, threshold: float, path: str) -> None:
  """Increase and success share vs clean tokens after the last poison."""
  from poisonjax import plots
  plt = plots.pyplot()
  sizes = sorted({k[0] for k in curves})
  fig, axes = plt.subplots(2, len(sizes), figsize=(5.5 * len(sizes), 6.4),
                           squeeze=False, sharex="col")
  counts = sorted({k[1] for k in curves})
  colors = plots.palette(counts)
  styles = {s: ls for s, ls in zip(sorted({k[2] for k in curves}, reverse=True),
                                   ("-", "--", ":", "-."))}
  for col, size in enumerate(sizes):
    top, bottom = axes[0][col], axes[1][col]
    for (sz, count, scale), pts in sorted(curves.items()):
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


def _finetune_figure(curves: dict, ks: list[int], threshold: float, path: str) -> None:
  """Increase after k clean examples (log k); k=0 is the source's params."""
  from poisonjax import plots
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  colors = plots.palette(sorted({k[1] for k in curves}))
  top_scale = max(k[2] for k in curves)
  for (size, count, scale), pts in sorted(curves.items()):
    hits = [(k, _at_examples(pts, k)) for k in ks]
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


def _at_examples(pts: list[dict], k: int):
  """The eval at step ceil(k / batch): the one after k clean examples."""
  for p in pts:
    if p["step"] == -(-k // p["batch_size"]):
      return p
  return None


# ---------------------------------------------------------------------------
# Numbers and report.md (generated from the rows; never edited by hand).
# ---------------------------------------------------------------------------

FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)


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
      "after_k": {k: _at_examples(pts, k)["increase"] for k in ks
                  if _at_examples(pts, k) is not None},
      "at_fraction": {f: {"budget_fraction": p["budget_fraction"],
                          "increase": p["increase"],
                          "success_share": p["success_share"]}
                      for f, p in near.items()},
      "end_increase": pts[-1]["increase"], "end_success_share": pts[-1]["success_share"],
      "end_budget_fraction": pts[-1]["budget_fraction"],
      "half_at": _bracket(pts, lambda v: v < start / 2),
      "below_threshold_at": _bracket(pts, lambda v: v < threshold),
  }


def _fmt(v, f="{:.1f}") -> str:
  return f.format(v) if isinstance(v, (int, float)) and v == v else "-"


def _table(summaries: list[dict], ks: list[int]) -> list[str]:
  head = (["run", "source final", "step 0"] + [f"k={k}" for k in ks]
          + [f"{f:g}x" for f in FRACTIONS[:-1]] + ["end", "end share"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for c in summaries:
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


def _findings(summaries: list[dict], threshold: float) -> list[str]:
  out = []
  for c in summaries:
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


def _params_text(e, root: str) -> str:
  """'cpu-xxs 0.24M parameters, ...' from the sources' config.json."""
  from poisonjax import model as model_lib
  from poisonjax import restore

  out = []
  for size, count in sources(e):
    wd = os.path.join(root, source_name(size, count))
    if os.path.exists(os.path.join(wd, rundir.CONFIG)) and size not in str(out):
      cfg = restore.read_run_config(wd)
      n = model_lib.param_counts(model_lib.ModelConfig.from_config(
          cfg, cfg.model.vocab_size))["total"]
      out.append(f"{size} {n / 1e6:.2f}M parameters")
  return ", ".join(out) or "CPU sizes"


def _report(e, root, summaries, ks, rows, walls: dict, script_s: float) -> str:
  threshold = float(e.threshold)
  r, k = e.run, e.continued
  lines = [
      "# Persistence of the backdoor under continued clean training",
      "",
      "Generated by `python experiments/exp_persistence.py` from results.csv "
      "(do not edit by hand). Config: configs/exp_persistence.py.",
      "",
      "## Regime",
      "",
      f"Sources: {', '.join(f'{s} N={n}' for s, n in sources(e))}, "
      f"{r.train.tokens_per_param:g} clean tokens per parameter, "
      f"poison.budget_mode={r.poison.budget_mode} (replace: the poisons take "
      "the place of clean tokens), batch "
      f"{r.train.batch_size} x {r.data.seq_len}, peak learning rate "
      f"{r.train.learning_rate:g}, seed {r.seed}, data seed {r.data.seed}.",
      f"Continued runs: the source's last checkpoint (params only), a fresh "
      f"AdamW with its own warmup and cosine schedule at {k.lr_scales} x the "
      f"source's peak, clean data only from data seed {k.data_seed} (new "
      f"documents), {k.budget_multiple:g}x the source's clean budget; "
      f"{k.num_evals} evaluations spread over the run plus one after k clean "
      f"examples for k in {{{k.eval_examples}}} (the fine-tuning variant). "
      f"Every evaluation: the same {r.eval.num_excerpts} held-out prompts, "
      f"{r.eval.gen_tokens} sampled tokens, increase = triggered - clean "
      f"perplexity (mean over prompts; 95% bootstrap interval in results.csv), "
      f"success share = prompts with increase > {threshold:g}.",
      "",
      "## Decay",
      "",
      f"Runs finished: {len(walls)} of {len(plan(e, root))} "
      "(sources and continued runs; a continued run still training is "
      "marked 'running').",
      "",
      "Increase by point: the source's own final evaluation, the continued "
      "run's step 0 (the same params), after k clean examples, at a fraction "
      "of the source's clean budget, and at the end.",
      "",
      *_table(summaries, ks),
      "",
      *_findings(summaries, threshold),
      "",
      "![decay](decay.png)",
      "",
      "![fine-tuning variant](finetune.png)",
      "",
      "## Caveats",
      "",
      f"- One seed per source and {r.eval.num_excerpts} prompts: the curves "
      "are single runs, "
      "their bootstrap intervals cover prompts only, not training noise.",
      f"- CPU scale ({_params_text(e, root)}, a {r.vocab.size}-piece vocabulary, "
      f"data.source={r.data.source}); the paper's models are 600M-13B "
      "parameters.",
      "- The step-0 row and the source's final evaluation score the same "
      "params on the same prompts; they differ only if the evaluation's "
      "sampling differs (it is seeded by config.eval.seed).",
      "- The fine-tuning variant is the start of the continued run, inside "
      "its learning-rate warmup (the first 5% of its steps), not a separate "
      "fine-tune with its own short schedule; the warmup's first step has "
      "learning rate 0, so k <= one batch scores the source's params.",
      "",
      "## Command, time",
      "",
      "    python experiments/exp_persistence.py",
      "",
      "Training wall time per run (s, on the shared 2-core machine, niced): "
      + ", ".join(f"{n} {w:.0f}" for n, w in walls.items()) + ".",
      f"This invocation: {script_s:.0f} s. Rows: {len(rows)} evaluations.",
      "",
  ]
  return "\n".join(lines)


def write_report(e, root: str, out: str, script_s: float = 0.0) -> dict:
  """results.csv, decay.csv, results.json, the figures and report.md."""
  from poisonjax import plots

  os.makedirs(out, exist_ok=True)
  rows = collect(e, root)
  columns = list(ROW_COLUMNS) + list(_metric_keys())
  plots.write_table(rows, os.path.join(out, "results.csv"), columns)
  curves = _curves(rows)
  plots.write_table([p for pts in curves.values() for p in pts],
                    os.path.join(out, "decay.csv"), columns)
  ks = [int(x) for x in str(e.continued.eval_examples).split(",") if x.strip()]
  finals = {(r["size"], r["poison_count"]): r["increase"] for r in rows
            if r["phase"] == "source"}  # The last row of each source wins.
  summaries = [curve_summary(key, pts, ks, finals.get(key[:2]), e.threshold)
               for key, pts in sorted(curves.items(), key=lambda kv: (
                   kv[0][0], kv[0][1], -kv[0][2]))]
  if curves:
    _decay_figure(curves, float(e.threshold), os.path.join(out, "decay.png"))
    _finetune_figure(curves, ks, float(e.threshold), os.path.join(out, "finetune.png"))
  walls = {}
  for d in sorted(files.as_path(root).glob("*/summary.json")):
    walls[d.parent.name] = files.read_json(d)["wall_time_s"]
  files.write_json(os.path.join(out, "results.json"), {"curves": summaries})
  files.write_text_atomic(os.path.join(out, "report.md"),
                          _report(e, root, summaries, ks, rows, walls, script_s))
  print(f"exp_persistence: wrote {out} ({len(rows)} rows, {len(curves)} curves)")
  return {"rows": rows, "summaries": summaries}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default=os.path.join(REPO, "configs", "exp_persistence.py"))
  ap.add_argument("--root", default=os.path.join(REPO, "runs", "exp_persistence"))
  ap.add_argument("--out", default=os.path.join(REPO, "docs", "results", "persistence"))
  ap.add_argument("--report_only", action="store_true")
  ap.add_argument("--train_only", action="store_true")
  args = ap.parse_args(argv)
  e = load_experiment(args.config)
  t0 = time.time()
  if not args.report_only:
    train_all(e, args.root)
  if not args.train_only:
    write_report(e, args.root, args.out, script_s=time.time() - t0)
  return 0


if __name__ == "__main__":
  sys.exit(main())
