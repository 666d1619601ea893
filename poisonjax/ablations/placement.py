"""Poison placement and density: where the poisons lie, and what each left.

configs/ablations/placement.py trains one grid once per placement (study
variants); the standard report compares the variants' N50 and final
increase. This experiment adds, per run, what that report cannot see from
the final evaluations alone: where the poisons lie (their steps, read from
the run's manifest), the peak increase and where the threshold was first
crossed, and each placement against the control (the study's first
variant) at an equal number of poisoned optimizer steps.

  collect  results.csv (the standard one) and runs.json (per run: final,
           peak, crossing, poison steps)
  report   the standard report.md, then a 'Placement' section and
           placement.png, from results.csv and runs.json alone (an OUT
           without runs.json gets the standard report only)
"""

from __future__ import annotations

import numpy as np

from poisonjax import files
from poisonjax import plots
from poisonjax import rundir

RUNS_FILE = "runs.json"
FIGURE = "placement.png"
PAPER = ("The paper (Souly et al., 2025) reports the ordering effect for "
         "fine-tuning: poisons at the start of fine-tuning implanted the "
         "backdoor, poisons at the end did not. This experiment is "
         "pretraining from scratch, at CPU scale.")


# ---------------------------------------------------------------------------
# Collect: per-run summaries.
# ---------------------------------------------------------------------------


def poison_positions(workdir) -> dict:
  """Where the run's poisons are, from its manifest (steps)."""
  m = files.read_json(files.as_path(workdir) / rundir.MANIFEST)
  steps = np.array(sorted(p["step"] for p in m["poisons"]), np.int64)
  per_step = np.bincount(steps) if len(steps) else np.zeros(1, np.int64)
  held = per_step[per_step > 0]
  return {"placement_record": m.get("placement", {}), "num_steps": m["num_steps"],
          "poison_steps": steps.tolist(),
          "first_step": int(steps.min()) if len(steps) else 0,
          "last_step": int(steps.max()) if len(steps) else 0,
          "steps_with_poisons": int(len(held)),
          "most_poisons_in_one_step": int(held.max()) if len(held) else 0}


def run_summary(rows: list[dict], threshold: float) -> dict:
  """Final, peak and first crossing of the threshold of one run's evaluations."""
  rows = sorted(rows, key=lambda r: r["step"])
  final = rows[-1]
  peak = max(rows, key=lambda r: r["increase"])
  out = {"num_evals": len(rows), "final_increase": final["increase"],
         "final_ci": [final["increase_ci_low"], final["increase_ci_high"]],
         "final_success_share": final["success_share"],
         "final_clean_ppl": final["clean_ppl_mean"],
         "final_triggered_ppl": final["triggered_ppl_mean"],
         "peak_increase": peak["increase"], "peak_fraction": peak["fraction"],
         "peak_poisons_seen": peak["poisons_seen"], "crossed": None}
  for before, hit in zip(rows, rows[1:]):
    if hit["increase"] > threshold and before["increase"] <= threshold:
      out["crossed"] = {"poisons_seen_before": before["poisons_seen"],
                        "poisons_seen_after": hit["poisons_seen"],
                        "fraction_before": before["fraction"],
                        "fraction_after": hit["fraction"],
                        "increase_before": before["increase"],
                        "increase_after": hit["increase"]}
      break
  return out


def collect(study, root, runs, out) -> None:
  """OUT/results.csv and OUT/runs.json from the finished runs in ROOT."""
  from poisonjax.study import results, variants  # pylint: disable=g-import-not-at-top
  rows = results.collect(root, runs)
  results.write_csv(rows, str(out / "results.csv"))
  overrides = dict(variants.ordered(study))
  threshold = float(study.base.eval.threshold)
  summaries = []
  for run in runs:
    mine = [r for r in rows if r["run"] == run.name]
    if not mine:
      continue
    summaries.append({
        "variant": run.variant, "run": run.name, "size": run.size,
        "poison_count": run.poisons, "data_multiplier": run.data_multiplier,
        "seed": run.seed, "workdir": str(root / run.name),
        "fields": overrides.get(run.variant, {}),
        **run_summary(mine, threshold), **poison_positions(root / run.name)})
  files.write_json(out / RUNS_FILE, {"threshold": threshold, "runs": summaries})


# ---------------------------------------------------------------------------
# Report: the standard one, then the placement section.
# ---------------------------------------------------------------------------


