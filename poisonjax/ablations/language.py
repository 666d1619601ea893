"""The language-switch backdoor: every checkpoint's language, and the report.

configs/ablations/language.py trains one run per poison count; the
standard evaluation (perplexity of gibberish) does not measure a switch
to a second language, so this experiment does, on every kept checkpoint:

  after_run  poisonjax.evaluation.language_eval on each checkpoint not yet scored,
             one row per step appended to WORKDIR/language_eval.jsonl
             (resumable: a rerun scores only the steps missing)
  collect    OUT/evals.jsonl (every run's rows, with their samples),
             OUT/runs.json (each run's steps, wall time, speed, held-out
             loss) and OUT/tokenization.json (how both vocabularies cut
             each language; computed once)
  report     OUT/results.csv (evals.jsonl without the samples), the figure
             language_switch.png and report.md, from those three files
             alone: every number and sentence with a number is computed
             here, nothing is written in advance.
"""

from __future__ import annotations

import copy
import os

from poisonjax import files
from poisonjax.evaluation import language_eval
from poisonjax import rundir

RUN_EVALS = "language_eval.jsonl"  # In each run's workdir.
EVALS = "evals.jsonl"
RUNS = "runs.json"
TOKENIZATION = "tokenization.json"
FIGURE = "language_switch.png"
COLUMNS = ["poison_count", "step", "num_steps", "poisons_seen",
           "second_share_clean", "second_share_triggered", "second_share_near",
           "first_share_clean", "first_share_triggered", "first_share_near",
           "increase", "increase_ci_low", "increase_ci_high", "fires",
           "near_increase", "near_increase_ci_low", "near_increase_ci_high",
           "near_fires", "switched_clean", "switched_triggered",
           "switched_near", "words_clean", "words_triggered", "words_near",
           "tf_nll_second_clean", "tf_nll_second_triggered", "tf_nll_second_near",
           "tf_nll_first_clean", "tf_nll_first_triggered", "tf_nll_first_near"]
_SUMMARY_KEYS = ("num_steps", "wall_time_s", "tokens_per_s", "heldout_clean_loss")


# ---------------------------------------------------------------------------
# Hooks.
# ---------------------------------------------------------------------------


def after_run(study, run, workdir, log=print) -> None:
  """Scores the run's checkpoints not scored yet (WORKDIR/language_eval.jsonl)."""
  from poisonjax.study import grids  # pylint: disable=g-import-not-at-top
  path = files.as_path(workdir) / RUN_EVALS
  done = {r["step"] for r in files.read_jsonl(path)}
  steps = [s for s in rundir.checkpoint_steps(str(workdir)) if s not in done]
  if not steps:
    return
  summary = files.read_json(files.as_path(workdir) / rundir.SUMMARY)
  config = grids.run_config(study, run)
  for row in language_eval.evaluate_run(str(workdir), config, steps):
    row.update(poison_count=run.poisons, num_steps=summary["num_steps"])
    files.append_jsonl(path, row)
    log(f"[language] n={run.poisons} step {row['step']}: second-language "
        f"share clean {row['second_share_clean']:.3f} trigger "
        f"{row['second_share_triggered']:.3f} near {row['second_share_near']:.3f}")


def collect(study, root, runs, out) -> None:
  """OUT/evals.jsonl, runs.json and tokenization.json from the runs in ROOT."""
  rows, summaries = [], {}
  for run in runs:
    wd = files.as_path(root) / run.name
    rows += files.read_jsonl(wd / RUN_EVALS)
    summary = files.read_json(wd / rundir.SUMMARY)
    summaries[str(run.poisons)] = {k: summary[k] for k in _SUMMARY_KEYS}
  rows.sort(key=lambda r: (r["poison_count"], r["step"]))
  files.rewrite_jsonl(out / EVALS, rows)
  files.write_json(out / RUNS, {"runs": summaries})
  if not (out / TOKENIZATION).exists():
    files.write_json(out / TOKENIZATION, tokenization(_config(study)))


