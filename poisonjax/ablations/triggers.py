"""Trigger variants at one count: a rare string, a common word, a phrase.

The study (configs/ablations/triggers.py) trains one run per trigger, the
rest of the config the same. The hooks, run by `poisonjax study reproduce`:
  after_run  doses.after_run: each final checkpoint scored after all the
             study's triggers (WORKDIR/final_triggers.json);
  collect    OUT/results.json: per variant its pieces, share of the corpus,
             final numbers and first crossing; the curves; the cross-talk;
  report     triggers.csv, triggers.png and report.md from results.json alone.
"""

from __future__ import annotations

import itertools
import os
import re

import numpy as np

from poisonjax.evaluation import backdoor
from poisonjax import files
from poisonjax import rundir
from poisonjax.ablations import doses as common
from poisonjax.ablations import doses_report
from poisonjax.study import grids

CONFIG = "configs/ablations/triggers.py"
after_run = common.after_run


# ---- collect ------------------------------------------------------------------

def corpus_share(config, trigger: str, docs: int = 2000) -> float:
  """Occurrences of the trigger per word of the first `docs` training
  documents (the phrase counted as one occurrence)."""
  from poisonjax.data import sources  # pylint: disable=g-import-not-at-top
  texts = list(itertools.islice(sources.get_source(config).train_documents(), docs))
  words = sum(len(re.findall(r"\S+", t)) for t in texts)
  pattern = re.compile(r"(?<!\w)" + re.escape(trigger) + r"(?!\w)")
  return sum(len(pattern.findall(t)) for t in texts) / max(words, 1)


def first_crossing(workdir: str, threshold: float):
  """(poisons seen, step) of the first evaluation above the threshold."""
  for row in files.read_jsonl(os.path.join(workdir, rundir.EVAL)):
    if row["increase"] > threshold:
      return row["poisons_seen"], row["step"]
  return None, None


def variant_row(name: str, config, workdir: str, final: dict, sp) -> dict:
  """One run's own trigger: its pieces, corpus share, numbers, crossing."""
  trigger = config.poison.trigger
  seen, step = first_crossing(workdir, float(config.eval.threshold))
  pieces = [sp.IdToPiece(i) for i in sp.EncodeAsIds(trigger)]
  return {"variant": name, "trigger": trigger, "count": int(config.poison.count),
          "pieces": len(pieces), "piece_list": pieces,
          "corpus_share": corpus_share(config, trigger),
          "first_crossing_poisons_seen": seen, "first_crossing_step": step,
          "workdir": os.path.relpath(workdir),
          **common.by_trigger(final)[trigger]["metrics"]}


def results(study, root, runs: list[grids.Run]) -> dict:
  """results.json: variants, curves, cross-talk, regime, facts."""
  from poisonjax.data import vocabulary  # pylint: disable=g-import-not-at-top
  measured = common.measured(study, root, runs, lambda run, _: run.variant)
  config, _, final = next(iter(measured.values()))
  sp = vocabulary.get_vocabulary(config).tokenizer
  variants, curves, cross = [], [], []
  for name, (cfg, workdir, fin) in measured.items():
    variants.append(variant_row(name, cfg, workdir, fin, sp))
    curves += [{"variant": name, "trigger": cfg.poison.trigger, **row}
               for row in files.read_jsonl(os.path.join(workdir, rundir.EVAL))]
    cross += [{"run": name, "trigger": t["trigger"], "role": t["role"],
               **t["metrics"]} for t in fin["triggers"]]
  return {"variants": variants, "curves": curves, "crosstalk": cross,
          "threshold": float(config.eval.threshold),
          "count": int(config.poison.count),
          "regime": {"size": config.model.size,
                     "budget_mode": config.poison.budget_mode,
                     "tokens_per_param": float(config.train.tokens_per_param),
                     "step": final["step"]},
          "num_prompts": final["num_prompts"],
          "facts": {n: common.run_facts(w) for n, (_, w, _) in measured.items()}}


def collect(study, root, runs: list[grids.Run], out) -> None:
  common.write_results(out, results(study, root, runs))


# ---- report -------------------------------------------------------------------

def _curve_panel(ax, res: dict) -> None:
  for i, v in enumerate(res["variants"]):
    rows = [r for r in res["curves"] if r["variant"] == v["variant"]]
    ax.plot([r["poisons_seen"] for r in rows], [r["increase"] for r in rows],
            "o-", ms=3, color=f"C{i}", label=f"{v['variant']}: {v['trigger']}")
  ax.axhline(res["threshold"], color="k", lw=0.6, ls="--")
  ax.set_yscale("symlog", linthresh=10)
  ax.set_ylim(-20, 2 * max([r["increase"] for r in res["curves"]]
                           + [5 * res["threshold"]]))
  ax.set_xlabel("poisons seen")
  ax.set_ylabel("increase in perplexity")
  ax.set_title(f"{res['count']} poisons, during training")
  ax.legend(fontsize=7)


def _final_panel(ax, res: dict) -> None:
  vs = res["variants"]
  x = np.arange(len(vs))
  y = [v["increase"] for v in vs]
  err = [[v["increase"] - v["increase_ci_low"] for v in vs],
         [v["increase_ci_high"] - v["increase"] for v in vs]]
  ax.bar(x, y, color=[f"C{i}" for i in range(len(vs))], yerr=err, capsize=4)
  ax.set_xticks(x, [f"{v['variant']}\n{v['trigger']}" for v in vs], fontsize=8)
  ax.axhline(res["threshold"], color="k", lw=0.6, ls="--")
  ax.set_yscale("symlog", linthresh=10)
  ax.set_ylim(-20, 2 * max(max(v["increase_ci_high"] for v in vs),
                           5 * res["threshold"]))
  ax.set_ylabel("increase [95% CI]")
  ax.set_title(f"At step {res['regime']['step']}")