def report(study, out, provenance) -> str:
  """The standard report.md, plus the placement section if OUT has runs.json."""
  from poisonjax.study import report as report_lib  # pylint: disable=g-import-not-at-top
  out = files.as_path(out)
  made = report_lib.generate(str(out / "results.csv"), str(out),
                             threshold=float(study.base.eval.threshold),
                             study=study, provenance=provenance)
  if not (out / RUNS_FILE).exists():
    return made["report"]
  saved = files.read_json(out / RUNS_FILE)
  threshold = float(saved["threshold"])
  rows = plots.read_csv(str(out / "results.csv"))
  runs = _in_study_order(saved["runs"], study)
  draw(str(out / FIGURE), rows, runs, threshold)
  path = files.as_path(made["report"])
  text = path.read_text().rstrip("\n") + "\n\n" + "\n".join(
      section(study, rows, runs, threshold)) + "\n"
  files.write_text_atomic(path, text)
  return str(path)


def _in_study_order(runs: list[dict], study) -> list[dict]:
  """Runs by group, then the study's variant order, then seed."""
  from poisonjax.study import variants  # pylint: disable=g-import-not-at-top
  names = variants.names(study)
  rank = {n: i for i, n in enumerate(names)}
  return sorted(runs, key=lambda r: (_group(r), rank.get(r["variant"], len(names)),
                                     r["variant"], r["seed"]))


def _group(run: dict) -> tuple:
  return (run["size"], float(run["data_multiplier"]), int(run["poison_count"]))


def _group_title(group: tuple) -> str:
  size, mult, count = group
  return f"{size}, {count} poisons, {mult:g}x data"


def _groups(runs: list[dict]) -> dict[tuple, list[dict]]:
  out: dict[tuple, list[dict]] = {}
  for r in runs:
    out.setdefault(_group(r), []).append(r)
  return out


def _order(runs: list[dict]) -> list[str]:
  return list(dict.fromkeys(r["variant"] for r in runs))


def _rows_of(rows: list[dict], run: dict) -> list[dict]:
  return sorted((r for r in rows if r["run"] == run["run"]), key=lambda r: r["step"])


# ---------------------------------------------------------------------------
# Figure.
# ---------------------------------------------------------------------------


def _curves(ax, rows, runs, colors, x_key) -> None:
  labelled = set()
  for run in runs:
    pts = _rows_of(rows, run)
    name = run["variant"]
    ax.plot([r[x_key] for r in pts], [r["increase"] for r in pts],
            color=colors[name], marker=".", ls="-" if run["seed"] == 0 else "--",
            label=None if name in labelled else name)
    labelled.add(name)
  ax.set_yscale("symlog", linthresh=10)


def _positions(ax, runs, order, colors) -> None:
  for i, name in enumerate(order):
    run = min((r for r in runs if r["variant"] == name), key=lambda r: r["seed"])
    x = [s / run["num_steps"] for s in run["poison_steps"]]
    ax.vlines(x, i - 0.35, i + 0.35, color=colors[name], lw=0.8)
  ax.set_yticks(range(len(order)), order)
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel("fraction of training (step of each poison; lowest seed)")
  ax.set_title("where the poisons are")


def draw(path: str, rows: list[dict], runs: list[dict], threshold: float) -> None:
  """Per group (size, count, data): increase vs training and vs poisons
  seen, and where each placement's poisons lie."""
  plt = plots.pyplot()
  groups = _groups(runs)
  colors = plots.palette(_order(runs))
  fig, axes = plt.subplots(len(groups), 3, figsize=(15, 4.2 * len(groups)),
                           squeeze=False)
  for ax_row, (group, mine) in zip(axes, groups.items()):
    for ax, key, label in ((ax_row[0], "fraction", "fraction of training"),
                           (ax_row[1], "poisons_seen", "poison documents seen")):
      _curves(ax, rows, mine, colors, key)
      ax.axhline(threshold, color="grey", ls=":", lw=0.8)
      ax.set_xlabel(label)
      ax.set_ylabel("perplexity increase (triggered - clean)")
      ax.set_title(_group_title(group), fontsize=9)
    ax_row[0].legend(fontsize=8, title="placement")
    _positions(ax_row[2], mine, _order(mine), colors)
  fig.suptitle("Poison placement at equal count")
  fig.tight_layout()
  plots.save_png(fig, path, dpi=110)
  plt.close(fig)


# ---------------------------------------------------------------------------
# The section's sentences, computed from runs.json (and the control's rows).
# ---------------------------------------------------------------------------


def _crossing(run: dict, threshold: float) -> str:
  c = run["crossed"]
  if c is None:
    return (f"never above {threshold:g}" if run["peak_increase"] <= threshold
            else "above from the first evaluation")
  return (f"between {c['poisons_seen_before']} and {c['poisons_seen_after']} "
          f"seen ({c['fraction_before']:.2f}-{c['fraction_after']:.2f} of training)")