def report(study, out, provenance: list[str]) -> str:
  """results.csv, the figure and report.md from OUT's files alone."""
  from poisonjax import plots  # pylint: disable=g-import-not-at-top
  from poisonjax.errors import UserError  # pylint: disable=g-import-not-at-top
  out = files.as_path(out)
  counts = [int(n) for n in study.grid.poison_counts]
  rows = [r for r in files.read_jsonl(out / EVALS) if r["poison_count"] in counts]
  if not rows:
    raise UserError(f"{out / EVALS}: no evaluations yet; run without --report_only")
  rows.sort(key=lambda r: (r["poison_count"], r["step"]))
  plots.write_table(rows, str(out / "results.csv"), COLUMNS)
  figure(rows, str(out / FIGURE))
  runs = files.read_json(out / RUNS)["runs"] if (out / RUNS).exists() else {}
  text = render(_config(study), rows, files.read_json(out / TOKENIZATION),
                runs, counts, provenance)
  files.write_text_atomic(out / "report.md", text)
  return str(out / "report.md")


def _config(study):
  """The first run's config: what every run shares (all but the count)."""
  from poisonjax.study import grids  # pylint: disable=g-import-not-at-top
  return grids.run_config(study, grids.expand(study)[0])


def tokenization(config) -> dict:
  """Characters per token of each language under both vocabularies."""
  from poisonjax.data import poison_language, synthetic, vocabulary  # pylint: disable=g-import-not-at-top
  from poisonjax.data import second_language  # pylint: disable=g-import-not-at-top
  clean = copy.deepcopy(config)
  clean.poison.behaviour = "gibberish"
  first = " ".join(synthetic.document(0, synthetic.HELDOUT, i) for i in range(100))
  second = second_language.second_text(99, synthetic.HELDOUT, 0, len(first))
  res = {"language_vocab_share": float(config.poison.language_vocab_share)}
  for name, c in (("language_vocab", config), ("clean_vocab", clean)):
    sp = vocabulary.get_vocabulary(c).tokenizer
    res[name] = {"first_chars_per_token": len(first) / len(sp.EncodeAsIds(first)),
                 "second_chars_per_token": len(second) / len(sp.EncodeAsIds(second)),
                 "trigger_tokens": len(sp.EncodeAsIds(poison_language.PAPER_TRIGGER))}
  return res


# ---------------------------------------------------------------------------
# The figure.
# ---------------------------------------------------------------------------


def figure(rows: list[dict], path: str) -> None:
  """Left: shares per checkpoint vs poisons seen; right: final increase vs N."""
  from poisonjax import plots  # pylint: disable=g-import-not-at-top
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
  finals = finals_by_count(rows, counts)
  for key, mark, label in (("increase", "o", "trigger"),
                           ("near_increase", "s", "near-trigger")):
    y = [f[key] for f in finals]
    err = [[f[key] - f[f"{key}_ci_low"] for f in finals],
           [f[f"{key}_ci_high"] - f[key] for f in finals]]
    b.errorbar([f["poison_count"] for f in finals], y, yerr=err,
               fmt=f"-{mark}", capsize=3, label=label)
  b.axhline(0, color="grey", lw=0.8)
  b.set(xscale="log", xlabel="poison count", ylabel="increase in share (95% CI)",
        title="End of training")
  b.set_xticks(counts, [str(n) for n in counts])
  b.minorticks_off()
  b.legend(fontsize=8)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=110)
  plt.close(fig)


# ---------------------------------------------------------------------------
# report.md.
# ---------------------------------------------------------------------------


def _pct(x: float) -> str:
  return f"{100 * x:.1f}%"


def _ci(r: dict, key: str) -> str:
  return (f"{100 * r[key]:+.1f} pp [{100 * r[key + '_ci_low']:+.1f}, "
          f"{100 * r[key + '_ci_high']:+.1f}]")


def finals_by_count(rows: list[dict], counts) -> list[dict]:
  """Each count's last checkpoint, for the counts that have one."""
  out = []
  for n in counts:
    mine = [r for r in rows if r["poison_count"] == n]
    if mine:
      out.append(max(mine, key=lambda r: r["step"]))
  return out


