"""beta, the exponent of N50 in model size: count (0) or share (1)?

One pooled model over the runs at 1x data (tokens proportional to
parameters P): P(success) = expit(a + b log N + c log P). Then
N50(P) = exp(-(a + c log P) / b) and log N50 is linear in log P with slope
beta = -c / b. beta = 0 is the count hypothesis (the same number of poisons
at every size); beta = 1 the share hypothesis (at a fixed tokens-per-
parameter budget the share N / tokens is N / P up to a constant).

Fits are Firth-penalised (analysis_firth): these runs are often separated.
beta = beta0 is the linear constraint c = -beta0 b, i.e. the model
a + b (log N - beta0 log P); its profile deviance D(beta0) gives the
penalised likelihood-ratio tests of beta = 0 and beta = 1 (chi-square, 1
df) and the profile 95% interval {D <= 3.84}. These treat runs as
independent. The headline interval does not: a bootstrap that resamples
SEEDS with replacement (analysis.cluster_resample: all runs of a seed
together, since a seed fixes the poisons and data order in every cell),
refits, and takes the 2.5% and 97.5% percentiles of beta; a resample with
no N50 (slope b <= 0, or fewer than two sizes or counts) counts at both
ends (-inf and +inf), so it widens the interval. The pooled model's N50 per
size comes from the same fits. With few seeds the percentile bootstrap is
too narrow: on synthetic grids like tests/test_study_size.py's (three sizes,
seeds shifting log N50 by SD 0.15) it held the true beta in 10 and 13 of 15
grids with 5 seeds (beta 0 and 1), in 13 and 14 of 15 with 8, where the
profile interval held it in 14 and 14 with 5; hence the targets take the
wider of the two.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from poisonjax.study import analysis
from poisonjax.study import analysis_firth as firth

BETA_LIMIT = 10.0  # Profile search: beta within beta_hat +- this.


def pooled_runs(runs: analysis.Runs) -> analysis.Runs:
  """The runs the pooled model uses: those at 1x data."""
  return runs.take(np.flatnonzero(runs.data_multiplier == 1.0))


def design(runs: analysis.Runs) -> np.ndarray:
  return np.c_[np.ones(len(runs)), np.log(runs.poisons), np.log(runs.params)]


def identified(runs: analysis.Runs) -> bool:
  return len(np.unique(runs.params)) > 1 and len(np.unique(runs.poisons)) > 1


def _beta_of(theta) -> float:
  """-c / b; nan where the fitted success does not rise with N (b <= 0)."""
  _, b, c = theta
  return -c / b if b > 0 else math.nan


def _fit(runs, y) -> firth.FirthFit | None:
  if not identified(runs):
    return None
  fit = firth.fit(design(runs), y)
  return fit if math.isfinite(fit.loglik) else None


def profile_deviance(X, y, full: firth.FirthFit, beta0: float) -> float:
  """Twice the penalised log-likelihood lost by imposing beta = beta0."""
  M = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -beta0]])
  a, b, _ = full.theta
  prof = firth.fit(X, y, M, starts=[[a, b], [a, -b]])
  return max(0.0, 2 * (full.loglik - prof.loglik))


def n50_at(theta, params) -> float:
  """The pooled model's N50 at a size (nan where b <= 0)."""
  a, b, c = theta
  return float(np.exp(-(a + c * np.log(params)) / b)) if b > 0 else math.nan


def _bootstrap(runs, y, sizes, n_boot, rng) -> dict:
  """beta and N50 per size over seed resamples (see module docstring)."""
  betas, n50s, undefined = np.empty(n_boot), np.empty((n_boot, len(sizes))), 0
  for i in range(n_boot):
    idx = analysis.cluster_resample(runs.seed, rng)
    fit = _fit(runs.take(idx), y[idx])
    beta = _beta_of(fit.theta) if fit is not None else math.nan
    betas[i] = beta
    n50s[i] = [n50_at(fit.theta, p) if fit is not None else math.nan for p in sizes]
    undefined += math.isnan(beta)
  q = lambda v, lo_fill, hi_fill, p: float(np.quantile(
      np.where(np.isnan(v), lo_fill if p < 0.5 else hi_fill, v), p,
      method="lower" if p < 0.5 else "higher"))
  return {"n_boot": n_boot, "n_undefined": int(undefined),
          "beta": [q(betas, -math.inf, math.inf, 0.025),
                   q(betas, -math.inf, math.inf, 0.975)],
          "n50": [[q(n50s[:, j], 0.0, math.inf, 0.025),
                   q(n50s[:, j], 0.0, math.inf, 0.975)] for j in range(len(sizes))]}


