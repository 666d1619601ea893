"""The sections of a study's report.md, each written from computed numbers.

Every function takes the results of poisonjax.study.analysis* (and the
study's final rows) and returns markdown lines; none holds a number of its
own. report.py puts them together.
"""

from __future__ import annotations

import math

from poisonjax.study import analysis
from poisonjax.study import count_vs_share

CHINCHILLA_TOKENS_PER_PARAM = 20.0


def _span(values, fmt="{:.3g}") -> str:
  vals = sorted(v for v in values if v is not None and not math.isnan(v))
  if not vals:
    return "n/a"
  lo, hi = fmt.format(vals[0]), fmt.format(vals[-1])
  return lo if lo == hi else f"{lo} to {hi}"


def _names(values, fmt="{}") -> str:
  return ", ".join(fmt.format(v) for v in sorted(set(values)))


def regime(runs: analysis.Runs, dropped: dict, reg: dict) -> list[str]:
  """Tokens per parameter, poison shares, seeds: what these runs are."""
  sizes = sorted({(float(p), str(s)) for s, p in zip(runs.size, runs.params)})
  lines = [
      "## Regime", "",
      f"- Runs: {len(runs)} finished runs with poisons"
      + "".join(f"; {n} left out ({why.replace('_', ' ')})"
                for why, n in dropped.items() if n) + ".",
      "- Sizes: " + ", ".join(f"{s} ({int(p):,} params)" for p, s in sizes) + ".",
      f"- Poison counts: {_names(int(v) for v in runs.poisons)}; seeds: "
      f"{_names(int(v) for v in runs.seed)}; data amounts: "
      f"{_names(runs.data_multiplier, '{:g}x')}.",
  ]
  if reg.get("clean_tokens_per_param"):
    lines.append(f"- Clean tokens per parameter (study config): "
                 f"{_span(reg['clean_tokens_per_param'])}.")
  lines.append(f"- Tokens seen per parameter by the end, poisons included "
               f"(measured): {_span(runs.tokens / runs.params)}.")
  share = runs.poisons / runs.tokens
  text = (f"- Poison share: {_span(share * 1e6, '{:.3g}')} poison documents "
          "per million tokens seen (measured)")
  if reg.get("tokens_per_poison"):
    text += (f"; about {_span(100 * share * reg['tokens_per_poison'], '{:.2g}')}% "
             f"of the tokens at the plan's estimate of {reg['tokens_per_poison']:.0f}"
             " tokens per poison")
  lines += [text + ".", ""]
  return lines


def fit_words(row: dict) -> str:
  est = row["estimate"]
  return {"fit": f"logistic, slope {est.slope:.2f} per log N",
          "separated": "separated: no ML fit, the limit is a step",
          "all_success": "every run succeeds", "no_success": "no run succeeds",
          "below": "fit crosses 50% below the counts tested",
          "above": "fit crosses 50% above the counts tested",
          "falling": "success does not rise with N"}[est.kind]


def _firth_cells(row: dict) -> str:
  f = row.get("firth")
  if f is None or math.isnan(f.n50):
    return "n/a | n/a"
  return (f"{f.n50:.3g} | "
          f"{analysis.format_interval({'lo': f.lo, 'hi': f.hi}, row['counts'])}")


def thresholds(rows: list[dict], threshold: float) -> list[str]:
  """The N50 table: estimate (or bound) and the bootstrap 95% interval."""
  n_boot = next((r["interval"]["n_boot"] for r in rows if r["interval"]), 0)
  lines = [
      "## Poison threshold N50", "",
      f"P(final increase > {threshold:g} | N) fitted per size and data amount "
      "by a logistic model in log N over all runs and seeds; N50 is the count "
      "at 50% success. N50 (ML): the maximum-likelihood answer, a range where "
      "the runs are separated. Its 95% interval: "
      f"{n_boot} bootstrap resamples of the seeds (all runs of a seed "
      "together; seeded), 2.5% quantile of the resamples' lower ends to 97.5% "
      "of their upper ends (a resample whose answer is a bound counts with the "
      "bound's ends). Firth N50: the penalised fit, finite under separation, "
      "with its profile penalised-likelihood 95% interval (runs independent). "
      "'< x' / '> x': below / above the counts tested.", "",
      "| data | size | params | runs (successes) | counts | N50 (ML) | seed "
      "bootstrap 95% | Firth N50 | profile 95% | fit | resamples by outcome |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in (r for r in rows if r["estimate"] is not None):
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["interval"]["kinds"].items()))
    lines.append(
        f"| {r['data_multiplier']:g}x | {r['size']} | {r['params']:,} | "
        f"{r['n_runs']} ({r['n_success']}) | {_names(r['counts'])} | "
        f"{analysis.format_n50(r['estimate'])} | "
        f"{analysis.format_interval(r['interval'], r['counts'])} | "
        f"{_firth_cells(r)} | {fit_words(r)} | {kinds} |")
  lines += [""] + [overlap(rows, m) for m in sorted({r["data_multiplier"] for r in rows})
                   if sum(1 for r in rows if r["data_multiplier"] == m
                          and r["estimate"] is not None) > 1]
  few = [f"{r['size']} at {r['data_multiplier']:g}x ({r['n_runs']} run)"
         for r in rows if r["estimate"] is None]
  if few:
    lines += ["", "Not fitted, fewer than two runs: " + ", ".join(few) + "."]
  return lines + [""]


