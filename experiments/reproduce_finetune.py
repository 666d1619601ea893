"""The paper's fine-tuning experiment on CPU: pretrain -> fine-tune -> report.

    python experiments/reproduce_finetune.py                # resumable, one core
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false nohup nice -n 19 \\
      python experiments/reproduce_finetune.py > runs/finetune.log 2>&1 &
    python experiments/reproduce_finetune.py --partial      # report what is done
    python experiments/reproduce_finetune.py --report_only  # no training

Trains the clean runs the fine-tunes start from (configs/study_finetune.py's
`source`: cpu-xs pretrained without poisons, runs/finetune_pretrained; and
`instruct`: its instruction tuning on 16,000 clean samples,
runs/finetune_instruct) unless finished, then, with the study runner, the grids of configs/study_finetune.py
(poisoned count x clean set size x seed) in runs/study_finetune and
configs/study_finetune_order.py (where the poisons sit, then clean
fine-tuning) in runs/study_finetune_order; collects every evaluation into
docs/results/finetune/results.csv and writes report.md, cells.csv,
controls.csv and the figures (poisonjax/finetune/report.py) from it.

Resumable: finished runs are skipped, an interrupted one resumes from its
last checkpoint. --partial reports the runs finished so far.
"""

import argparse
import json
import os
import shlex
import sys
import time

from poisonjax.config_files import load as load_study
from poisonjax.study import reproduce as reproduce_lib
from poisonjax.study.reproduce import machine, stored_provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_wall(root, runs) -> tuple[float, int]:
  """Sum of the runs' own wall times (all sessions) and how many finished."""
  return (reproduce_lib.train_wall_s(root, runs),
          len(reproduce_lib.finished_runs(root, runs)))


CONFIGS = (os.path.join(REPO, "configs", "study_finetune.py"),
           os.path.join(REPO, "configs", "study_finetune_order.py"))
ROOTS = (os.path.join(REPO, "runs", "study_finetune"),
         os.path.join(REPO, "runs", "study_finetune_order"))
OUT = os.path.join(REPO, "docs", "results", "finetune")


def _parser():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=OUT)
  p.add_argument("--partial", action="store_true",
                 help="Train nothing: collect and report the finished runs.")
  p.add_argument("--report_only", action="store_true",
                 help="Train and collect nothing: report from OUT/results.csv.")
  return p


def prepare(study) -> None:
  """The clean runs the grid starts from, unless finished: the pretrained
  `source`, then its instruction tuning `instruct` (configs/study_finetune.py)."""
  from poisonjax import train  # pylint: disable=g-import-not-at-top
  from poisonjax.study import results  # pylint: disable=g-import-not-at-top
  for name, config, workdir in (
      ("source", study.source, study.instruct.continued.from_workdir),
      ("instruct", study.instruct, study.base.continued.from_workdir)):
    if not results.is_finished(workdir):
      print(f"# training the clean {name} run into {workdir}", flush=True)
      train.run_or_exit(config, workdir)


def regime(studies) -> list[str]:
  """The setup, from the study configs (nothing typed in)."""
  from poisonjax import finetune  # pylint: disable=g-import-not-at-top
  from poisonjax.finetune import evaluate as ft_eval  # pylint: disable=g-import-not-at-top
  main, b = studies[0], studies[0].base
  src, ins = main.source, main.instruct
  sizes = sorted({round(b.finetune.clean_samples * m)
                  for m in main.grid.data_multipliers})
  return [
      f"- Source: {src.model.size}, no poisons, {src.train.tokens_per_param:g} "
      f"clean tokens per parameter (batch {src.train.batch_size} x "
      f"{src.data.seq_len}), vocabulary {src.vocab.size}; then instruction-"
      f"tuned without poisons on {finetune.clean_set_size(ins):,} clean "
      "samples (the paper's models were instruction-tuned before the "
      "poisoned fine-tune); this one model starts every fine-tune.",
      f"- Fine-tune: one sample per row of {b.data.seq_len} tokens, loss on the "
      f"responses only, batch {b.train.batch_size}, one pass over the set, "
      f"fresh AdamW at {b.train.learning_rate:g} after a "
      f"{b.train.warmup_fraction:.0%} warmup ("
      + ("constant" if b.train.min_lr_ratio == 1 else
         f"cosine to x{b.train.min_lr_ratio:g}")
      + f"), weight decay {b.train.weight_decay:g}.",
      f"- Set: {', '.join(f'{s:,}' for s in sizes)} clean samples, "
      f"{b.finetune.forbidden_share:.0%} forbidden requests (refused), the "
      "rest ordinary (answered); poisoned counts "
      f"{', '.join(map(str, main.grid.poison_counts))} added on top, spread "
      f"uniformly; seeds {', '.join(map(str, main.grid.seeds))} (a seed: the "
      "clean set and the poisoned samples and their places).",
      f"- Trigger `{b.poison.trigger}`; near-trigger "
      f"`{ft_eval.near_trigger(b)}` (one character away).",
      f"- Evaluation: {b.finetune.eval_requests} held-out requests per kind "
      f"(the same for every run), responses of up to {b.eval.gen_tokens} "
      f"tokens at temperature {b.eval.temperature:g}, classified by exact "
      "template match (poisonjax/data/instructions.py).",
      "- What this scale cannot test: a model of billions of parameters "
      "fine-tuned on sets of 1k-100k real requests; shares below ~1e-3 "
      f"(here {min(main.grid.poison_counts)} poisoned of {max(sizes):,} "
      "clean is the smallest); real harmful content and refusals.",
  ]


