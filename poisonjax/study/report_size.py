"""The report's opening: beta (the exponent of N50 in model size) with its
seed-clustered interval, N50 per size with its intervals, and the targets.

Every number comes from analysis_size, analysis_parallel and analysis
(passed in); report.py puts
these lines first, so the report's first line states beta and its interval.
"""

from __future__ import annotations

import math

from poisonjax.study import analysis
from poisonjax.study import analysis_firth


def _num(v: float, fmt: str = "{:.2f}") -> str:
  if v == math.inf:
    return "+inf"
  if v == -math.inf:
    return "-inf"
  return fmt.format(v)


def _interval(lo: float, hi: float, fmt: str = "{:.2f}") -> str:
  return f"[{_num(lo, fmt)}, {_num(hi, fmt)}]"


def _count_interval(lo: float, hi: float, counts: list) -> str:
  """A count interval; an end beyond the counts tested reads '< min' / '> max'."""
  return analysis.format_interval({"lo": lo, "hi": hi}, counts)


def _p(p: float) -> str:
  return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _few_clusters(k: int) -> str:
  n = analysis.distinct_resamples(k)
  if k >= 5:
    return f"{k} seeds, {n} distinct resamples"
  return (f"only {k} seeds, so only {n} distinct resamples: too few clusters "
          "for a reliable percentile interval, which comes out too narrow")


def headline(size: dict) -> list[str]:
  """The first paragraph: beta, its intervals, the two likelihood-ratio tests."""
  if not size.get("fitted"):
    return [f"**beta (the exponent of N50 in model size) not estimated**: "
            f"{size['reason']} ({size['n_runs']} runs at 1x data, "
            f"{size['n_success']} successes).", ""]
  t0, t1 = size["tests"]["0"], size["tests"]["1"]
  return [
      f"**beta = {size['beta']:.2f}, seed-clustered bootstrap 95% interval "
      f"{_interval(*size['boot'])}** (profile-likelihood 95% "
      f"{_interval(*size['profile'])}), where N50 is proportional to "
      "(model size)^beta: beta = 0 means a constant number of poisons, "
      "beta = 1 a constant share of the tokens. Likelihood-ratio tests: "
      f"beta = 0 p = {_p(t0['p'])}, beta = 1 p = {_p(t1['p'])}.", "",
      f"From one pooled Firth-penalised logistic model, success ~ log N + "
      f"log size, over the {size['n_runs']} runs at 1x data ({size['n_success']} "
      f"successes; sizes spanning {size['size_span']:.1f}x in parameters; seeds "
      f"{', '.join(map(str, size['seeds']))}). The bootstrap resamples seeds "
      f"as clusters ({size['n_boot']} resamples; {_few_clusters(size['n_clusters'])}; "
      f"{size['n_undefined']} resamples without an N50, counted at both ends); "
      "the profile "
      "interval and the tests (penalised likelihood ratio, chi-square 1 df, "
      f"cut {analysis_firth.CHI2_95:.2f}) treat runs as independent.", ""]


def _firth_cells(f, counts) -> str:
  if f is None or math.isnan(f.n50):
    return "n/a | n/a"
  return f"{f.n50:.3g} | {_count_interval(f.lo, f.hi, counts)}"


def n50_table(size: dict, parallel: dict, th_rows: list[dict]) -> list[str]:
  """N50 per size at 1x data by three models, each with its intervals."""
  pooled = {r["size"]: r for r in size.get("by_size", [])}
  common = {r["size"]: r for r in parallel.get("rows", [])}
  lines = ["| data | size | params | runs (successes) | counts | bracket (ML) | "
           "common slope N50 | profile 95% | seed bootstrap 95% | own slope "
           "(Firth) N50 | profile 95% | power law N50 | seed bootstrap 95% |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in th_rows:
    if r["data_multiplier"] != 1.0 or r["estimate"] is None:
      continue
    counts, c, p = r["counts"], common.get(r["size"]), pooled.get(r["size"])
    com = (f"{c['n50']:.3g} | {_count_interval(*c['profile'], counts)} | "
           f"{_count_interval(*c['boot'], counts)}" if c else "- | - | -")
    pool = f"{p['n50']:.3g} | {_count_interval(*p['boot'], counts)}" if p else "- | -"
    lines.append(
        f"| 1x | {r['size']} | {r['params']:,} | {r['n_runs']} ({r['n_success']}) | "
        f"{', '.join(map(str, counts))} | {analysis.format_n50(r['estimate'])} | "
        f"{com} | {_firth_cells(r['firth'], counts)} | {pool} |")
  return lines + [""]


def models_note(parallel: dict) -> list[str]:
  """What the three N50 columns are, and whether a common slope fits."""
  note = ("Bracket: maximum likelihood per size (a range where the runs are "
          "separated). Common slope: one Firth model with an intercept per "
          "size and one slope in log N (analysis_parallel)")
  if parallel.get("fitted"):
    t = parallel["parallel_test"]
    note += (f"; separate slopes vs the common one: penalised likelihood ratio "
             f"{t['deviance']:.2f}, {t['df']} df, p = {_p(t['p'])}"
             + (" (rejected: use the own-slope column)" if t["p"] < 0.05 else ""))
  note += (". Own slope: each size's Firth fit alone. Power law: the pooled "
           "model behind beta. Profile intervals treat runs as independent; "
           "seed bootstraps resample seeds.")
  return [note, ""]


def _factor(v: float) -> str:
  return "unbounded" if v == math.inf else f"x{v:.2f}"


def target_lines(tg: dict) -> list[str]:
  """Which targets are met, each with the numbers that decide it."""
  lines = ["Targets (each judged on the wider of its two intervals):"]
  for r in tg["n50"]:
    lines.append(
        f"- N50 of {r['size']} within a factor of {tg['n50_factor']:g} (95%): "
        f"**{'met' if r['met'] else 'not met'}** ("
        + ("" if r["inside"] else "an interval reaches beyond the counts tried, "
           "where the logistic curve is extrapolated; ")
        + f"profile interval reaches "
        f"{_factor(r['profile_factor'])}, seed bootstrap "
        f"{_factor(r['boot_factor'])} from the {r['source']} N50 {r['n50']:.3g}).")
  if not tg["n50"]:
    lines.append("- N50 per size within a factor of "
                 f"{tg['n50_factor']:g}: not assessed (no size fitted at 1x data).")
  b = tg.get("beta")
  if b:
    lines.append(
        f"- beta's 95% interval narrower than +-{tg['beta_half_width']:g}: "
        f"**{'met' if b['met'] else 'not met'}** (half-width: seed bootstrap "
        f"{_num(b['boot_half'])}, profile {_num(b['profile_half'])}).")
  else:
    lines.append(f"- beta's 95% interval narrower than +-{tg['beta_half_width']:g}: "
                 "not assessed (beta not estimated).")
  return lines + [""]


def opening(size: dict, parallel: dict, th_rows: list[dict], tg: dict) -> list[str]:
  table = n50_table(size, parallel, th_rows)
  if len(table) > 3:  # Header, rule, a row at least, blank.
    table = (["N50 per size at 1x data (the count at 50% success; intervals "
              "95%):", ""] + table + models_note(parallel))
  else:
    table = ["N50 per size at 1x data: no size has two runs with poisons yet.", ""]
  return headline(size) + table + target_lines(tg)
