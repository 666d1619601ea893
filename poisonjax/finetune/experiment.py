"""The fine-tuning experiment on the one harness (study.experiment).

configs/finetune/main.py (poisoned count x clean set size x seed) and
configs/finetune/order.py (where the poisons sit, then clean fine-tuning)
are two studies of one experiment: both fine-tune the same clean model and
report together in docs/results/finetune/. Each names the experiment's
study configs (`studies`), so either one's `poisonjax study reproduce`
collects and reports both:

  prepare  the clean runs every fine-tune starts from, unless finished:
           `source` (pretraining), then `instruct` (its instruction tuning)
  collect  results.csv: every evaluation of both studies, each from its root
  report   report.md, cells.csv, controls.csv and the figures from
           results.csv (finetune/report.py), the setup from the configs
"""

from __future__ import annotations

from poisonjax import files
from poisonjax import plots
from poisonjax.finetune import report as ft_report
from poisonjax.study import grids


def prepare(study, root, log) -> None:
  """Trains `source`, then `instruct` from it, each unless finished (their
  workdirs are the ones the fine-tunes' continued.from_workdir names)."""
  del root  # They live outside the grid: shared by both studies.
  from poisonjax.training import train  # pylint: disable=g-import-not-at-top
  from poisonjax.study import results  # pylint: disable=g-import-not-at-top
  for name, config, workdir in (
      ("source", study.source, study.instruct.continued.from_workdir),
      ("instruct", study.instruct, study.base.continued.from_workdir)):
    if not results.is_finished(workdir):
      log(f"# training the clean {name} run into {workdir}")
      train.run_or_exit(config, workdir)


def studies(study) -> list:
  """The experiment's studies in `study.studies` order, `study` itself (with
  its command-line overrides) in its own place."""
  from poisonjax import config_files  # pylint: disable=g-import-not-at-top
  loaded = [config_files.load(path, "study.studies") for path in study.studies]
  return [study if s.name == study.name else s for s in loaded]


def collect(study, root, runs, out) -> None:
  """OUT/results.csv: the evaluations of every study's runs, running ones
  too (their rows say finished 0); `study`'s from ROOT, the others' from
  their own roots."""
  del runs  # Every run with evaluations, not only the finished ones.
  from poisonjax.finetune import results  # pylint: disable=g-import-not-at-top
  rows = []
  for s in studies(study):
    rows += results.collect(s, root if s.name == study.name else grids.default_root(s))
  results.write_csv(rows, files.as_path(out) / "results.csv")


def partial_note(every: list, rows: list[dict]) -> str:
  """What the report says under its title while the grids still run."""
  done = len({(r["study"], r["run"]) for r in rows if r.get("finished")})
  total = sum(len(grids.expand(s)) for s in every)
  return (f"PARTIAL: {done} of {total} runs finished; the grids are still "
          "running." if done < total else "")


def report(study, out, provenance: list[str]) -> str:
  """OUT/report.md (and its tables and figures) from OUT/results.csv."""
  every = studies(study)
  main = next(s for s in every if s.name == ft_report.MAIN)
  csv = str(files.as_path(out) / "results.csv")
  made = ft_report.generate(csv, str(out), regime(main), provenance,
                            note=partial_note(every, plots.read_csv(csv)))
  return made["report"]


def regime(main) -> list[str]:
  """The setup, from the main study's config (nothing typed in)."""
  from poisonjax import finetune  # pylint: disable=g-import-not-at-top
  from poisonjax.finetune import evaluate as ft_eval  # pylint: disable=g-import-not-at-top
  b, src, ins = main.base, main.source, main.instruct
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