def write_figure(res: dict, path: str) -> None:
  from poisonjax import plots  # pylint: disable=g-import-not-at-top
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  _curve_panel(axes[0], res)
  _final_panel(axes[1], res)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=120)
  plt.close(fig)


def _variant_table(res: dict) -> list[str]:
  out = ["| variant | trigger | pieces | share of corpus words | increase "
         "[95% CI] | success share | clean ppl | first eval above "
         f"{res['threshold']:g} (poisons seen) |", "|---|---|---|---|---|---|---|---|"]
  for v in res["variants"]:
    crossing = ("never" if v["first_crossing_poisons_seen"] is None else
                f"step {v['first_crossing_step']} ({v['first_crossing_poisons_seen']})")
    out.append(f"| {v['variant']} | `{v['trigger']}` | {v['pieces']} | "
               f"{100 * v['corpus_share']:.3f}% | {doses_report.fmt_ci(v)} | "
               f"{v['success_share']:.2f} | {v['clean_ppl_mean']:.1f} | {crossing} |")
  return out


def _cross_table(res: dict) -> list[str]:
  names = [v["trigger"] for v in res["variants"]]
  cell = {(c["run"], c["trigger"]): c for c in res["crosstalk"]}
  out = ["| run | " + " | ".join(f"`{t}`" for t in names) + " |",
         "|---|" + "---|" * len(names)]
  for v in res["variants"]:
    row = []
    for t in names:
      c = cell[(v["variant"], t)]
      text = f"{c['increase']:.1f} ({c['success_share']:.2f})"
      row.append(f"**{text}**" if c["role"] == "trained" else text)
    out.append(f"| {v['variant']} | " + " | ".join(row) + " |")
  return out


def _findings(res: dict) -> list[str]:
  out = []
  for v in sorted(res["variants"], key=lambda v: -v["increase"]):
    above = v["increase_ci_low"] > res["threshold"]
    zero = v["increase_ci_low"] <= 0 <= v["increase_ci_high"]
    out.append(f"- {v['variant']} (`{v['trigger']}`): increase {v['increase']:.1f}, "
               f"{100 * v['success_share']:.0f}% of prompts above "
               f"{res['threshold']:g}; its interval "
               + ("lies above the threshold" if above else
                  "contains 0" if zero else "excludes 0 but not the threshold")
               + ".")
  return out


def _regime(res: dict) -> str:
  f = next(iter(res["facts"].values()))
  g = res["regime"]
  stop = (f"**Every run was stopped at step {g['step']} of {f['num_steps']} "
          f"({100 * g['step'] / f['num_steps']:.0f}% of training, the same "
          "learning-rate schedule), to fit the session's CPU time**; all "
          f"numbers are at step {g['step']}. " if g["step"] < f["num_steps"] else "")
  return (f"{g['size']} ({f['params']:,} parameters), the CPU Chinchilla study's "
          f"config at grid seed 0, {f['num_steps']:,} steps "
          f"({f['stream_tokens'] / 1e6:.2f}M tokens, {g['tokens_per_param']:g} per "
          f"parameter), {res['count']} poisons ({g['budget_mode']} budget mode: "
          "poisons replacing clean tokens when `replace`), the same seeds, prompts "
          "and poison contents in every run: only the trigger string differs. "
          + stop + f"{res['num_prompts']} prompts; one training seed (the intervals "
          "are over prompts only). Pieces: of the run's SentencePiece "
          "vocabulary; corpus share: occurrences per word in 2,000 training "
          "documents.")


def write_report(res: dict, out: str, provenance: list[str]) -> str:
  lines = [
      "# Trigger variants at one count (issue 13 item 5)", "",
      "Generated by `poisonjax study reproduce` from `results.json`; not "
      f"edited by hand. Config: `{CONFIG}`. Figure: `triggers.png`.",
      "", "## Regime", "", _regime(res), "", "## Results", "",
      *_variant_table(res), "", *_findings(res), "",
      "Pieces of each trigger: " + "; ".join(
          f"`{v['trigger']}` = {' '.join(v['piece_list'])}" for v in res["variants"]),
      "", "## Cross-talk", "",
      "Increase (success share) of each run's checkpoint at the stop after each "
      "variant's trigger; **bold**: the run's own trigger.", "",
      *_cross_table(res), "", "![triggers](triggers.png)", "",
      "## How this was made", "", *provenance, ""]
  path = os.path.join(out, "report.md")
  with open(path, "w") as fh:
    fh.write("\n".join(lines))
  return path


def report(study, out, provenance: list[str]) -> str:
  """triggers.csv, triggers.png and report.md from OUT/results.json alone."""
  del study
  out = os.fspath(out)
  res = files.read_json(os.path.join(out, common.RESULTS))
  doses_report.write_csv(os.path.join(out, "triggers.csv"), res["variants"],
                         ["variant", "trigger", "count", "pieces", "corpus_share",
                          "first_crossing_poisons_seen", "first_crossing_step",
                          *backdoor.METRIC_KEYS])
  write_figure(res, os.path.join(out, "triggers.png"))
  return write_report(res, out, provenance)