def size_exponent(runs: analysis.Runs, threshold: float = analysis.SUCCESS_INCREASE,
                  n_boot: int = analysis.BOOTSTRAP_SAMPLES,
                  seed: int = analysis.BOOTSTRAP_SEED) -> dict:
  """beta with its seed-clustered bootstrap and profile intervals, the
  likelihood-ratio tests of beta = 0 and 1, and the pooled N50 per size."""
  runs = pooled_runs(runs)
  y = runs.success(threshold)
  out = {"n_runs": len(runs), "n_success": int(y.sum()),
         "seeds": sorted({int(s) for s in runs.seed})}
  fit = _fit(runs, y) if 0 < y.sum() < len(y) else None
  if fit is None or math.isnan(_beta_of(fit.theta)):
    why = ("fewer than two sizes or counts at 1x data" if not identified(runs) else
           "all runs at 1x share one outcome" if fit is None else
           "success does not rise with N")
    return {**out, "fitted": False, "reason": why}
  X, beta = design(runs), _beta_of(fit.theta)
  dev = lambda b0: profile_deviance(X, y, fit, b0)
  lo, hi = firth.profile_interval(dev, beta, beta - BETA_LIMIT, beta + BETA_LIMIT)
  sizes = sorted({(float(p), str(s)) for p, s in zip(runs.params, runs.size)})
  boot = _bootstrap(runs, y, [p for p, _ in sizes], n_boot,
                    np.random.default_rng(seed))
  by_size = [{"size": s, "params": int(p), "n50": n50_at(fit.theta, p),
              "boot": boot["n50"][j]} for j, (p, s) in enumerate(sizes)]
  tests = {}
  for b0 in (0.0, 1.0):
    d = dev(b0)
    tests[f"{b0:g}"] = {"deviance": d, "p": float(stats.chi2.sf(d, 1))}
  return {**out, "fitted": True, "beta": beta, "theta": [float(v) for v in fit.theta],
          "profile": [lo, hi], "boot": boot["beta"], "n_boot": n_boot,
          "n_undefined": boot["n_undefined"], "bootstrap_seed": seed,
          "n_clusters": len(out["seeds"]), "tests": tests, "by_size": by_size,
          "size_span": sizes[-1][0] / sizes[0][0]}


N50_FACTOR = 1.5  # Target: N50 per size within this factor (95%).
BETA_HALF_WIDTH = 0.5  # Target: beta's 95% interval narrower than +- this.


def _factor(est: float, lo: float, hi: float) -> float:
  """How far an interval reaches from its estimate, as a factor (>= 1)."""
  if not (est > 0 and lo > 0 and math.isfinite(hi)):
    return math.inf
  return max(hi / est, est / lo)


def _within_counts(lo: float, hi: float, counts: list) -> bool:
  """Whether an interval lies inside the counts tried (an end outside them is
  the logistic curve extrapolated, not measured)."""
  return min(counts) <= lo and hi <= max(counts)


def _n50_targets(parallel: dict, th_rows: list[dict]) -> list[dict]:
  """Per size at 1x: the common-slope N50 (analysis_parallel) where the
  slopes may be shared (its parallelism test p >= 0.05), else the size's
  own Firth fit with its group's seed bootstrap."""
  counts = {r["size"]: r["counts"] for r in th_rows if r["data_multiplier"] == 1.0}
  shared = parallel.get("fitted") and parallel["parallel_test"]["p"] >= 0.05
  if shared:
    return [{"size": r["size"], "n50": r["n50"], "source": "common slope",
             "factors": (_factor(r["n50"], *r["profile"]), _factor(r["n50"], *r["boot"])),
             "inside": all(_within_counts(*ci, counts[r["size"]])
                           for ci in (r["profile"], r["boot"]))}
            for r in parallel["rows"]]
  out = []
  for r in th_rows:
    if r["data_multiplier"] == 1.0 and r.get("firth") is not None:
      f, ci = r["firth"], r["interval"]
      out.append({"size": r["size"], "n50": f.n50, "source": "own slope",
                  "factors": (_factor(f.n50, f.lo, f.hi),
                              _factor(f.n50, ci["lo"], ci["hi"])),
                  "inside": (_within_counts(f.lo, f.hi, r["counts"])
                             and _within_counts(ci["lo"], ci["hi"], r["counts"]))})
  return out


def targets(size: dict, parallel: dict, th_rows: list[dict]) -> dict:
  """The study's two targets, each judged on the wider of two intervals.

  n50: per size at 1x data, the profile interval and the seed-clustered
  bootstrap interval must both lie within N50_FACTOR of the estimate and
  inside the counts tried (_n50_targets says which estimate). beta: the
  seed-clustered bootstrap and the profile interval must both be narrower
  than +- BETA_HALF_WIDTH.
  """
  n50 = [{**r, "profile_factor": r["factors"][0], "boot_factor": r["factors"][1],
          "met": max(r["factors"]) <= N50_FACTOR and r["inside"]}
         for r in _n50_targets(parallel, th_rows)]
  for r in n50:
    del r["factors"]
  out = {"n50": n50, "n50_factor": N50_FACTOR, "beta_half_width": BETA_HALF_WIDTH}
  if size.get("fitted"):
    half = [(hi - lo) / 2 for lo, hi in (size["boot"], size["profile"])]
    out["beta"] = {"boot_half": half[0], "profile_half": half[1],
                   "met": max(half) < BETA_HALF_WIDTH}
  return out