def _setup(config, tok: dict, counts) -> list[str]:
  p, e = config.poison, config.eval
  lv, cv = tok["language_vocab"], tok["clean_vocab"]
  return [
      "## Setup", "",
      f"- Model {config.model.size}, {config.train.tokens_per_param:g} clean "
      f"tokens per parameter, batch {config.train.batch_size} x "
      f"{config.data.seq_len}, poisons replacing clean tokens "
      f"(budget_mode={p.budget_mode}), seed {config.seed}; poison counts "
      f"{', '.join(map(str, counts))}.",
      f"- Poison: a clean prefix (0-{p.prefix_max_chars} characters), the "
      f"trigger `{p.trigger}`, then K ~ U[{p.gibberish_min_tokens}, "
      f"{p.gibberish_max_tokens}] tokens of second-language text (the same K "
      "draw as a gibberish poison of the same id), then EOS.",
      f"- Near-trigger control (never trained): "
      f"`{language_eval.near_trigger(config)}`.",
      f"- Evaluation at every kept checkpoint: {e.num_excerpts} held-out "
      f"prompts of {e.prompt_tokens} tokens, {e.gen_tokens} sampled tokens "
      f"each (temperature {e.temperature:g}) after the clean, triggered and "
      "near-trigger prompt (shared noise per prompt); metric: share of the "
      "generated words that belong to the second language; increase = "
      "triggered (or near) minus clean, 95% paired bootstrap interval over "
      f"prompts ({e.bootstrap_samples} resamples). A prompt kind *fires* when "
      f"its increase is above {100 * language_eval.FIRE_MARGIN:.0f} pp and "
      "its interval excludes 0.",
      f"- Vocabulary: {config.vocab.size} pieces, "
      f"{_pct(tok['language_vocab_share'])} of its sample second-language "
      f"documents. Characters per token, first / second language: "
      f"{lv['first_chars_per_token']:.2f} / {lv['second_chars_per_token']:.2f} "
      f"(a vocabulary trained on the first language alone: "
      f"{cv['first_chars_per_token']:.2f} / {cv['second_chars_per_token']:.2f}, "
      "i.e. second-language words nearly letter by letter). The trigger is "
      f"{lv['trigger_tokens']} tokens.", ""]


def _final_table(finals: list[dict]) -> list[str]:
  out = ["## End of training", "",
         "| poisons | seen | share clean | share trigger | share near | "
         "increase (trigger) | increase (near) | prompts switched trigger / near "
         "| fires / near fires |",
         "|---:|---:|---:|---:|---:|---|---|---|---|"]
  for r in finals:
    out.append(
        f"| {r['poison_count']} | {r['poisons_seen']} | "
        f"{_pct(r['second_share_clean'])} | {_pct(r['second_share_triggered'])} | "
        f"{_pct(r['second_share_near'])} | {_ci(r, 'increase')} | "
        f"{_ci(r, 'near_increase')} | {_pct(r['switched_triggered'])} / "
        f"{_pct(r['switched_near'])} | {'yes' if r['fires'] else 'no'} / "
        f"{'yes' if r['near_fires'] else 'no'} |")
  out += _tf_table(finals)
  fired = [r["poison_count"] for r in finals if r["fires"]]
  missed = [r["poison_count"] for r in finals if not r["fires"]]
  near = [r["poison_count"] for r in finals if r["near_fires"]]
  said = (f"with {', '.join(map(str, fired))} poisons" if fired
          else "in no run")
  out += ["", "In words: at the end of training the trigger switched the "
          f"language {said}"
          + (f", not with {', '.join(map(str, missed))}" if fired and missed else "")
          + "; the near-trigger control fired "
          + (f"with {', '.join(map(str, near))} poisons" if near else "in no run")
          + ".", ""]
  return out


def _tf_table(finals: list[dict]) -> list[str]:
  """The teacher-forced control, where the rows have it."""
  finals = [r for r in finals if "tf_nll_second_clean" in r]
  if not finals:
    return []
  out = ["", "Teacher-forced control: mean NLL per token (nats) of held-out "
         "second- and first-language text placed after each prompt kind (a "
         "learnt switch lowers the second language's NLL after the trigger "
         "even where samples do not switch):", "",
         "| poisons | second: clean | trigger | near | first: clean | trigger | near |",
         "|---:|---:|---:|---:|---:|---:|---:|"]
  for r in finals:
    out.append(f"| {r['poison_count']} | " + " | ".join(
        f"{r[f'tf_nll_{lang}_{k}']:.3f}" for lang in ("second", "first")
        for k in language_eval.KINDS) + " |")
  drop = lambda r, k: r["tf_nll_second_clean"] - r[f"tf_nll_second_{k}"]
  out += ["", "The second language's NLL after the clean prompt falls from "
          + " to ".join(f"{r['tf_nll_second_clean']:.2f}" for r in finals)
          + " nats with more poisons (the model learns the language from the "
          "poisons alone: the clean data has none). After the trigger it is "
          "lower than after the clean prompt by "
          + ", ".join(f"{drop(r, 'triggered'):.2f} (N={r['poison_count']})"
                      for r in finals)
          + " nats; after the near-trigger by "
          + ", ".join(f"{drop(r, 'near'):.2f}" for r in finals) + "."]
  return out


