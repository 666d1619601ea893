"""Trigger variants at one count: a rare string, a common word, a phrase.

    python experiments/exp_triggers.py                # resumable
    nohup nice -n 10 python experiments/exp_triggers.py > /tmp/exp_triggers.log 2>&1 &
    python experiments/exp_triggers.py --report_only  # from OUT/results.json

Trains the runs of --config (default configs/exp_triggers.py: cpu-xxs, 100
poisons, triggers `<SUDO>`, `the`, `quantum ferret overture`) under --root
(default runs/exp_triggers; a run named in the config's `reuse` is read
from there when finished with the same config), evaluates each final checkpoint
after all three triggers (the same 128 prompts), and writes into --out
(default docs/results/triggers/) results.json, triggers.csv, triggers.png
and report.md. Nothing in the report is written by hand.
"""

import itertools
import json
import os
import re
import shlex
import sys
import time

import numpy as np

from poisonjax import rundir

import exp_doses as common
import exp_doses_report as report

REPO = common.REPO


def corpus_share(config, trigger: str, docs: int = 2000) -> float:
  """Occurrences of the trigger per word of the first `docs` training
  documents (the phrase counted as one occurrence)."""
  from poisonjax.data import sources  # pylint: disable=g-import-not-at-top
  texts = list(itertools.islice(sources.get_source(config).train_documents(), docs))
  words = sum(len(re.findall(r"\S+", t)) for t in texts)
  pattern = re.compile(r"(?<!\w)" + re.escape(trigger) + r"(?!\w)")
  return sum(len(pattern.findall(t)) for t in texts) / max(words, 1)


def first_crossing(config, workdir: str, threshold: float):
  """(poisons seen, step) of the first evaluation above the threshold."""
  from poisonjax import files  # pylint: disable=g-import-not-at-top
  for row in files.read_jsonl(os.path.join(workdir, rundir.EVAL)):
    if row["increase"] > threshold:
      return row["poisons_seen"], row["step"]
  return None, None


def collect(exp, runs: dict, finals: dict) -> dict:
  from poisonjax.data import vocabulary  # pylint: disable=g-import-not-at-top
  from poisonjax import files  # pylint: disable=g-import-not-at-top
  threshold = float(exp.base.eval.threshold)
  sp = vocabulary.get_vocabulary(exp.base).tokenizer
  variants, curves, cross = [], [], []
  for name, (config, workdir) in runs.items():
    trigger = config.poison.trigger
    mine = common.by_trigger(finals[name])[trigger]
    seen, step = first_crossing(config, workdir, threshold)
    pieces = [sp.IdToPiece(i) for i in sp.EncodeAsIds(trigger)]
    variants.append({"variant": name, "trigger": trigger, "count": exp.count,
                     "pieces": len(pieces), "piece_list": pieces,
                     "corpus_share": corpus_share(config, trigger),
                     "first_crossing_poisons_seen": seen,
                     "first_crossing_step": step, "workdir":
                     os.path.relpath(workdir, REPO), **mine["metrics"]})
    for row in files.read_jsonl(os.path.join(workdir, rundir.EVAL)):
      curves.append({"variant": name, "trigger": trigger, **row})
    cross += [{"run": name, "trigger": t["trigger"], "role": t["role"],
               **t["metrics"]} for t in finals[name]["triggers"]]
  config = next(iter(runs.values()))[0]
  return {"variants": variants, "curves": curves, "crosstalk": cross,
          "threshold": threshold, "count": exp.count,
          "regime": {"size": config.model.size, "budget_mode": config.poison.budget_mode,
                     "tokens_per_param": float(config.train.tokens_per_param),
                     "step": finals[next(iter(finals))]["step"]},
          "num_prompts": finals[next(iter(finals))]["num_prompts"],
          "facts": {n: common.run_facts(w) for n, (_, w) in runs.items()}}


