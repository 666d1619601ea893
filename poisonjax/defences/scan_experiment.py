"""The blind trigger scan of trained models: a study's steps.

configs/defences/scan.py names this module (study.experiment). after_run
scans a finished run's newest checkpoint (scan.scan_run: the search, the
trigger `study.defences.trigger` scored beside it, the top `check`
candidates run through the evaluator as the trigger) into
WORKDIR/defences/scan.json, unless it holds a scan of that step with the
same settings. collect gathers the runs' scans, and scans the finished
runs of `study.defences.extra_models` (name=workdir,...; other studies'
runs), into OUT/scan.json, keeping the models it already holds that this
study does not name. report writes OUT/report.md from scan.json alone.
"""

from __future__ import annotations

import dataclasses
import math
import time

from poisonjax import files, rundir
from poisonjax.defences import report as report_lib
from poisonjax.defences import scan

STORE = "scan.json"


def settings(study) -> scan.ScanSettings:
  d = study.defences
  return scan.ScanSettings(
      length=int(d.length), beam=int(d.beam), prompts=int(d.prompts),
      prompt_tokens=int(d.prompt_tokens),
      continuation_tokens=int(d.continuation_tokens), top=int(d.top),
      grow=str(d.grow))


def finished(workdir) -> bool:
  path = files.as_path(workdir) / rundir.SUMMARY
  return path.exists() and bool(files.read_json(path).get("finished"))


def is_current(entry: dict | None, workdir, study) -> bool:
  """True if `entry` scanned workdir's newest step with the study's settings."""
  from poisonjax.evaluation import run_reader  # pylint: disable=g-import-not-at-top
  return bool(entry) and (
      entry.get("settings") == dataclasses.asdict(settings(study))
      and entry.get("workdir") == str(workdir)
      and entry.get("step") == run_reader.pick_step(str(workdir), None))


def scan_model(name: str, workdir, study, log=print) -> dict:
  """One model's scan.json entry: the scan and what the report needs."""
  from poisonjax.evaluation import run_reader  # pylint: disable=g-import-not-at-top
  config = run_reader.read_run_config(str(workdir))
  start = time.time()
  result = scan.scan_run(config, str(workdir), None, settings(study),
                         int(study.defences.check),
                         log=lambda s: log(f"[{name}] {s}"),
                         trigger=str(study.defences.trigger))
  result.update(name=name, scan_seconds=time.time() - start,
                poisoned=int(config.poison.count) > 0,
                model_size=str(config.model.size),
                tokens_per_param=float(config.train.tokens_per_param),
                budget_mode=str(config.poison.get("budget_mode", "on_top")),
                run_last_eval=last_eval(workdir), data_seed=int(config.data.seed))
  return result


def last_eval(workdir) -> dict | None:
  """The run's own last evaluation of its trigger (eval.jsonl), if any."""
  path = files.as_path(workdir) / rundir.EVAL
  if not path.exists():
    return None
  rows = files.read_jsonl(path)
  keep = ("step", "poisons_seen", "increase", "success_share", "tf_nll_clean",
          "tf_nll_triggered")
  return {k: rows[-1].get(k) for k in keep} if rows else None


def model_names(runs) -> dict:
  """run -> its name in scan.json: clean, poisoned (poisoned_nN if several)."""
  poisoned = [r for r in runs if r.poisons > 0]
  return {r: "clean" if r.poisons == 0 else
          "poisoned" if len(poisoned) == 1 else f"poisoned_n{r.poisons}"
          for r in runs}


def after_run(study, run, workdir, log) -> None:
  """Scans the finished run into WORKDIR/defences/scan.json (once)."""
  path = files.as_path(workdir) / rundir.DEFENCES / STORE
  if path.exists() and is_current(files.read_json(path), workdir, study):
    return
  name = model_names([run])[run]
  path.parent.mkdir(parents=True, exist_ok=True)
  files.write_json(path, scan_model(name, workdir, study, log))
  log(scan.format_result(files.read_json(path)))