def overlap(rows: list[dict], mult: float) -> str:
  """Whether the sizes' N50 intervals at one data amount share a count."""
  here = [r for r in rows if r["data_multiplier"] == mult and r["estimate"] is not None]
  lo = max(r["interval"]["lo"] for r in here)
  hi = min(r["interval"]["hi"] for r in here)
  sizes = ", ".join(f"{r['size']} {analysis.format_n50(r['estimate'])}" for r in here)
  if lo <= hi:
    return (f"- {mult:g}x data: N50 by size {sizes}; all {len(here)} intervals "
            f"share the counts {lo:.3g} to {hi:.3g}, so these runs show no detectable "
            "difference in N50 between sizes.")
  return (f"- {mult:g}x data: N50 by size {sizes}; the intervals do not all "
          "overlap, so N50 differs between some sizes.")


def _model_row(name: str, m: dict) -> str:
  w, b = m["size_slope_wald"], m["size_slope_boot"]
  slope = ("not identified (separated) | - | -" if m.get("separated") else
           "no size term (one size) | - | -" if math.isnan(m["size_slope"]) else
           f"{m['size_slope']:.3f} | [{w[0]:.3f}, {w[1]:.3f}] | "
           f"[{b[0]:.3f}, {b[1]:.3f}]")
  return (f"| {m['response'].replace('_', ' ')} | {m['predictor']} | "
          f"{m['loglik']:.2f} | {m['k']} | {m['aic']:.2f} | {slope} |")


def _both_separated(resp: str, models: dict) -> bool:
  return all(models[f"{resp}/{p}"].get("separated") for p in count_vs_share.PREDICTORS)


def _separated_line(resp: str, models: dict) -> str | None:
  """Where a response's models separate the runs, what that leaves of the
  comparison (None where neither does)."""
  sep = [p for p in count_vs_share.PREDICTORS if models[f"{resp}/{p}"].get("separated")]
  name = resp.replace("_", " ").capitalize()
  if len(sep) == 2:
    return (f"- {name}: both models separate the runs (with log size, log count "
            "and log share each put no failure on the successes' side, ties "
            "allowed), so neither likelihood has a maximum and these runs "
            "cannot rank them on success.")
  if sep:
    sized = len(models[f"{resp}/{sep[0]}"]["beta"]) > 2
    where = f"a plane in log {sep[0]} and log size" if sized else f"a cut in log {sep[0]}"
    return (f"- {name}: the {sep[0]} model separates the runs ({where} has no "
            "failure on the successes' side, ties allowed) and the other does "
            "not: its likelihood has no maximum, the log-likelihood shown is "
            "near its supremum (a real advantage)"
            + (", and its size slope is not identified." if sized else "."))
  return None


MIN_CLUSTERS = 5  # Fewer seeds give too few distinct resamples to trust.


def verdict(resp: str, r: dict, n_boot: int, n_clusters: int = MIN_CLUSTERS) -> str:
  """One response's answer: which predictor, by how much, how sure (never
  decisive on fewer than MIN_CLUSTERS seeds: the bootstrap's agreement
  share then comes from a handful of distinct resamples)."""
  other = "share" if r["better"] == "count" else "count"
  boot = r["boot_count_better"] if r["better"] == "count" else 1 - r["boot_count_better"]
  sure = ("decisive" if abs(r["delta_aic"]) > 10 and boot >= 0.95 else
          "clear but not decisive" if abs(r["delta_aic"]) > 2 and boot >= 0.8 else
          "weak")
  if sure == "decisive" and n_clusters < MIN_CLUSTERS:
    sure = (f"clear but not decisive (decisive needs {MIN_CLUSTERS} or more "
            f"seeds to resample; there are {n_clusters})")
  return (f"- {resp.replace('_', ' ').capitalize()}: **{r['better']}** describes "
          f"the runs better than {other}: dAIC = AIC(share) - AIC(count) = "
          f"{r['delta_aic']:.2f} (Akaike weight of count {r['count_weight']:.3f}); "
          f"{r['better']} has the lower AIC in {100 * boot:.1f}% of {n_boot} "
          f"bootstrap resamples (resampled dAIC 95% range "
          f"[{r['boot_delta_aic'][0]:.1f}, {r['boot_delta_aic'][1]:.1f}]). "
          f"Evidence: {sure}.")


