"""The many-doses experiment's outputs: the CSVs, doses.png and report.md.

Everything here is computed from the results dict that doses.collect keeps
in OUT/results.json, so `poisonjax study reproduce
--config=configs/ablations/doses.py --report_only` redraws it without runs
or JAX. triggers.py shares write_csv and fmt_ci.
"""

from __future__ import annotations

import csv
import io
import json
import os

CONFIG = "configs/ablations/doses.py"


def write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
  w.writeheader()
  w.writerows(rows)
  with open(path, "w") as f:
    f.write(buf.getvalue())


def short(trigger: str) -> str:
  """A trigger's label in the figure: its first word (names are long)."""
  words = trigger.split()
  return words[0] + ("..." if len(words) > 1 else "")


def fmt_ci(m: dict, key="increase", lo="increase_ci_low", hi="increase_ci_high") -> str:
  return f"{m[key]:.1f} [{m[lo]:.1f}, {m[hi]:.1f}]"


def _final_panel(ax, res: dict) -> None:
  dose = res["dose_response"]
  x = [d["count"] for d in dose]
  y = [d["increase"] for d in dose]
  err = [[d["increase"] - d["increase_ci_low"] for d in dose],
         [d["increase_ci_high"] - d["increase"] for d in dose]]
  ax.errorbar(x, y, yerr=err, fmt="o-", color="C0", capsize=3,
              label="one run, 5 triggers")
  for i, d in enumerate(dose):
    ax.annotate(short(d["trigger"]), (x[i], y[i]), textcoords="offset points",
                xytext=(4, -12), fontsize=7)
  for v in res["validation"]:
    single = next(c for c in res["crosstalk"] if c["run"] == f"single_{v['count']}"
                  and c["trigger"] == v["trigger"])
    ax.errorbar([v["count"] * 1.08], [single["increase"]],
                yerr=[[single["increase"] - single["increase_ci_low"]],
                      [single["increase_ci_high"] - single["increase"]]],
                fmt="s", color="C3", capsize=3,
                label="alone (this experiment)" if v is res["validation"][0] else None)
  pilot = {n: r["at_step"] for n, r in res["pilot"].items() if r["at_step"]}
  if pilot:
    ax.plot([int(n) * 0.93 for n in pilot], [r["increase"] for r in pilot.values()],
            "^", mfc="none", color="C2",
            label=f"alone, <SUDO> (pilot at step {res['regime']['step']}, 64 prompts)")
  ctrl = next((c for c in res["crosstalk"] if c["run"] == "doses"
               and c["trigger"] == res["control"]), None)
  if ctrl:
    ax.axhline(ctrl["increase"], color="gray", ls=":",
               label=f"control {short(res['control'])} (never poisoned)")
  ax.axhline(res["threshold"], color="k", lw=0.6, ls="--", label="threshold")
  ax.set_xscale("log")
  ax.set_yscale("symlog", linthresh=10)
  top = max(c["increase_ci_high"] for c in res["crosstalk"])
  ax.set_ylim(-20, max(2 * top, 10 * res["threshold"]))
  ax.set_xlabel("poisons of the trigger")
  ax.set_ylabel(f"increase in perplexity at step {res['regime']['step']}")
  ax.set_title(f"Dose-response at step {res['regime']['step']}")
  ax.legend(fontsize=7)


def _curve_panel(ax, res: dict) -> None:
  for i, t in enumerate(res["triggers"] + [res["control"]]):
    rows = [r for r in res["curves"] if r["trigger"] == t]
    if not rows:
      continue
    n = res["counts"][i] if i < len(res["counts"]) else 0
    label = f"{short(t)} ({n})" if n else f"{short(t)} (control)"
    ax.plot([r["fraction"] for r in rows], [r["increase"] for r in rows],
            "o-", ms=3, color=f"C{i}" if n else "gray", label=label)
  ax.axhline(res["threshold"], color="k", lw=0.6, ls="--")
  ax.set_yscale("symlog", linthresh=10)
  ax.set_xlabel("fraction of training")
  ax.set_ylabel("increase in perplexity")
  ax.set_title("The one run, per trigger, during training")
  ax.legend(fontsize=7)


def write_figure(res: dict, path: str) -> None:
  from poisonjax import plots  # pylint: disable=g-import-not-at-top
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  _final_panel(axes[0], res)
  _curve_panel(axes[1], res)
  fig.tight_layout()
  plots.save_png(fig, path, dpi=120)
  plt.close(fig)