def write_figure(res: dict, path: str) -> None:
  from poisonjax import plots  # pylint: disable=g-import-not-at-top
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for i, v in enumerate(res["variants"]):
    rows = [r for r in res["curves"] if r["variant"] == v["variant"]]
    axes[0].plot([r["poisons_seen"] for r in rows], [r["increase"] for r in rows],
                 "o-", ms=3, color=f"C{i}", label=f"{v['variant']}: {v['trigger']}")
  axes[0].axhline(res["threshold"], color="k", lw=0.6, ls="--")
  axes[0].set_yscale("symlog", linthresh=10)
  axes[0].set_ylim(-20, 2 * max([r["increase"] for r in res["curves"]]
                                + [5 * res["threshold"]]))
  axes[0].set_xlabel("poisons seen")
  axes[0].set_ylabel("increase in perplexity")
  axes[0].set_title(f"{res['count']} poisons, during training")
  axes[0].legend(fontsize=7)
  vs = res["variants"]
  x = np.arange(len(vs))
  y = [v["increase"] for v in vs]
  err = [[v["increase"] - v["increase_ci_low"] for v in vs],
         [v["increase_ci_high"] - v["increase"] for v in vs]]
  axes[1].bar(x, y, color=[f"C{i}" for i in range(len(vs))], yerr=err, capsize=4)
  axes[1].set_xticks(x, [f"{v['variant']}\n{v['trigger']}" for v in vs], fontsize=8)
  axes[1].axhline(res["threshold"], color="k", lw=0.6, ls="--")
  axes[1].set_yscale("symlog", linthresh=10)
  axes[1].set_ylim(-20, 2 * max(max(v["increase_ci_high"] for v in vs),
                                5 * res["threshold"]))
  axes[1].set_ylabel("increase [95% CI]")
  axes[1].set_title(f"At step {res['regime']['step']}")
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
               f"{100 * v['corpus_share']:.3f}% | {report.fmt_ci(v)} | "
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


def write_report(res: dict, out: str, provenance: list[str]) -> None:
  f = next(iter(res["facts"].values()))
  g = res["regime"]
  stop = (f"**Every run was stopped at step {g['step']} of {f['num_steps']} "
          f"({100 * g['step'] / f['num_steps']:.0f}% of training, the same "
          "learning-rate schedule), to fit the session's CPU time**; all "
          f"numbers are at step {g['step']}. " if g["step"] < f["num_steps"] else "")
  lines = [
      "# Trigger variants at one count (issue 13 item 5)", "",
      "Generated by `experiments/exp_triggers.py` from `results.json`; not "
      "edited by hand. Config: `configs/exp_triggers.py`. Figure: `triggers.png`.",
      "", "## Regime", "",
      f"{g['size']} ({f['params']:,} parameters), the CPU Chinchilla study's "
      f"config at grid seed 0, {f['num_steps']:,} steps "
      f"({f['stream_tokens'] / 1e6:.2f}M tokens, {g['tokens_per_param']:g} per "
      f"parameter), {res['count']} poisons ({g['budget_mode']} budget mode: "
      "poisons replacing clean tokens when `replace`), the same seeds, prompts "
      "and poison contents in every run: only the trigger string differs. "
      + stop + f"{res['num_prompts']} prompts; one training seed (the intervals "
      "are over prompts only). Pieces: of the run's SentencePiece "
      "vocabulary; corpus share: occurrences per word in 2,000 training "
      "documents.", "", "## Results", "", *_variant_table(res), "",
      *_findings(res), "",
      "Pieces of each trigger: " + "; ".join(
          f"`{v['trigger']}` = {' '.join(v['piece_list'])}" for v in res["variants"]),
      "", "## Cross-talk", "",
      "Increase (success share) of each run's checkpoint at the stop after each "
      "variant's trigger; **bold**: the run's own trigger.", "",
      *_cross_table(res), "", "![triggers](triggers.png)", "",
      "## How this was made", "", *provenance, ""]
  with open(os.path.join(out, "report.md"), "w") as fh:
    fh.write("\n".join(lines))


def write_outputs(res: dict, out: str, provenance: list[str]) -> None:
  from poisonjax import backdoor  # pylint: disable=g-import-not-at-top
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.json"), "w") as fh:
    json.dump({**res, "provenance": provenance}, fh, indent=1)
  report.write_csv(os.path.join(out, "triggers.csv"), res["variants"],
                   ["variant", "trigger", "count", "pieces", "corpus_share",
                    "first_crossing_poisons_seen", "first_crossing_step",
                    *backdoor.METRIC_KEYS])
  write_figure(res, os.path.join(out, "triggers.png"))
  write_report(res, out, provenance)
  print(f"wrote {out}/report.md, results.json, triggers.csv and triggers.png",
        flush=True)


def main(argv) -> int:
  args = common.parse(argv, __doc__, os.path.join(REPO, "configs", "exp_triggers.py"),
                      os.path.join(REPO, "runs", "exp_triggers"),
                      os.path.join(REPO, "docs", "results", "triggers"))
  command = "python " + " ".join(shlex.quote(a) for a in
                                 ["experiments/exp_triggers.py"] + list(argv))
  if args.report_only:
    with open(os.path.join(args.out, "results.json")) as fh:
      res = json.load(fh)
    write_outputs(res, args.out, res.pop("provenance"))
    return 0
  t0 = time.time()
  exp = common.load_config(args.config)
  runs = common.train_runs(exp, args.root, args.only, args.max_steps)
  if args.train_only:
    return 0
  names = [f.trigger for f in exp.runs.values()]
  finals = common.evaluate_runs(runs, names, exp.name)
  res = collect(exp, runs, finals)
  write_outputs(res, args.out, common.provenance_lines(command, res, t0))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
