"""N50 per size from one common-slope model (a parallel-line assay).

Per size k at 1x data: P(success) = expit(a_k + b log N), one intercept per
size and ONE slope b shared by all sizes, so N50_k = exp(-a_k / b). Why:
each size's own fit (analysis.firth_n50) has to estimate its slope from its
own few runs, and a poorly determined slope makes the N50 interval open
(a flat fit puts N50 anywhere); sharing the slope, as a bioassay's
parallel-line model does for relative potency, borrows strength across
sizes without assuming how N50 depends on size (analysis_size assumes a
power law). Whether the slopes may be shared is tested: the penalised
likelihood ratio of separate slopes against the common one (K - 1 df), the
common model fitted as the constraint b_1 = ... = b_K of the separate-slopes
design so both are on one penalised scale (analysis_firth).

Intervals: the profile penalised-likelihood 95% interval of log N50_k (the
constraint a_k = -b t in the common model), and a bootstrap that resamples
seeds as clusters (analysis.cluster_resample) and refits (percentiles; a
resample where b <= 0 counts at both ends).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from poisonjax.study import analysis
from poisonjax.study import analysis_firth as firth


def _designs(runs: analysis.Runs, sizes: list[str]):
  """Common-slope design [one-hot size, log N] and the separate-slopes one."""
  onehot = np.stack([(runs.size == s).astype(float) for s in sizes], axis=1)
  log_n = np.log(runs.poisons)
  return np.c_[onehot, log_n], np.c_[onehot, onehot * log_n[:, None]]


def _n50_constraint(k: int, n_sizes: int, t: float) -> np.ndarray:
  """M with theta = M phi, phi = (the other intercepts, b), a_k = -b t."""
  M = np.zeros((n_sizes + 1, n_sizes))
  others = [j for j in range(n_sizes) if j != k]
  for col, j in enumerate(others):
    M[j, col] = 1.0
  M[k, -1], M[-1, -1] = -t, 1.0
  return M


def _profile(X, y, fit, k, n_sizes, counts) -> tuple[float, float]:
  a, b = fit.theta[k], fit.theta[-1]
  t_hat = -a / b
  start = list(np.delete(fit.theta[:-1], k)) + [b]
  flat = list(np.delete(fit.theta[:-1], k)) + [-b]

  def deviance(t):
    prof = firth.fit(X, y, _n50_constraint(k, n_sizes, t), starts=[start, flat])
    return 2 * (fit.loglik - prof.loglik)

  lo, hi = firth.profile_interval(deviance, t_hat, min(t_hat, math.log(min(counts))) - 4,
                                  max(t_hat, math.log(max(counts))) + 4)
  return math.exp(lo), math.exp(hi)


def _parallel_test(Xsep, y, n_sizes) -> dict:
  sep = firth.fit(Xsep, y)
  M = np.zeros((2 * n_sizes, n_sizes + 1))
  M[:n_sizes, :n_sizes] = np.eye(n_sizes)
  M[n_sizes:, -1] = 1.0
  common = firth.fit(Xsep, y, M, starts=[np.r_[np.zeros(n_sizes), 1.0]])
  dev = max(0.0, 2 * (sep.loglik - common.loglik))
  return {"deviance": dev, "df": n_sizes - 1,
          "p": float(stats.chi2.sf(dev, n_sizes - 1))}


def _bootstrap(runs, y, sizes, n_boot, rng) -> list[list[float]]:
  draws = np.full((n_boot, len(sizes)), math.nan)
  for i in range(n_boot):
    idx = analysis.cluster_resample(runs.seed, rng)
    sub, ys = runs.take(idx), y[idx]
    present = [s for s in sizes if np.any(sub.size == s)]
    if len(np.unique(sub.poisons)) < 2:
      continue
    fit = firth.fit(_designs(sub, present)[0], ys)
    if fit.theta[-1] > 0 and math.isfinite(fit.loglik):
      for j, s in enumerate(sizes):
        if s in present:
          draws[i, j] = math.exp(-fit.theta[present.index(s)] / fit.theta[-1])
  return [[float(np.quantile(np.where(np.isnan(d), 0.0, d), 0.025, method="lower")),
           float(np.quantile(np.where(np.isnan(d), math.inf, d), 0.975, method="higher"))]
          for d in draws.T]


def per_size(runs: analysis.Runs, threshold: float = analysis.SUCCESS_INCREASE,
             n_boot: int = analysis.BOOTSTRAP_SAMPLES,
             seed: int = analysis.BOOTSTRAP_SEED) -> dict:
  """N50 per size at 1x data under a common slope, with both intervals."""
  runs = runs.take(np.flatnonzero(runs.data_multiplier == 1.0))
  y = runs.success(threshold)
  sizes = [s for _, s in sorted({(float(p), str(s)) for p, s in zip(runs.params, runs.size)})]
  if len(sizes) < 2 or len(np.unique(runs.poisons)) < 2 or y.min() == y.max():
    return {"fitted": False, "n_runs": len(runs)}
  X, Xsep = _designs(runs, sizes)
  fit = firth.fit(X, y)
  b = float(fit.theta[-1])
  if b <= 0:
    return {"fitted": False, "n_runs": len(runs), "slope": b}
  boot = _bootstrap(runs, y, sizes, n_boot, np.random.default_rng(seed))
  rows = []
  for k, s in enumerate(sizes):
    counts = sorted({float(v) for v in runs.poisons[runs.size == s]})
    lo, hi = _profile(X, y, fit, k, len(sizes), counts)
    rows.append({"size": s, "n50": math.exp(-fit.theta[k] / b), "profile": [lo, hi],
                 "boot": boot[k]})
  return {"fitted": True, "n_runs": len(runs), "slope": b, "rows": rows,
          "parallel_test": _parallel_test(Xsep, y, len(sizes)), "n_boot": n_boot}