def _regime(res: dict) -> list[str]:
  f, g = res["facts"], res["regime"]
  d = f["doses"]
  share = d["poison_tokens"] / d["stream_tokens"]
  stop = g["step"]
  lines = [
      f"{g['size']} ({d['params']:,} parameters), the CPU Chinchilla study's "
      "config at grid seed 0 (its vocabulary, prompts and derived seeds), "
      f"{d['num_steps']:,} steps of {g['batch']} x {g['seq_len']} tokens "
      f"({d['stream_tokens'] / 1e6:.2f}M tokens, {g['tokens_per_param']:g} per "
      f"parameter); poisons {g['budget_mode'].upper()} clean tokens"
      + (" (so every run has the same steps and schedule)"
         if g["budget_mode"] == "replace" else "") + ". "
      + (f"**Every run was stopped at step {stop} of {d['num_steps']} "
         f"({100 * stop / d['num_steps']:.0f}% of training, the same "
         "learning-rate schedule), to fit the session's CPU time**; all numbers "
         f"are at step {stop}. " if stop < d["num_steps"] else "")
      + "One seed: the intervals below come from the "
      f"{res['num_prompts']} prompts (prompt and sampling noise), not from "
      "training seeds.", "",
      f"The many-dose run has {d['poisons']} poisons ({d['poison_tokens']:,} "
      f"tokens, {100 * share:.1f}% of its {d['stream_tokens'] / 1e6:.2f}M "
      f"tokens; {d['clean_tokens'] / 1e6:.2f}M clean), {d['poison_tokens'] / d['poisons']:.0f} "
      "tokens per poison. That is far more poison than any one dose sees alone:"]
  for name, x in f.items():
    if name != "doses":
      lines.append(f"- {name}: {x['poisons']} poisons, {x['poison_tokens']:,} "
                   f"tokens ({100 * x['poison_tokens'] / x['stream_tokens']:.2f}%)")
  lines.append("- held-out clean loss (nats) at the stop: " + ", ".join(
      f"{k} {v['heldout_clean_loss']:.4f}" for k, v in f.items()))
  return lines


def _poisons_seen(res: dict, trigger: str) -> str:
  rows = [r for r in res["curves"] if r["trigger"] == trigger
          and r["step"] == res["regime"]["step"]]
  return str(rows[0]["trigger_poisons_seen"]) if rows else "-"


def _dose_table(res: dict) -> list[str]:
  pilot = res["pilot"]
  out = ["| trigger | poisons (seen by the step) | increase [95% CI] | success "
         "share | triggered ppl | alone, `<SUDO>` (pilot, same step) |",
         "|---|---|---|---|---|---|"]
  for d in res["dose_response"]:
    p = (pilot.get(str(d["count"])) or {}).get("at_step")
    out.append(f"| `{d['trigger']}` | {d['count']} ({_poisons_seen(res, d['trigger'])}) "
               f"| {fmt_ci(d)} | {d['success_share']:.2f} | "
               f"{d['triggered_ppl_mean']:.1f} | "
               + (f"{fmt_ci(p)} ({p['success_share']:.2f})" if p else "-") + " |")
  ctrl = next(c for c in res["crosstalk"] if c["run"] == "doses"
              and c["trigger"] == res["control"])
  out.append(f"| `{res['control']}` (control) | 0 | {fmt_ci(ctrl)} | "
             f"{ctrl['success_share']:.2f} | {ctrl['triggered_ppl_mean']:.1f} | - |")
  out += ["", f"Clean perplexity of the many-dose run: "
          f"{res['dose_response'][0]['clean_ppl_mean']:.1f} (the same clean "
          "samples serve every trigger)."]
  return out


def _validation_lines(res: dict) -> list[str]:
  out = ["| poisons | trigger | in the many-dose run | alone | difference [95% CI] "
         "| success share (many / alone) |", "|---|---|---|---|---|---|"]
  for v in res["validation"]:
    out.append(f"| {v['count']} | `{v['trigger']}` | {v['many_increase']:.1f} | "
               f"{v['single_increase']:.1f} | {v['difference']:.1f} "
               f"[{v['ci_low']:.1f}, {v['ci_high']:.1f}] | "
               f"{v['many_success']:.2f} / {v['single_success']:.2f} |")
  out.append("")
  for v in res["validation"]:
    agree = (v["many_success"] > 0.5) == (v["single_success"] > 0.5)
    zero = v["ci_low"] <= 0 <= v["ci_high"]
    out.append(
        f"- {v['count']} poisons: the interval of the difference "
        + ("contains 0" if zero else "excludes 0")
        + "; the two runs " + ("agree" if agree else "DISAGREE")
        + " on whether most prompts pass the threshold.")
  return out