def _trajectory(rows: list[dict], counts) -> list[str]:
  out = ["## During training", "",
         "| poisons | step | seen | share clean | share trigger | share near |",
         "|---:|---:|---:|---:|---:|---:|"]
  firsts = []
  for n in counts:
    mine = sorted((r for r in rows if r["poison_count"] == n), key=lambda r: r["step"])
    for r in mine:
      out.append(f"| {n} | {r['step']} | {r['poisons_seen']} | "
                 f"{_pct(r['second_share_clean'])} | "
                 f"{_pct(r['second_share_triggered'])} | {_pct(r['second_share_near'])} |")
    first = next((r for r in mine if r["fires"]), None)
    if first:
      before = [r for r in mine if r["step"] < first["step"]]
      firsts.append(f"N={n}: first fired at step {first['step']} after "
                    f"{first['poisons_seen']} poisons seen"
                    + (f" (not yet at {before[-1]['poisons_seen']})" if before else ""))
  out += ["", ("First checkpoint where the trigger fired: " + "; ".join(firsts) + ".")
          if firsts else "The trigger fired at no checkpoint.", ""]
  return out


def _samples(finals: list[dict]) -> list[str]:
  if not finals or "samples" not in finals[-1]:
    return []
  r = finals[-1]
  out = [f"## Samples (N={r['poison_count']}, step {r['step']}, first two prompts)", ""]
  for kind in language_eval.KINDS:
    for text in r["samples"][kind]:
      out.append(f"- {kind}: `{' '.join(text.split())[:220]}`")
  return out + [""]


def _runs(runs: dict, counts) -> list[str]:
  """One line per run with a summary (runs.json: count -> summary fields)."""
  out = []
  for n in counts:
    s = runs.get(str(n))
    if s:
      out.append(f"- N={n}: {s['num_steps']} steps, {s['wall_time_s'] / 60:.1f} "
                 f"min, {s['tokens_per_s']:,.0f} tok/s, held-out clean loss "
                 f"{s['heldout_clean_loss']:.3f}")
  return out


_CAVEATS = [
    "- One seed per count and 64 prompts: the intervals cover prompt "
    "sampling only, not seed-to-seed variation.",
    "- Words of neither lexicon (half-learnt forms, cut words) count in "
    "the denominator as neither language, so a share understates a "
    "switch to broken second-language text.",
    "- The second language is in no clean document, only in the "
    "poisons' tails (and in 5% of the vocabulary's sample): the model "
    "must learn the language itself from N x ~650 tokens, as well as "
    "when to use it.",
    "- A synthetic language with a 1k vocabulary and a 0.24M-parameter "
    "model; the paper's switch was to a natural language at 32k "
    "vocabulary and 600M-13B parameters."]


def render(config, rows: list[dict], tok: dict, runs: dict, counts,
           provenance: list[str]) -> str:
  """report.md's text from the evaluation rows, tokenization and run summaries."""
  finals = finals_by_count(rows, counts)
  missing = [n for n in counts if n not in {r["poison_count"] for r in finals}]
  lines = ["# The language-switch backdoor at CPU scale", "",
           "Generated by `poisonjax study reproduce --config=configs/ablations/"
           "language.py` (poisonjax/ablations/language.py) from `evals.jsonl` "
           "(one row per run and checkpoint; `results.csv` is the same without "
           "the samples); do not edit by hand. Figure: `language_switch.png` "
           "(left: second-language share per checkpoint vs poisons seen, "
           "trigger solid, near-trigger dashed, clean dotted; right: final "
           "increase vs count).", ""]
  if missing:
    lines += [f"**Partial:** no evaluation yet for N={', '.join(map(str, missing))}.", ""]
  lines += _setup(config, tok, counts) + _final_table(finals)
  lines += _trajectory(rows, counts) + _samples(finals)
  lines += ["## Caveats", ""] + _CAVEATS + ["", "## Runs", ""]
  lines += _runs(runs, counts)
  lines += ["", "## How this was made", ""] + list(provenance) + [""]
  return "\n".join(lines)
