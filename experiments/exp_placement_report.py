"""The placement experiment's outputs: results.csv, runs.json, the figure, report.md.

Everything in report.md is computed from runs.json and results.csv (written
by experiments/exp_placement.py from the runs), so `--report_only` redraws
it without training. Figures reuse poisonjax.plots' helpers.
"""

import os
import time

from poisonjax import files, plots
from poisonjax.study import results as results_lib

PAPER = ("The paper (Souly et al., 2025) reports the ordering effect for "
         "fine-tuning: poisons at the start of fine-tuning implanted the "
         "backdoor, poisons at the end did not. This experiment is "
         "pretraining from scratch, at CPU scale.")


def write_all(out, rows, runs, cfg, threshold, provenance) -> None:
  os.makedirs(out, exist_ok=True)
  results_lib.write_csv(rows, os.path.join(out, "results.csv"))
  files.write_json(os.path.join(out, "runs.json"),
                   {"threshold": threshold, "runs": runs, "provenance": provenance})
  render(out, cfg, rows, runs, threshold, provenance)


def regenerate(out, cfg, threshold) -> int:
  path = os.path.join(out, "runs.json")
  if not os.path.exists(path):
    print(f"--report_only: no {path}; run without it first")
    return 1
  saved = files.read_json(path)
  rows = plots.read_csv(os.path.join(out, "results.csv"))
  provenance = saved["provenance"] + [
      f"- Report regenerated from results.csv and runs.json on "
      f"{time.strftime('%Y-%m-%d %H:%M %Z')} (no training)."]
  render(out, cfg, rows, saved["runs"], float(saved["threshold"]), provenance)
  return 0


def render(out, cfg, rows, runs, threshold, provenance) -> None:
  order = [n for n in cfg.placement_order if any(r["placement"] == n for r in runs)]
  draw(os.path.join(out, "placement.png"), rows, runs, order, threshold)
  text = report(cfg, rows, runs, order, threshold, provenance)
  files.write_text_atomic(os.path.join(out, "report.md"), text)


# ---------------------------------------------------------------------------
# Figure.
# ---------------------------------------------------------------------------


def _curves(ax, rows, order, colors, x_key):
  for name in order:
    for seed in sorted({r["seed"] for r in rows if r["placement"] == name}):
      pts = sorted((r for r in rows if r["placement"] == name and r["seed"] == seed),
                   key=lambda r: r["step"])
      ax.plot([r[x_key] for r in pts], [r["increase"] for r in pts],
              color=colors[name], marker=".", ls="-" if seed == 0 else "--",
              label=name if seed == min(r["seed"] for r in pts) else None)
  ax.set_yscale("symlog", linthresh=10)


def draw(path, rows, runs, order, threshold) -> None:
  plt = plots.pyplot()
  colors = plots.palette(order)
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for ax, key, label in ((axes[0], "fraction", "fraction of training"),
                         (axes[1], "poisons_seen", "poison documents seen")):
    _curves(ax, rows, order, colors, key)
    ax.axhline(threshold, color="grey", ls=":", lw=0.8)
    ax.set_xlabel(label)
    ax.set_ylabel("perplexity increase (triggered - clean)")
  axes[0].legend(fontsize=8, title="placement")
  ax = axes[2]
  for i, name in enumerate(order):
    run = min((r for r in runs if r["placement"] == name), key=lambda r: r["seed"])
    x = [s / run["num_steps"] for s in run["poison_steps"]]
    ax.vlines(x, i - 0.35, i + 0.35, color=colors[name], lw=0.8)
  ax.set_yticks(range(len(order)), order)
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel("fraction of training (step of each poison; lowest seed)")
  ax.set_title("where the poisons are")
  fig.suptitle("Poison placement at equal count (cpu-xxs, 100 poisons)")
  fig.tight_layout()
  plots.save_png(fig, path, dpi=110)
  plt.close(fig)


# ---------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------


def _crossing(run, threshold) -> str:
  c = run["crossed"]
  if c is None:
    return (f"never above {threshold:g}" if run["peak_increase"] <= threshold
            else "above from the first evaluation")
  return (f"between {c['poisons_seen_before']} and {c['poisons_seen_after']} "
          f"seen ({c['fraction_before']:.2f}-{c['fraction_after']:.2f} of training)")