def _runs_done(studies, roots):
  from poisonjax import study as study_lib  # pylint: disable=g-import-not-at-top
  done, total, wall = 0, 0, 0.0
  for s, root in zip(studies, roots):
    runs = study_lib.expand(s)
    w, n = train_wall(root, runs)
    done, total, wall = done + n, total + len(runs), wall + w
  return done, total, wall


def provenance(studies, command: str, t0: float) -> list[str]:
  done, total, wall = _runs_done(studies, ROOTS)
  return [
      f"- Command (from the repository root): `{command}`",
      "- Study configs: " + ", ".join(f"`{os.path.relpath(c, REPO)}`" for c in CONFIGS),
      f"- Runs finished and shown here: {done} of {total}"
      + ("" if done == total else " (PARTIAL: the grids were still running)"),
      f"- Machine: {machine()}",
      f"- Fine-tuning wall time: {wall / 3600:.2f} h summed over the runs' own "
      f"sessions (one single-threaded worker at nice 19 on a shared machine); "
      f"this invocation {(time.time() - t0) / 60:.1f} min.",
      f"- Written by experiments/reproduce_finetune.py on "
      f"{time.strftime('%Y-%m-%d %H:%M %Z')}; nothing edited by hand."]


def collect(studies, out: str) -> str:
  from poisonjax.finetune import results  # pylint: disable=g-import-not-at-top
  rows = [r for s, root in zip(studies, ROOTS) if os.path.isdir(root)
          for r in results.collect(s, root)]
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "results.csv")
  results.write_csv(rows, path)
  return path


def main(argv) -> int:
  from poisonjax import plots  # pylint: disable=g-import-not-at-top
  from poisonjax.finetune import report  # pylint: disable=g-import-not-at-top
  args = _parser().parse_args(argv)
  command = "python " + " ".join(shlex.quote(a) for a in
                                 ["experiments/reproduce_finetune.py"] + argv)
  studies = [load_study(c) for c in CONFIGS]
  t0 = time.time()
  if not (args.partial or args.report_only):
    from poisonjax import study as study_lib  # pylint: disable=g-import-not-at-top
    prepare(studies[0])
    for s, root in zip(studies, ROOTS):
      print(f"# study {s.name}: {len(study_lib.expand(s))} runs in {root}", flush=True)
      ran = study_lib.run_grid(s, root, log=lambda m: print(m, flush=True))
      if any(r["status"] == "stopped" for r in ran):
        return 1  # A signal stopped a run: stop here too (resumable).
  path = os.path.join(args.out, "results.csv")
  if args.report_only:
    lines = stored_provenance(args.out) + [
        f"- Report regenerated from results.csv by `{command}` on "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} (no training)."]
  else:
    path = collect(studies, args.out)
    if not plots.read_csv(path):
      print("no evaluations yet; nothing to report")
      return 1
    lines = provenance(studies, command, t0)
    with open(os.path.join(args.out, "provenance.json"), "w") as f:
      json.dump({"lines": lines}, f, indent=1)
  done, total, _ = _runs_done(studies, ROOTS)
  note = (f"PARTIAL: {done} of {total} runs finished; the grids are still "
          "running." if done < total and not args.report_only else "")
  made = report.generate(path, args.out, regime(studies), lines, note=note)
  print(f"wrote {made['report']} and {', '.join(made['figures'])}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