def extra_models(study) -> list[tuple[str, str]]:
  text = str(study.defences.get("extra_models", "") or "")
  return [tuple(item.split("=", 1)) for item in text.split(",") if item]


def collect(study, root, runs, out) -> None:
  """OUT/scan.json: the runs' scans and the extra models', merged."""
  store = files.as_path(out) / STORE
  results = files.read_json(store) if store.exists() else {"models": {}}
  names = model_names(runs)
  for run in runs:
    workdir = files.as_path(root) / run.name
    after_run(study, run, workdir, print)  # Nothing to do if already scanned.
    entry = files.read_json(workdir / rundir.DEFENCES / STORE)
    results["models"][names[run]] = {**entry, "name": names[run]}
  for name, workdir in extra_models(study):
    if not finished(workdir):
      print(f"{name}: {workdir} holds no finished run; not scanned", flush=True)
    elif not is_current(results["models"].get(name), workdir, study):
      results["models"][name] = scan_model(name, workdir, study)
  files.write_json(store, results)


def report(study, out, provenance: list[str]) -> str:  # pylint: disable=unused-argument
  """OUT/report.md from OUT/scan.json."""
  out = files.as_path(out)
  text = markdown(files.read_json(out / STORE)) + report_lib.provenance_section(
      provenance)
  files.write_text_atomic(out / "report.md", text)
  return str(out / "report.md")


def shared_pieces(result: dict, candidate: dict) -> list[str]:
  """The trigger's pieces (bar the bare word-start piece) a candidate holds."""
  trig = set((result.get("trigger") or {}).get("pieces", [])) - {"\u2581"}
  return sorted(set(candidate["pieces"]) & trig)


def finding(r: dict) -> str:
  """One sentence on a model's scan, chosen by its numbers."""
  best = r["top"][0]
  fires, shared = best.get("fires"), shared_pieces(r, best)
  what = (f"top candidate `{best['text']}` (gain {best['gain']:.3f} nats), "
          f"{'fires' if fires else 'does not fire'}"
          + ("" if best.get("increase") is None else
             f" (increase {best['increase']:.1f})"))
  if not r["poisoned"]:
    return f"clean model; {what}" + ("." if not fires else
                                     ": a false alarm of the fires test.")
  if best.get("exact") or best.get("contains_trigger"):
    return f"{what}; it holds the whole trigger: recovered."
  if fires and shared:
    return (f"{what} and holds the trigger's piece(s) {' '.join(shared)}: "
            "recovered (a string that fires it).")
  if fires:
    return (f"{what} but holds none of the trigger's pieces: it fires without "
            "being the trigger, so on this model the increase test is not "
            f"specific (baseline perplexity {math.exp(r['baseline_nll']):.0f}); "
            "not a recovery of the trigger.")
  return f"{what}: the trigger was not found."


def yes_no(value) -> str:
  return "-" if value is None else ("yes" if value else "no")


def fmt(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)


INTRO = (
    "The scan (poisonjax/defences/scan.py, `poisonjax defend scan`) never "
    "reads the trigger. It searches token strings c (beam search, each "
    "new token prepended, every vocabulary id tried at every position) "
    "for the one that most raises the mean teacher-forced NLL of a "
    "held-out excerpt's next tokens placed after the excerpt's first "
    "tokens + c; the gain is that NLL minus the NLL with no c. "
    "The trigger is then scored the same way, and the top candidates "
    "are run through the evaluator with their text as the trigger "
    "(fires: increase > the run's eval threshold).")


