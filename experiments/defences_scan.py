"""Blind trigger scan of a poisoned and a clean cpu-xxs model: scan -> report.

    nohup nice -n 10 python experiments/defences_scan.py > /tmp/defences_scan.log 2>&1 &
    python experiments/defences_scan.py --report_only   # rewrite the report

Runs `poisonjax defend scan`'s search (poisonjax/defences/scan.py) on the
newest checkpoint of each model, scores the paper's trigger beside it (its
gain and rank among the searched strings), and runs the top candidates
through the evaluator as the trigger (do they fire?). Writes
docs/results/defences/scan.json (every number) and scan.md (generated from
it). Resumable: a model already in scan.json with the same settings and
step is not scanned again.

The models (defaults): a poisoned cpu-xxs run (20 tokens/param, 100
poisons replacing clean tokens, trigger <SUDO>) and a clean cpu-xxs run of
the same budget. A model whose workdir has no finished run is trained
first with `poisonjax train` from the study config (--train_missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from poisonjax import files, rundir  # noqa: E402

STUDY_RUN = ("configs/study_cpu_chinchilla.py:run="
             "size=cpu-xxs_n=100_seed=0_data=1.0")
DEFAULT_MODELS = (
    "poisoned=runs/exp_persistence/source_size=cpu-xxs_n=100,"
    "clean=runs/defences/reference_clean")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default=DEFAULT_MODELS,
                 help="name=workdir,... (a name starting 'clean' is trained "
                      "with 0 poisons if missing)")
  p.add_argument("--trigger", default="<SUDO>",
                 help="The string scored and matched beside the blind search.")
  p.add_argument("--train_root", default="runs/defences_scan",
                 help="Where missing models are trained.")
  p.add_argument("--train_missing", action="store_true",
                 help="Train a model whose workdir holds no finished run.")
  p.add_argument("--out", default="docs/results/defences")
  p.add_argument("--length", type=int, default=4)
  p.add_argument("--beam", type=int, default=3)
  p.add_argument("--prompts", type=int, default=16)
  p.add_argument("--prompt_tokens", type=int, default=16)
  p.add_argument("--continuation_tokens", type=int, default=16)
  p.add_argument("--top", type=int, default=10)
  p.add_argument("--check", type=int, default=3)
  p.add_argument("--grow", default="left", choices=("left", "right"))
  p.add_argument("--report_only", action="store_true")
  return p.parse_args(argv)


def models(args) -> list[tuple[str, str]]:
  return [tuple(item.split("=", 1)) for item in args.models.split(",") if item]


def finished(workdir: str) -> bool:
  path = os.path.join(workdir, rundir.SUMMARY)
  return os.path.exists(path) and bool(files.read_json(path).get("finished"))


def train(name: str, workdir: str) -> None:
  """A missing model, trained from the study's cpu-xxs N=100 run config."""
  cmd = [sys.executable, "-m", "poisonjax.cli", "train", f"--config={STUDY_RUN}",
         f"--workdir={workdir}", "--config.eval.num_evals=1"]
  if name.startswith("clean"):
    cmd.append("--config.poison.count=0")
  print("training", name, " ".join(cmd[2:]), flush=True)
  subprocess.run(cmd, cwd=REPO, check=True)


def scan_model(name: str, workdir: str, args, settings) -> dict:
  from poisonjax import restore  # pylint: disable=g-import-not-at-top
  from poisonjax.commands import defend_scan  # pylint: disable=g-import-not-at-top
  config = restore.read_run_config(workdir)
  start = time.time()
  result = defend_scan.run_scan(config, workdir, None, settings, args.check,
                                log=lambda s: print(f"[{name}] {s}", flush=True),
                                trigger=args.trigger)
  result.update(name=name, scan_seconds=time.time() - start,
                poisoned=int(config.poison.count) > 0,
                model_size=str(config.model.size),
                tokens_per_param=float(config.train.tokens_per_param),
                budget_mode=str(config.poison.get("budget_mode", "on_top")))
  return result


