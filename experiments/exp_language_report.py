"""report.md of the language-switch experiment, from its evaluation rows.

Every number and every sentence with a number is computed here from the
rows experiments/exp_language.py collected (evals.jsonl) and the runs'
summary.json; nothing is written in advance.
"""

from __future__ import annotations

import os
import platform

from poisonjax import files
from poisonjax import rundir
from poisonjax import language_eval

_SCRIPT = "experiments/exp_language.py"


def _pct(x: float) -> str:
  return f"{100 * x:.1f}%"


def _ci(r: dict, key: str) -> str:
  return (f"{100 * r[key]:+.1f} pp [{100 * r[key + '_ci_low']:+.1f}, "
          f"{100 * r[key + '_ci_high']:+.1f}]")


def _finals(rows: list[dict], counts) -> list[dict]:
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


def _runs(root: str, counts) -> list[str]:
  walls = []
  for n in counts:
    path = os.path.join(root, f"n{n}", rundir.SUMMARY)
    if os.path.exists(path):
      s = files.read_json(path)
      walls.append(f"N={n}: {s['num_steps']} steps, {s['wall_time_s'] / 60:.1f} "
                   f"min, {s['tokens_per_s']:,.0f} tok/s, held-out clean loss "
                   f"{s['heldout_clean_loss']:.3f}")
  return walls


def render(rows: list[dict], tok: dict, root: str, wall_s: float, counts) -> str:
  import exp_language as exp_config  # pylint: disable=g-import-not-at-top
  config = exp_config.get_config()
  finals = _finals(rows, counts)
  missing = [n for n in counts if n not in {r["poison_count"] for r in finals}]
  lines = ["# The language-switch backdoor at CPU scale", "",
           f"Generated by `{_SCRIPT}` from `evals.jsonl` (one row per run and "
           "checkpoint; `results.csv` is the same without the samples); do not "
           "edit by hand. Figure: `language_switch.png` (left: second-language "
           "share per checkpoint vs poisons seen, trigger solid, near-trigger "
           "dashed, clean dotted; right: final increase vs count).", ""]
  if missing:
    lines += [f"**Partial:** no evaluation yet for N={', '.join(map(str, missing))}.", ""]
  lines += _setup(config, tok, counts) + _final_table(finals)
  lines += _trajectory(rows, counts) + _samples(finals)
  lines += ["## Caveats", "",
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
            "vocabulary and 600M-13B parameters.", "",
            "## Runs", ""]
  lines += [f"- {w}" for w in _runs(root, counts)]
  lines += ["", f"Reproduce: `python {_SCRIPT}` (resumable; `--report_only` "
            f"rewrites this page). This report's invocation took "
            f"{wall_s / 60:.1f} min on {platform.machine()} "
            f"({os.cpu_count()} CPUs).", ""]
  return "\n".join(lines)