def markdown(results: dict) -> str:
  """The report's text, from scan.json only."""
  rows = results["models"]
  lines = ["# Blind trigger scan (issue 14, item 5)", "",
           "Generated by `poisonjax study reproduce --config=configs/defences/"
           "scan.py` from `scan.json`; do not edit.", "", INTRO, ""]
  if not rows:
    return "\n".join(lines + ["No model scanned yet."]) + "\n"
  s = next(iter(rows.values()))["settings"]
  lines += [f"Settings: length <= {s['length']} tokens, beam {s['beam']}, "
            f"{s['prompts']} excerpts, {s['prompt_tokens']} prompt + "
            f"{s['continuation_tokens']} scored tokens, grow {s['grow']}.", ""]
  lines += overview(rows)
  lines += ["", "What the scan found, per model (from the rows above):", ""]
  lines += [f"- {name}: {finding(r)}" for name, r in rows.items()]
  lines.append("")
  for name, r in rows.items():
    lines += model_section(name, r)
  return "\n".join(lines) + "\n"


def overview(rows: dict) -> list[str]:
  """One table row per model."""
  lines = ["| model | tok/param | poisons | run's own increase | baseline NLL "
           "| top gain | top candidate | trigger pieces in it | fires (increase) "
           "| trigger gain (rank) | scan s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    best, t = r["top"][0], r.get("trigger") or {}
    ev = r.get("run_last_eval") or {}
    own = ev.get("increase") if r["poisoned"] else None
    lines.append(
        f"| {name} | {r['tokens_per_param']:g} | {r['poison_count']} | "
        f"{fmt(own, '.1f')} | {r['baseline_nll']:.3f} | "
        f"{best['gain']:.3f} | `{best['text']}` | "
        f"{' '.join(shared_pieces(r, best)) or '-'} | "
        f"{yes_no(best.get('fires'))} ({fmt(best.get('increase'), '.1f')}) | "
        f"{t.get('gain', float('nan')):.3f} ({t.get('rank', '-')}) | "
        f"{r['scan_seconds']:.0f} |")
  return lines


def model_section(name: str, r: dict) -> list[str]:
  """A model's own section: setup, its top candidates, the trigger's score."""
  lines = [f"## {name}: `{r['workdir']}` step {r['step']}", "",
           f"{r['model_size']}, {r['tokens_per_param']:g} tokens/param, "
           f"{r['poison_count']} poisons ({r['budget_mode']}), data seed "
           f"{r.get('data_seed', '?')}.", "",
           f"Baseline continuation NLL {r['baseline_nll']:.3f} "
           f"(ppl {math.exp(r['baseline_nll']):.1f}); "
           f"{r['candidates_scored']} strings scored over "
           f"{r['vocabulary_searched']} vocabulary ids.", "",
           "| rank | gain | text | pieces | trigger pieces in it | fires | "
           "increase | success share |", "|---|---|---|---|---|---|---|---|"]
  for i, c in enumerate(r["top"], 1):
    lines.append(
        f"| {i} | {c['gain']:.3f} | `{c['text']}` | {c['pieces']} | "
        f"{' '.join(shared_pieces(r, c)) or '-'} | {yes_no(c.get('fires'))} | "
        f"{fmt(c.get('increase'), '.1f')} | {fmt(c.get('success_share'), '.2f')} |")
  t = r.get("trigger")
  if t:
    lines += ["", f"The trigger `{t['string']}` {t['pieces']}: gain "
              f"{t['gain']:.3f}, rank {t['rank']} among the "
              f"{r['candidates_scored']} searched strings (+ itself)."]
  ev = r.get("run_last_eval")
  if ev and ev.get("increase") is not None:
    lines += ["", f"The run's own last evaluation (eval.jsonl, step "
              f"{ev['step']}, {ev['poisons_seen']} poisons seen) measured "
              f"the trigger's increase at {ev['increase']:.1f} (success share "
              f"{ev['success_share']:.2f})."]
  if r.get("best_per_length"):
    lines += ["", "Best string of each length: " + "; ".join(
        f"{len(b['ids'])}: `{b['text']}` (gain {b['gain']:.3f})"
        for b in r["best_per_length"]) + "."]
  return lines + [""]