def _row(run, threshold) -> str:
  lo, hi = run["final_ci"]
  n = run["num_steps"]
  return (f"| {run['placement']} | {run['seed']} | {run['first_step']}-"
          f"{run['last_step']} ({run['first_step'] / n:.0%}-{run['last_step'] / n:.0%}) "
          f"| {run['steps_with_poisons']} / {run['most_poisons_in_one_step']} | "
          f"{run['final_increase']:.1f} [{lo:.1f}, {hi:.1f}] | "
          f"{run['final_success_share']:.2f} | {run['peak_increase']:.1f} at "
          f"{run['peak_fraction']:.2f} | {_crossing(run, threshold)} |")


def _mean(runs, name, key):
  vals = [r[key] for r in runs if r["placement"] == name]
  return sum(vals) / len(vals) if vals else None


def _ci(runs, name):
  """Mean over seeds of the final increase's interval bounds."""
  lo = [r["final_ci"][0] for r in runs if r["placement"] == name]
  hi = [r["final_ci"][1] for r in runs if r["placement"] == name]
  return sum(lo) / len(lo), sum(hi) / len(hi)


def _verdicts(runs, order, threshold) -> str:
  """Each placement as above / at / below the threshold, by its interval."""
  groups = {"above": [], "spanning": [], "below": []}
  for n in order:
    lo, hi = _ci(runs, n)
    key = "above" if lo > threshold else "below" if hi < threshold else "spanning"
    groups[key].append(f"{n} ({_mean(runs, n, 'final_increase'):.1f} "
                       f"[{lo:.1f}, {hi:.1f}], share "
                       f"{_mean(runs, n, 'final_success_share'):.2f})")
  return (f"Final increase against the threshold ({threshold:g}), by its 95% "
          "interval: " + "; ".join(f"{k}: {', '.join(v) or 'none'}"
                                   for k, v in groups.items()) + ".")


def _ordering(runs) -> str:
  (f_lo, f_hi), (l_lo, l_hi) = _ci(runs, "first10"), _ci(runs, "last10")
  first, last = _mean(runs, "first10", "final_increase"), _mean(runs, "last10", "final_increase")
  if f_hi < l_lo:
    shape = ("the later poisons left the larger backdoor: the REVERSE of the "
             "paper's fine-tuning shape (start works, end does not)")
  elif f_lo > l_hi:
    shape = ("the earlier poisons left the larger backdoor: the paper's "
             "fine-tuning shape (start works, end does not)")
  else:
    shape = "the two are not distinguishable here (their intervals overlap)"
  return (f"Ordering: poisons in the first 10% end at {first:.1f} [{f_lo:.1f}, "
          f"{f_hi:.1f}], in the last 10% at {last:.1f} [{l_lo:.1f}, {l_hi:.1f}]; "
          f"{shape}.")


def _poisoned_steps_seen(run, step) -> int:
  """Distinct steps holding a poison among the steps [0, step) trained."""
  return len({s for s in run["poison_steps"] if s < step})


def equal_poisoned_steps(rows, runs, order) -> list[str]:
  """Each placement vs uniform when uniform had trained as many poisoned steps."""
  uni = next((r for r in runs if r["placement"] == "uniform"), None)
  if uni is None:
    return []
  evals = sorted((r for r in rows if r["placement"] == "uniform"
                  and r["seed"] == uni["seed"]), key=lambda r: r["step"])
  out = []
  for run in runs:
    if run["placement"] == "uniform" or run["seed"] != uni["seed"]:
      continue
    k = run["steps_with_poisons"]
    hit = next((e for e in evals if _poisoned_steps_seen(uni, e["step"]) >= k), None)
    if hit is not None:
      out.append(f"{run['placement']}: its {len(run['poison_steps'])} poisons "
                 f"sit in {k} steps and end at {run['final_increase']:.1f}; "
                 f"uniform, at its first evaluation after {k} poisoned steps "
                 f"(step {hit['step']}, {_poisoned_steps_seen(uni, hit['step'])} "
                 f"poisoned steps, {hit['poisons_seen']} poisons seen), was at "
                 f"{hit['increase']:.1f}.")
  return out