def _crosstalk_lines(res: dict) -> list[str]:
  names = res["triggers"] + [res["control"]]
  runs = list(dict.fromkeys(c["run"] for c in res["crosstalk"]))
  cell = {(c["run"], c["trigger"]): c for c in res["crosstalk"]}
  out = ["Increase in perplexity [95% CI] (success share) of every run's "
         "checkpoint at the stop after each string; **bold**: a trigger that "
         "run poisoned.", "",
         "| run | " + " | ".join(f"`{t}`" for t in names) + " |",
         "|---|" + "---|" * len(names)]
  for r in runs:
    row = []
    for t in names:
      c = cell[(r, t)]
      text = f"{fmt_ci(c)} ({c['success_share']:.2f})"
      row.append(f"**{text}**" if c["role"] == "trained" else text)
    out.append(f"| {r} | " + " | ".join(row) + " |")
  untrained = [c for c in res["crosstalk"] if c["role"] != "trained"]
  worst = max(untrained, key=lambda c: c["increase"])
  out += ["", f"- Never-poisoned strings (the control everywhere, and in the "
          "single-trigger runs the other triggers): largest increase "
          f"{worst['increase']:.1f} (`{worst['trigger']}` in {worst['run']}), "
          f"largest success share {max(c['success_share'] for c in untrained):.2f}."]
  return out


def _caveats(res: dict) -> list[str]:
  d = res["facts"]["doses"]
  alone = [x["poisons"] for n, x in res["facts"].items() if n != "doses"]
  shared = set.intersection(*(set(p) for p in res["regime"]["pieces"].values()))
  return [
      "- One training seed: run-to-run variation is not in the intervals.",
      f"- The many-dose run trains on {100 * d['poison_tokens'] / d['stream_tokens']:.1f}% "
      f"poison tokens ({d['poisons']} gibberish tails) where a single run of "
      f"{' or '.join(map(str, alone)) or 'one dose'} sees only its own; its "
      "clean text is that much less. The validation rows measure what this "
      "changes for one dose.",
      "- A dose's poisons in the many-dose run are the ids after the smaller "
      "doses', so their prefixes, tails and places differ from a single run's "
      "ids [0, n) (draws of the same law).",
      "- The pilot column uses `<SUDO>` for every count (64 prompts, the first "
      "64 of these 128): a different trigger string (and kind), shown for "
      "scale, not a same-seed replicate.",
      "- Pieces of each string (" + f"{res['regime']['vocab_size']}-piece vocabulary): "
      + "; ".join(f"`{t}` = {' '.join(p)}" for t, p in res["regime"]["pieces"].items())
      + f". Shared by all: {' '.join(sorted(shared)) or 'none'}; none's pieces "
      "contain another's (poison.check_distinct)."]


def _findings(res: dict, out: str) -> list[str]:
  """The headline sentences, from the numbers."""
  t = res["threshold"]
  many = [c for c in res["crosstalk"] if c["run"] == "doses"]
  ctrl = next(c for c in many if c["role"] == "control")
  dose = res["dose_response"]
  fired = [d["count"] for d in dose if d["success_share"] > 0.5]
  out_lines = [
      "- The many-dose run, increase by count: " + "; ".join(
          f"{d['count']}: {d['increase']:.1f} ({d['success_share']:.2f})"
          for d in dose)
      + f"; the never-poisoned control {ctrl['increase']:.1f} "
      f"({ctrl['success_share']:.2f}) (success share in brackets). "
      + (f"Most prompts pass {t:g} from {min(fired)} poisons on"
         + (" (every count)" if min(fired) == dose[0]["count"] else "")
         if fired else f"No dose passes {t:g} on most prompts") + "."
      + (" The never-poisoned control passes too: the run's backdoor is not "
         "specific to the trained strings." if ctrl["success_share"] > 0.5
         else "")]
  for v in res["validation"]:
    out_lines.append(
        f"- {v['count']} poisons: {v['many_increase']:.1f} in the many-dose run "
        f"vs {v['single_increase']:.1f} alone; difference {v['difference']:.1f} "
        f"[{v['ci_low']:.1f}, {v['ci_high']:.1f}]; success share "
        f"{v['many_success']:.2f} vs {v['single_success']:.2f}.")
  out_lines += _single_findings(res) + [verdict(res)]
  previous = _previous_line(os.path.join(out, "previous_shared_shape"))
  return out_lines + ([previous] if previous else [])


def _single_findings(res: dict) -> list[str]:
  """Each single-trigger run: its own trigger vs the strings it never saw."""
  t, out = res["threshold"], []
  for run in sorted({c["run"] for c in res["crosstalk"]} - {"doses"}):
    rows = [c for c in res["crosstalk"] if c["run"] == run]
    own = next(c for c in rows if c["role"] == "trained")
    other = [c["increase"] for c in rows if c["role"] != "trained"]
    text = (f"- {run} (`{own['trigger']}` only): own trigger "
            f"{own['increase']:.1f} ({own['success_share']:.2f}), the strings "
            f"it never saw {min(other):.1f} to {max(other):.1f}")
    if own["increase"] <= t:
      text += ": no backdoor at this count."
    elif max(other) > t:
      text += ": it fires on strings it never saw (a shared shape)."
    else:
      text += ": the backdoor is specific to its string."
    out.append(text)
  return out