def size_effect(resp: str, r: dict, models: dict, n_clusters: int = 0) -> str:
  """The better model's slope on log size, and whether its interval holds 0
  (flagged as unreliable with fewer than five seeds to resample)."""
  m = models[f"{resp}/{r['better']}"]
  if m.get("separated"):
    return (f"- {resp.replace('_', ' ').capitalize()}, {r['better']} model: "
            "slope on log size not identified (the model separates the runs).")
  lo, hi = m["size_slope_boot"]
  where = ("includes 0: no detectable effect of size" if lo <= 0 <= hi else
           "excludes 0: size matters")
  return (f"- {resp.replace('_', ' ').capitalize()}, {r['better']} model: slope "
          f"on log size {m['size_slope']:.3f}, bootstrap 95% [{lo:.3f}, {hi:.3f}] "
          f"{where} at a fixed {r['better']}"
          + (f" (only {n_clusters} seeds to resample: unreliable, see Caveats)."
             if 0 < n_clusters < MIN_CLUSTERS else "."))


def model_table(c: dict) -> list[str]:
  """The four models' fits, one row each (a table with its header)."""
  return (["| response | predictor | log-likelihood | parameters | AIC | slope on "
           "log size | Wald 95% | bootstrap 95% |", "|---|---|---|---|---|---|---|---|"]
          + [_model_row(k, m) for k, m in c["models"].items()])


def verdict_lines(c: dict) -> list[str]:
  """Per response: the separation note where there is one, and the verdict."""
  lines = []
  for k, r in c["responses"].items():
    sep = _separated_line(k, c["models"])
    lines += ([sep] if sep else []) + ([] if _both_separated(k, c["models"]) else
                                       [verdict(k, r, c["n_boot"], c["n_clusters"])])
  return lines


def comparison(c: dict, threshold: float) -> list[str]:
  lines = ["## Count versus share", ""]
  if not c.get("fitted"):
    return lines + [f"Not fitted: {c['reason']} ({c['n_runs']} runs, "
                    f"{c['n_success']} successes).", ""]
  lines += [
      f"Success (final increase > {threshold:g}, logistic) and log(final "
      f"increase, floored at {count_vs_share.INCREASE_FLOOR:g}; least "
      "squares, Gaussian likelihood) fitted against log(poisons seen) = "
      "**count** and against log(poisons seen / tokens seen) = **share**, "
      "each with log(parameters) as a covariate. Slope on log size: Wald 95% "
      "interval (inverse observed information) and bootstrap percentile 95% "
      f"interval ({c['n_boot']} resamples of the {c['n_clusters']} seeds as "
      f"clusters, seed {c['seed']}).", "",
  ] + model_table(c)
  lines += ["", "Evidence: decisive where |dAIC| > 10 and >= 95% of resamples "
            f"agree, with {MIN_CLUSTERS} or more seeds to resample; clear but "
            "not decisive where |dAIC| > 2 and >= 80% agree; weak otherwise.", ""]
  lines += verdict_lines(c)
  lines += [size_effect(k, r, c["models"], c["n_clusters"])
            for k, r in c["responses"].items()
            if not _both_separated(k, c["models"])]
  lines += [f"- With log size in both models, log share differs from log count "
            f"only through tokens per parameter (data amounts, poison tokens): "
            f"the residual SD of log share given log count and log size is "
            f"{c['contrast_sd']:.3f} (0 would make the two models identical).", ""]
  return lines