def findings(runs, order, threshold) -> list[str]:
  """Sentences computed from the runs (means over seeds where several)."""
  final = {n: _mean(runs, n, "final_increase") for n in order}
  out = [_verdicts(runs, order, threshold)]
  if "first10" in final and "last10" in final:
    out.append(_ordering(runs))
  for n in order:
    peak, frac = _mean(runs, n, "peak_increase"), _mean(runs, n, "peak_fraction")
    if frac < 1.0 and peak > 0 and final[n] < 0.5 * peak:  # Decayed.
      out.append(f"{n} peaked at {peak:.1f} (fraction {frac:.2f}) and ended at "
                 f"{final[n]:.1f}: the training after the peak erased most of it.")
  if "uniform" in final:
    for n in order:
      if n != "uniform":
        out.append(f"{n} vs uniform: final increase {final[n]:.1f} vs "
                   f"{final['uniform']:.1f}.")
  return out


def report(cfg, rows, runs, order, threshold, provenance) -> str:
  b = cfg.study.base
  seeds = sorted({r["seed"] for r in runs})
  lines = [
      "# Poison placement and density (CPU scale)", "",
      f"Generated by `experiments/exp_placement.py` from `results.csv` and "
      "`runs.json`; figure `placement.png`.", "",
      "## Setup", "",
      f"{', '.join(cfg.study.grid.sizes)}, {list(cfg.study.grid.poison_counts)} "
      f"poisons, {b.train.tokens_per_param:g} clean tokens per parameter, "
      f"poisons {b.poison.budget_mode.upper()} clean tokens (every placement "
      "has the same steps and learning-rate schedule: warmup then cosine to "
      f"{b.train.min_lr_ratio:g} of the peak), batch {b.train.batch_size} x "
      f"{b.data.seq_len}, grid seeds {seeds} (the study's derived seeds: "
      "same init, clean data and poison documents for every placement). "
      f"{b.eval.num_excerpts} prompts, {b.eval.num_evals} evaluations + the "
      "first and the last. The placements (`config.poison.placement`, "
      "poisonjax/data/mixer.py):", ""]
  lines += [f"- {n}: `{dict(cfg.placements[n])}`" for n in order]
  lines += ["", "## Results", "",
            "Poison steps and the count per step are read from each run's "
            "manifest. Final increase with its bootstrap interval; success "
            f"share = prompts whose increase > {threshold:g}.", "",
            "| placement | seed | poisons at steps | steps with poisons / most "
            "in one | final increase [95% CI] | success share | peak (at "
            "fraction) | crossed the threshold |",
            "|---|---|---|---|---|---|---|---|"]
  lines += [_row(r, threshold) for n in order for r in runs if r["placement"] == n]
  lines += ["", "## Findings", ""] + [f"- {s}" for s in findings(runs, order, threshold)]
  same = equal_poisoned_steps(rows, runs, order)
  if same:
    lines += ["", "At an equal number of poisoned optimizer steps (same seed; "
              "uniform's evaluations bracket it from above):", ""]
    lines += [f"- {s}" for s in same]
  lines += ["", "## Context and caveats", "", f"- {PAPER}",
            "- Here a placement also decides how much clean training follows "
            "the last poison (about 90% of the run for first10, none for "
            "last10) and the learning rate the poisons meet (near the peak "
            "early, decayed by the cosine schedule late); the experiment "
            "does not separate the two (experiments/exp_persistence.py "
            "measures the decay under clean training).",
            f"- {len(seeds)} seed(s) per placement: differences between "
            "placements within one seed's bootstrap interval are not "
            "distinguishable here.",
            "- Evaluations per run: " + ", ".join(
                f"{r['placement']} {r['num_evals']}" for r in runs)
            + "; crossings are bracketed between two of them, not located.",
            "- Run directories: " + "; ".join(
                f"{r['placement']} `{r['workdir']}`" for r in runs) + ".",
            "", "## Provenance", ""] + provenance
  return "\n".join(lines) + "\n"