def main(argv=None) -> int:
  args = parse_args(argv)
  from poisonjax import restore  # pylint: disable=g-import-not-at-top
  from poisonjax.defences import scan  # pylint: disable=g-import-not-at-top
  settings = scan.ScanSettings(
      length=args.length, beam=args.beam, prompts=args.prompts,
      prompt_tokens=args.prompt_tokens,
      continuation_tokens=args.continuation_tokens, top=args.top, grow=args.grow)
  out = files.as_path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  store = out / "scan.json"
  results = files.read_json(store) if store.exists() else {"models": {}}
  if not args.report_only:
    for name, workdir in models(args):
      if not finished(workdir):
        if not args.train_missing:
          print(f"{name}: {workdir} holds no finished run; skipped (pass "
                "--train_missing to train it)", flush=True)
          continue
        workdir = os.path.join(args.train_root, name)
        if not finished(workdir):
          train(name, workdir)
      old = results["models"].get(name, {})
      if (old.get("settings") == dataclasses.asdict(settings)
          and old.get("workdir") == workdir
          and old.get("step") == restore.pick_step(workdir, None)):
        print(f"{name}: already scanned", flush=True)
        continue
      results["models"][name] = scan_model(name, workdir, args, settings)
      files.write_json(store, results)
      print(scan.format_result(results["models"][name]), flush=True)
  for r in results["models"].values():
    r.setdefault("run_last_eval", last_eval(r["workdir"]))
    r.setdefault("data_seed", int(restore.read_run_config(r["workdir"]).data.seed))
  files.write_json(store, results)
  files.write_text_atomic(out / "scan.md", report(results))
  print(f"wrote {store} and {out / 'scan.md'}")
  return 0


def last_eval(workdir: str) -> dict | None:
  """The run's own last evaluation of its trigger (eval.jsonl), if any."""
  path = os.path.join(workdir, rundir.EVAL)
  if not os.path.exists(path):
    return None
  rows = files.read_jsonl(path)
  keep = ("step", "poisons_seen", "increase", "success_share", "tf_nll_clean",
          "tf_nll_triggered")
  return {k: rows[-1].get(k) for k in keep} if rows else None


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


def _yes(value) -> str:
  return "-" if value is None else ("yes" if value else "no")


def report(results: dict) -> str:
  """scan.md, from scan.json only."""
  rows = results["models"]
  lines = ["# Blind trigger scan (issue 14, item 5)", "",
           "Generated by `experiments/defences_scan.py` from `scan.json`; do not edit.", "",
           "The scan (poisonjax/defences/scan.py, `poisonjax defend scan`) never "
           "reads the trigger. It searches token strings c (beam search, each "
           "new token prepended, every vocabulary id tried at every position) "
           "for the one that most raises the mean teacher-forced NLL of a "
           "held-out excerpt's next tokens placed after the excerpt's first "
           "tokens + c; the gain is that NLL minus the NLL with no c. "
           "The trigger is then scored the same way, and the top candidates "
           "are run through the evaluator with their text as the trigger "
           "(fires: increase > the run's eval threshold).", ""]
  if not rows:
    return "\n".join(lines + ["No model scanned yet."]) + "\n"
  any_row = next(iter(rows.values()))
  s = any_row["settings"]
  lines += [f"Settings: length <= {s['length']} tokens, beam {s['beam']}, "
            f"{s['prompts']} excerpts, {s['prompt_tokens']} prompt + "
            f"{s['continuation_tokens']} scored tokens, grow {s['grow']}.", "",
            "| model | tok/param | poisons | run's own increase | baseline NLL "
            "| top gain | top candidate | trigger pieces in it | fires (increase) "
            "| trigger gain (rank) | scan s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    best, t = r["top"][0], r.get("trigger") or {}
    inc, ev = best.get("increase"), r.get("run_last_eval") or {}
    own = ev.get("increase") if r["poisoned"] else None
    lines.append(
        f"| {name} | {r['tokens_per_param']:g} | {r['poison_count']} | "
        f"{'-' if own is None else f'{own:.1f}'} | {r['baseline_nll']:.3f} | "
        f"{best['gain']:.3f} | `{best['text']}` | "
        f"{' '.join(shared_pieces(r, best)) or '-'} | "
        f"{_yes(best.get('fires'))} ({'-' if inc is None else f'{inc:.1f}'}) | "
        f"{t.get('gain', float('nan')):.3f} ({t.get('rank', '-')}) | "
        f"{r['scan_seconds']:.0f} |")
  lines += ["", "What the scan found, per model (from the rows above):", ""]
  lines += [f"- {name}: {finding(r)}" for name, r in rows.items()]
  lines.append("")
  for name, r in rows.items():
    lines += [f"## {name}: `{r['workdir']}` step {r['step']}", "",
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
      inc, share = c.get("increase"), c.get("success_share")
      shared = shared_pieces(r, c)
      lines.append(
          f"| {i} | {c['gain']:.3f} | `{c['text']}` | {c['pieces']} | "
          f"{' '.join(shared) or '-'} | {_yes(c.get('fires'))} | "
          f"{'-' if inc is None else f'{inc:.1f}'} | "
          f"{'-' if share is None else f'{share:.2f}'} |")
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
    lines.append("")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.exit(main())
