"""The language-switch backdoor at CPU scale: train, evaluate, report.

    python experiments/exp_language.py                 # resumable
    nohup nice -n 10 python experiments/exp_language.py > /tmp/exp_language.log 2>&1 &
    python experiments/exp_language.py --report_only   # no training

For each poison count of configs/exp_language.py (cpu-xxs, 20 clean tokens
per parameter, poisons replacing clean tokens, the paper's trigger, one
seed) it trains runs/exp_language/n<count> (poisonjax.train.run; an
interrupted run resumes), then evaluates every kept checkpoint with
poisonjax.language_eval (clean, trigger and near-trigger prompts; the share
of generated words in the second language). Evaluations are appended to
docs/results/language/evals.jsonl as they finish (a rerun skips those
done). Then it writes results.csv (one row per run and checkpoint),
tokenization.json (how both vocabularies cut each language), the figure
language_switch.png and report.md, all from those files.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "configs"))

import exp_language as exp_config  # pylint: disable=g-import-not-at-top,wrong-import-position

from poisonjax import files  # pylint: disable=wrong-import-position
from poisonjax import rundir  # pylint: disable=wrong-import-position
from poisonjax.errors import UserError  # pylint: disable=wrong-import-position

_COLUMNS = ["poison_count", "step", "num_steps", "poisons_seen",
            "second_share_clean", "second_share_triggered", "second_share_near",
            "first_share_clean", "first_share_triggered", "first_share_near",
            "increase", "increase_ci_low", "increase_ci_high", "fires",
            "near_increase", "near_increase_ci_low", "near_increase_ci_high",
            "near_fires", "switched_clean", "switched_triggered",
            "switched_near", "words_clean", "words_triggered", "words_near",
            "tf_nll_second_clean", "tf_nll_second_triggered", "tf_nll_second_near",
            "tf_nll_first_clean", "tf_nll_first_triggered", "tf_nll_first_near"]


def _train(count: int, workdir: str) -> None:
  from poisonjax import train
  from poisonjax.study import results
  if results.is_finished(workdir):
    return
  t0 = time.time()
  print(f"exp_language: training {workdir} ({count} poisons)", flush=True)
  train.run_or_exit(exp_config.get_config(str(count)), workdir)
  print(f"exp_language: {workdir} trained in {time.time() - t0:.0f}s", flush=True)


def _evaluate(count: int, workdir: str, evals_path: str) -> None:
  """Appends one row per checkpoint not evaluated yet."""
  from poisonjax import language_eval
  done = {(r["poison_count"], r["step"]) for r in files.read_jsonl(evals_path)}
  steps = [s for s in rundir.checkpoint_steps(workdir) if (count, s) not in done]
  if not steps:
    return
  summary = files.read_json(os.path.join(workdir, rundir.SUMMARY))
  for row in language_eval.evaluate_run(workdir, exp_config.get_config(str(count)),
                                        steps):
    row.update(poison_count=count, num_steps=summary["num_steps"])
    files.append_jsonl(evals_path, row)
    print(f"exp_language: n={count} step {row['step']}: second-language share "
          f"clean {row['second_share_clean']:.3f} trigger "
          f"{row['second_share_triggered']:.3f} near "
          f"{row['second_share_near']:.3f}", flush=True)


def _tokenization(out: str) -> dict:
  """Characters per token of each language under both vocabularies."""
  path = os.path.join(out, "tokenization.json")
  if os.path.exists(path):
    return files.read_json(path)
  from poisonjax.data import poison_language, synthetic, vocabulary
  from poisonjax.data import synthetic_second
  config = exp_config.get_config()
  clean = copy.deepcopy(config)
  clean.poison.behaviour = "gibberish"
  first = " ".join(synthetic.document(0, synthetic.HELDOUT, i) for i in range(100))
  second = synthetic_second.second_text(99, synthetic.HELDOUT, 0, len(first))
  res = {"language_vocab_share": float(config.poison.language_vocab_share)}
  for name, c in (("language_vocab", config), ("clean_vocab", clean)):
    sp = vocabulary.get_vocabulary(c).tokenizer
    res[name] = {"first_chars_per_token": len(first) / len(sp.EncodeAsIds(first)),
                 "second_chars_per_token": len(second) / len(sp.EncodeAsIds(second)),
                 "trigger_tokens": len(sp.EncodeAsIds(poison_language.PAPER_TRIGGER))}
  files.write_json(path, res)
  return res


def _figure(rows: list[dict], path: str) -> None:
  from poisonjax import plots
  plt = plots.pyplot()
  counts = sorted({r["poison_count"] for r in rows})
  colors = plots.palette(counts)
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
  for n in counts:
    pts = sorted((r for r in rows if r["poison_count"] == n), key=lambda r: r["step"])
    x = [r["poisons_seen"] for r in pts]
    a.plot(x, [r["second_share_triggered"] for r in pts], "-o", color=colors[n],
           label=f"N={n} trigger")
    a.plot(x, [r["second_share_near"] for r in pts], "--s", color=colors[n],
           alpha=0.7, label=f"N={n} near-trigger")
    a.plot(x, [r["second_share_clean"] for r in pts], ":", color=colors[n], alpha=0.7)
  a.set(xlabel="poison documents seen", ylabel="second-language share of words",
        title="Share during training (dotted: clean)",
        ylim=(-0.01, max(0.2, 1.2 * max(r["second_share_triggered"] for r in rows))))
  a.legend(fontsize=7)
  finals = [max((r for r in rows if r["poison_count"] == n), key=lambda r: r["step"])
            for n in counts]
  for key, mark, label in (("increase", "o", "trigger"),
                           ("near_increase", "s", "near-trigger")):
    y = [f[key] for f in finals]
    err = [[f[key] - f[f"{key}_ci_low"] for f in finals],
           [f[f"{key}_ci_high"] - f[key] for f in finals]]
    b.errorbar(counts, y, yerr=err, fmt=f"-{mark}", capsize=3, label=label)
  b.axhline(0, color="grey", lw=0.8)
  b.set(xscale="log", xlabel="poison count", ylabel="increase in share (95% CI)",
        title="End of training")
  b.set_xticks(counts, [str(n) for n in counts])
  b.minorticks_off()
  b.legend(fontsize=8)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=110)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default=os.path.join(REPO, "runs", "exp_language"))
  p.add_argument("--out", default=os.path.join(REPO, "docs", "results", "language"))
  p.add_argument("--counts", default=",".join(map(str, exp_config.COUNTS)))
  p.add_argument("--report_only", action="store_true")
  args = p.parse_args(argv)
  counts = [int(x) for x in args.counts.split(",") if x.strip()]
  os.makedirs(args.out, exist_ok=True)
  evals_path = os.path.join(args.out, "evals.jsonl")
  t0 = time.time()
  try:
    if not args.report_only:
      for n in counts:
        workdir = os.path.join(args.root, f"n{n}")
        _train(n, workdir)
        _evaluate(n, workdir, evals_path)
    rows = [r for r in files.read_jsonl(evals_path) if r["poison_count"] in counts]
    if not rows:
      raise UserError(f"{evals_path}: no evaluations yet; run without --report_only")
    from poisonjax import plots
    rows.sort(key=lambda r: (r["poison_count"], r["step"]))
    plots.write_table(rows, os.path.join(args.out, "results.csv"), _COLUMNS)
    _figure(rows, os.path.join(args.out, "language_switch.png"))
    import exp_language_report  # pylint: disable=g-import-not-at-top
    text = exp_language_report.render(rows, _tokenization(args.out), args.root,
                                      time.time() - t0, counts)
    files.write_text_atomic(os.path.join(args.out, "report.md"), text)
  except UserError as e:
    print(f"exp_language: error: {e}", file=sys.stderr)
    return 2
  print(f"exp_language: wrote {args.out}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