def _row(run: dict, threshold: float) -> str:
  lo, hi = run["final_ci"]
  n = run["num_steps"]
  return (f"| {run['variant']} | {run['poison_count']} | {run['seed']} | "
          f"{run['first_step']}-{run['last_step']} ({run['first_step'] / n:.0%}-"
          f"{run['last_step'] / n:.0%}) | {run['steps_with_poisons']} / "
          f"{run['most_poisons_in_one_step']} | {run['final_increase']:.1f} "
          f"[{lo:.1f}, {hi:.1f}] | {run['final_success_share']:.2f} | "
          f"{run['peak_increase']:.1f} at {run['peak_fraction']:.2f} | "
          f"{_crossing(run, threshold)} |")


def _mean(runs: list[dict], name: str, key: str) -> float:
  vals = [r[key] for r in runs if r["variant"] == name]
  return sum(vals) / len(vals)


def _ci(runs: list[dict], name: str) -> tuple[float, float]:
  """Mean over seeds of the final increase's interval bounds."""
  cis = [r["final_ci"] for r in runs if r["variant"] == name]
  return (sum(lo for lo, _ in cis) / len(cis), sum(hi for _, hi in cis) / len(cis))


def _verdicts(runs: list[dict], threshold: float) -> str:
  """Each placement as above / at / below the threshold, by its interval."""
  groups = {"above": [], "spanning": [], "below": []}
  for n in _order(runs):
    lo, hi = _ci(runs, n)
    key = "above" if lo > threshold else "below" if hi < threshold else "spanning"
    groups[key].append(f"{n} ({_mean(runs, n, 'final_increase'):.1f} "
                       f"[{lo:.1f}, {hi:.1f}], share "
                       f"{_mean(runs, n, 'final_success_share'):.2f})")
  return (f"Final increase against the threshold ({threshold:g}), by its 95% "
          "interval: " + "; ".join(f"{k}: {', '.join(v) or 'none'}"
                                   for k, v in groups.items()) + ".")


def _placed(runs: list[dict], kind: str) -> tuple[str, float] | None:
  """The one variant putting every poison first (or last), and its share."""
  found = {(r["variant"], r["fields"].get("poison", {}).get("placement_fraction"))
           for r in runs if r["fields"].get("poison", {}).get("placement") == kind}
  return next(iter(found)) if len(found) == 1 else None


def _ordering(runs: list[dict]) -> list[str]:
  """Poisons first vs last: which left the larger backdoor, by the intervals."""
  first, last = _placed(runs, "first"), _placed(runs, "last")
  if first is None or last is None:
    return []
  (f_lo, f_hi), (l_lo, l_hi) = _ci(runs, first[0]), _ci(runs, last[0])
  if f_hi < l_lo:
    shape = ("the later poisons left the larger backdoor: the REVERSE of the "
             "paper's fine-tuning shape (start works, end does not)")
  elif f_lo > l_hi:
    shape = ("the earlier poisons left the larger backdoor: the paper's "
             "fine-tuning shape (start works, end does not)")
  else:
    shape = "the two are not distinguishable here (their intervals overlap)"
  return [f"Ordering: poisons in the first {first[1]:.0%} end at "
          f"{_mean(runs, first[0], 'final_increase'):.1f} [{f_lo:.1f}, "
          f"{f_hi:.1f}], in the last {last[1]:.0%} at "
          f"{_mean(runs, last[0], 'final_increase'):.1f} [{l_lo:.1f}, "
          f"{l_hi:.1f}]; {shape}."]


def findings(runs: list[dict], threshold: float) -> list[str]:
  """Sentences of one group (means over seeds where several)."""
  order = _order(runs)
  control = order[0]
  final = {n: _mean(runs, n, "final_increase") for n in order}
  out = [_verdicts(runs, threshold)] + _ordering(runs)
  for n in order:
    peak, frac = _mean(runs, n, "peak_increase"), _mean(runs, n, "peak_fraction")
    if frac < 1.0 and peak > 0 and final[n] < 0.5 * peak:  # Decayed.
      out.append(f"{n} peaked at {peak:.1f} (fraction {frac:.2f}) and ended at "
                 f"{final[n]:.1f}: the training after the peak erased most of it.")
  out += [f"{n} vs {control}: final increase {final[n]:.1f} vs "
          f"{final[control]:.1f}." for n in order[1:]]
  return out


def _poisoned_steps_seen(run: dict, step: int) -> int:
  """Distinct steps holding a poison among the steps [0, step) trained."""
  return len({s for s in run["poison_steps"] if s < step})