def caveats(runs, dropped, th_rows, comp, reg, finals) -> list[str]:
  """What limits these numbers, each with its number."""
  out = []
  tpp = reg.get("clean_tokens_per_param") or list(runs.tokens / runs.params)
  if max(tpp) < CHINCHILLA_TOKENS_PER_PARAM:
    ppl = [r["clean_ppl_mean"] for r in finals]
    out.append(f"Clean budget {_span(tpp)} tokens per parameter, below "
               f"Chinchilla's {CHINCHILLA_TOKENS_PER_PARAM:g}: the models are "
               f"far from converged (final clean perplexity {_span(ppl, '{:.1f}')}).")
  if reg.get("tokens_per_poison"):
    share = runs.poisons / runs.tokens * reg["tokens_per_poison"]
    if share.max() > 1e-3:
      out.append(f"Poisons are about {_span(100 * share, '{:.2g}')}% of the tokens "
                 "(estimated), orders of magnitude above a pretraining corpus's "
                 "(the paper's are of order 1e-6).")
  fitted = [r for r in th_rows if r["estimate"] is not None]
  sep = [r for r in fitted if r["estimate"].kind != "fit"]
  if fitted:
    out.append(f"Each N50 rests on {_span([len(r['counts']) for r in fitted], '{:.0f}')} "
               f"distinct counts x {_span([len(r['seeds']) for r in fitted], '{:.0f}')} "
               f"seeds; {len(sep)} of {len(fitted)} groups have no logistic fit "
               "(separated or one-sided), so their N50 is a range and their "
               "intervals are set by the counts tested, not by a fitted slope.")
  steps = reg.get("steps_by_group_span")
  if steps:
    out.append(f"Within a size and data amount, runs differ in optimizer steps "
               f"(up to {steps:.0%} more steps than the group's shortest run): "
               "the poisons came on top of the clean budget and lengthened the "
               "learning-rate schedule, so more poisons also meant more training.")
  if comp.get("fitted"):
    out.append(f"{comp['floored']} run(s) with a final increase below "
               f"{count_vs_share.INCREASE_FLOOR:g} are floored at it on the log "
               "scale.")
  k = len(set(int(s) for s in runs.seed))
  out.append(f"Every bootstrap resamples the {k} seed(s) as clusters "
             f"({analysis.distinct_resamples(k)} distinct resamples)"
             + ("; with so few clusters its percentile intervals are coarse "
                "and tend to be too narrow." if k < 5 else "."))
  if reg.get("num_excerpts"):
    out.append(f"Success is a fixed cut on the mean increase over "
               f"{reg['num_excerpts']} prompts per evaluation.")
  if dropped.get("unfinished"):
    out.append(f"{dropped['unfinished']} unfinished run(s) are left out of every fit.")
  return ["## Caveats", ""] + [f"- {c}" for c in out] + [""]


def _group_key(r: dict) -> tuple:
  return (r["data_multiplier"], r["params"], r["size"])


def _previous_n50_rows(prev: list[dict], now: list[dict]) -> list[str]:
  old = {_group_key(r): r for r in prev if r["estimate"] is not None}
  lines = ["| data | size | N50 before | 95% before | N50 now | 95% now |",
           "|---|---|---|---|---|---|"]
  for r in sorted((r for r in now if r["estimate"] is not None), key=_group_key):
    o = old.get(_group_key(r))
    before = ((analysis.format_n50(o["estimate"]),
               analysis.format_interval(o["interval"], o["counts"]))
              if o else ("not run", ""))
    lines.append(f"| {r['data_multiplier']:g}x | {r['size']} | {before[0]} | "
                 f"{before[1]} | {analysis.format_n50(r['estimate'])} | "
                 f"{analysis.format_interval(r['interval'], r['counts'])} |")
  return lines


def _previous_verdicts(prev: dict, now: dict) -> list[str]:
  out = []
  for resp in (now.get("responses") or {}):
    p = (prev.get("responses") or {}).get(resp)
    if p is None:
      continue
    r = now["responses"][resp]
    out.append(f"- {resp.replace('_', ' ').capitalize()}: before, {p['better']} "
               f"better by dAIC {p['delta_aic']:.2f} ({100 * p['boot_count_better']:.0f}% "
               f"of resamples favour count); now {r['better']} by dAIC "
               f"{r['delta_aic']:.2f} ({100 * r['boot_count_better']:.0f}%).")
  return out


def previous(prev_th, prev_comp, prev_reg, th, comp, reg, provenance) -> list[str]:
  """The same fits on the previous results.csv (OUT/previous/), side by side."""
  lines = ["## Changes since the previous run", "",
           "The previous results (OUT/previous/results.csv) fitted the same "
           "way as above. How they were made:", ""]
  lines += list(provenance or ["- (no provenance kept)"]) + [""]
  lines += _previous_n50_rows(prev_th, th) + [""]
  lines += _previous_verdicts(prev_comp, comp)
  before, after = prev_reg.get("steps_by_group_span"), reg.get("steps_by_group_span")
  lines.append(f"- Optimizer steps within a size and data amount: up to "
               f"{(before or 0):.0%} more than the group's shortest run before, "
               f"{(after or 0):.0%} now.")
  return lines + [""]