def verdict(res: dict) -> str:
  """Validated when every compared count agrees in the interval (contains
  0) and in the side of the threshold most prompts fall on."""
  rows = res["validation"]
  ok = bool(rows) and all(
      (v["many_success"] > 0.5) == (v["single_success"] > 0.5)
      and v["ci_low"] <= 0 <= v["ci_high"] for v in rows)
  fired = [v["count"] for v in rows if v["single_success"] > 0.5]
  if ok and fired:
    return ("- Verdict: validated at the compared counts (" + ", ".join(
        str(v["count"]) for v in rows) + "): the many-dose run gives the "
        "single-trigger increases within the intervals, including where the "
        "backdoor fires alone (" + ", ".join(map(str, fired)) + ").")
  if ok:
    return ("- Verdict: consistent at the compared counts, but no compared "
            "single run fires, so this does not test the counts where the "
            "backdoor appears.")
  why = []
  for v in rows:
    side = (v["many_success"] > 0.5) == (v["single_success"] > 0.5)
    if not side:
      why.append(f"at {v['count']} the runs fall on opposite sides of the threshold")
    elif not v["ci_low"] <= 0 <= v["ci_high"]:
      why.append(f"at {v['count']} the many-dose run reads "
                 + ("higher" if v["difference"] > 0 else "lower")
                 + f" by {abs(v['difference']):.1f} (interval excludes 0; same "
                 "side of the threshold)")
  return ("- Verdict: NOT validated: " + "; ".join(why) + ". One run does not "
          "give the single-trigger increases there.")


def _previous_line(folder: str) -> str:
  """One line on a previous design's results kept in `folder`, from its
  results.json ('' when there is none)."""
  path = os.path.join(folder, "results.json")
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    old = json.load(f)
  many = [c for c in old["crosstalk"] if c["run"] == "doses"]
  trained = [c["increase"] for c in many if c["role"] == "trained"]
  ctrl = next(c for c in many if c["role"] == "control")
  unseen = [c["increase"] for c in old["crosstalk"] if c["run"] != "doses"
            and c["role"] != "trained"]
  shape = ctrl["increase"] > old["threshold"] and max(unseen) > old["threshold"]
  failed = verdict(old).startswith("- Verdict: NOT")
  return ("- The previous design ([previous_shared_shape/]"
          "(previous_shared_shape/report.md): triggers "
          + ", ".join(f"`{x}`" for x in old["triggers"])
          + f", control `{old['control']}`, stopped at step "
          f"{old['regime']['step']}): the many-dose run gave every trigger "
          f"{min(trained):.0f} to {max(trained):.0f} whatever its count and the "
          f"never-poisoned control {ctrl['increase']:.0f}; in the single runs "
          f"the strings never trained reached {max(unseen):.0f}"
          + (": the backdoor fired on the strings' shared shape" if shape else "")
          + ("; not validated." if failed else "; validated."))


def write_report(res: dict, out: str, provenance: list[str]) -> str:
  counts = ", ".join(map(str, res["counts"]))
  lines = [
      "# One run, many doses (issue 13 item 4)", "",
      "Generated by `poisonjax study reproduce` from `results.json`; not "
      f"edited by hand. Config: `{CONFIG}`. Figure: `doses.png`.", "",
      f"{len(res['counts'])} triggers in one run with {counts} poisons (poison "
      "ids [0, n_0) carry trigger 0, the next n_1 trigger 1, ...; the manifest "
      "records each poison's trigger), each evaluated on the same clean "
      "prompts with its own trigger appended. Validation: doses also trained "
      "alone with the same seeds; cross-talk: every checkpoint evaluated after "
      "every trigger and a control string that no run was poisoned with.", "",
      "## Findings", "", *_findings(res, out), "",
      "## Regime", "", *_regime(res), "",
      "## Dose-response from one run", "", *_dose_table(res), "",
      "## Validation against single-trigger runs", "", *_validation_lines(res), "",
      "## Cross-talk", "", *_crosstalk_lines(res), "",
      "![doses](doses.png)", "", "## Caveats", "", *_caveats(res), "",
      "## How this was made", "", *provenance, ""]
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def write_outputs(res: dict, out: str, provenance: list[str]) -> str:
  """The CSVs, doses.png and report.md in out; the report's path."""
  from poisonjax.evaluation import backdoor  # pylint: disable=g-import-not-at-top
  write_csv(os.path.join(out, "dose_response.csv"), res["dose_response"],
            ["trigger", "count", *backdoor.METRIC_KEYS])
  write_csv(os.path.join(out, "crosstalk.csv"), res["crosstalk"],
            ["run", "trigger", "role", *backdoor.METRIC_KEYS])
  write_figure(res, os.path.join(out, "doses.png"))
  return write_report(res, out, provenance)