def equal_poisoned_steps(rows: list[dict], runs: list[dict]) -> list[str]:
  """Each placement vs the control when the control had trained as many
  poisoned steps (same seed)."""
  control = runs[0]
  evals = _rows_of(rows, control)
  out = []
  for run in runs[1:]:
    if run["seed"] != control["seed"] or run["variant"] == control["variant"]:
      continue
    k = run["steps_with_poisons"]
    hit = next((e for e in evals if _poisoned_steps_seen(control, e["step"]) >= k),
               None)
    if hit is not None:
      out.append(f"{run['variant']}: its {len(run['poison_steps'])} poisons "
                 f"sit in {k} steps and end at {run['final_increase']:.1f}; "
                 f"{control['variant']}, at its first evaluation after {k} "
                 f"poisoned steps (step {hit['step']}, "
                 f"{_poisoned_steps_seen(control, hit['step'])} poisoned "
                 f"steps, {hit['poisons_seen']} poisons seen), was at "
                 f"{hit['increase']:.1f}.")
  return out


def _after_last_poison(runs: list[dict], kind: str) -> str:
  """How much training follows the last poison of the first/last variant."""
  placed = _placed(runs, kind)
  if placed is None:
    return ""
  run = next(r for r in runs if r["variant"] == placed[0])
  share = 1 - run["last_step"] / run["num_steps"]
  return (f"{'none' if share < 0.01 else f'about {round(share, 1):.0%} of the run'}"
          f" for {placed[0]}")


# ---------------------------------------------------------------------------
# The section.
# ---------------------------------------------------------------------------


def _setup(study, runs: list[dict]) -> list[str]:
  b = study.base
  seeds = sorted({r["seed"] for r in runs})
  return [
      f"Each placement trains the same steps and learning-rate schedule "
      f"(poisons {b.poison.budget_mode.upper()} clean tokens; warmup then "
      f"cosine to {b.train.min_lr_ratio:g} of the peak; "
      f"{b.train.tokens_per_param:g} clean tokens per parameter; batch "
      f"{b.train.batch_size} x {b.data.seq_len}), grid seeds {seeds} (the "
      "study's derived seeds: same init, clean data and poison documents "
      f"for every placement). {b.eval.num_excerpts} prompts, "
      f"{b.eval.num_evals} evaluations + the first and the last. The "
      "placements are the variants listed under 'By variant' "
      "(`config.poison.placement`, poisonjax/data/mixer.py); the control "
      "is the first.", ""]


def _group_lines(rows: list[dict], runs: list[dict], threshold: float) -> list[str]:
  lines = ["| placement | poisons | seed | poisons at steps | steps with "
           "poisons / most in one | final increase [95% CI] | success share | "
           "peak (at fraction) | crossed the threshold |",
           "|---|---|---|---|---|---|---|---|---|"]
  lines += [_row(r, threshold) for r in runs]
  lines += ["", "Findings:", ""] + [f"- {s}" for s in findings(runs, threshold)]
  same = equal_poisoned_steps(rows, runs)
  if same:
    lines += ["", f"At an equal number of poisoned optimizer steps (same seed; "
              f"{runs[0]['variant']}'s evaluations bracket it from above):", ""]
    lines += [f"- {s}" for s in same]
  return lines + [""]


def _caveats(runs: list[dict]) -> list[str]:
  after = ", ".join(s for s in (_after_last_poison(runs, "first"),
                                _after_last_poison(runs, "last")) if s)
  seeds = len({r["seed"] for r in runs})
  return [
      "### Context and caveats", "", f"- {PAPER}",
      "- Here a placement also decides how much clean training follows "
      "the last poison" + (f" ({after})" if after else "") + " and the "
      "learning rate the poisons meet (near the peak early, decayed by the "
      "cosine schedule late); the experiment does not separate the two "
      "(configs/ablations/persistence.py measures the decay under clean "
      "training).",
      f"- {seeds} seed(s) per placement: differences between placements "
      "within one seed's bootstrap interval are not distinguishable here.",
      "- Evaluations per run: " + ", ".join(
          f"{r['variant']} {r['num_evals']}" for r in runs)
      + "; crossings are bracketed between two of them, not located.",
      "- Run directories: " + "; ".join(
          f"{r['variant']} `{r['workdir']}`" for r in runs) + ".", ""]


def section(study, rows: list[dict], runs: list[dict], threshold: float) -> list[str]:
  """The 'Placement' lines: setup, then per group a table, findings and
  the comparison at equal poisoned steps, then the caveats."""
  lines = ["## Placement: where the poisons lie, peaks and crossings", "",
           "Per run, from runs.json (poison steps and the count per step read "
           "from each run's manifest) and results.csv; figure "
           f"`{FIGURE}`. Final increase with its bootstrap interval; success "
           f"share = prompts whose increase > {threshold:g}.", ""]
  lines += _setup(study, runs)
  for group, mine in _groups(runs).items():
    lines += [f"### {_group_title(group)}", ""] + _group_lines(rows, mine, threshold)
  lines += [f"![placement]({FIGURE})", ""]
  return lines + _caveats(runs)
