"""Count versus share as a model comparison, on a study's final results.

Two responses, each fitted against two predictors with log(parameters) as a
covariate (three coefficients each):
  success        logistic, P(final increase > threshold)
  log increase   least squares on log(max(final increase, INCREASE_FLOOR)),
                 Gaussian likelihood with the ML variance (one more parameter)
  count          log(poisons seen)
  share          log(poisons seen / tokens seen): the poison documents' share
                 of the tokens; with an intercept in the model, a constant
                 number of tokens per poison changes only the intercept.
Both models of a response have the same number of parameters, so their AIC
difference is twice their log-likelihood difference; dAIC = AIC(share) -
AIC(count) > 0 favours count. How sure: the Akaike weight of count,
exp(-AIC_c/2) / (exp(-AIC_c/2) + exp(-AIC_s/2)), and the share of bootstrap
resamples (seeds resampled as clusters, analysis.cluster_resample; seeded)
in which count has the lower AIC. The slope on log(size) has a Wald 95% interval
(inverse observed information) and a bootstrap percentile 95% interval.
A logistic model whose predictors separate successes from failures
(analysis.separates) has no maximum-likelihood fit: it is flagged
"separated", its log-likelihood is the bound 0 and its coefficients are
not identified, so the report gives no slope for it.

With log size in the model, log share = log count - log tokens differs from
log count only through the tokens per parameter (data amounts, poison tokens
on top); `contrast_sd` measures that difference: when it is near zero the
two models cannot be told apart by these runs. At one data amount (tokens
proportional to parameters) it is near zero, so `arms` also compares them on
the runs where they differ: the sizes run at several data amounts (a single
size's runs have no log size column).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from poisonjax.study import analysis

INCREASE_FLOOR = 1.0  # log scale: increases below 1 (no backdoor) count as 1.
PREDICTORS = ("count", "share")
RESPONSES = ("success", "log_increase")
_Z95 = float(stats.norm.ppf(0.975))


def design(runs: analysis.Runs, predictor: str) -> np.ndarray:
  """Columns: intercept, log(predictor), log(parameters) (the last only
  where the runs have more than one size)."""
  x = runs.poisons if predictor == "count" else runs.poisons / runs.tokens
  cols = [np.ones(len(runs)), np.log(x)]
  if len(np.unique(runs.params)) > 1:
    cols.append(np.log(runs.params))
  return np.stack(cols, axis=1)


def response(runs: analysis.Runs, name: str, threshold: float) -> np.ndarray:
  if name == "success":
    return runs.success(threshold)
  return np.log(np.maximum(runs.increase, INCREASE_FLOOR))


def fit_least_squares(X: np.ndarray, y: np.ndarray) -> dict:
  """OLS with the Gaussian log-likelihood at the ML variance (RSS / n)."""
  beta, *_ = np.linalg.lstsq(X, y, rcond=None)
  rss = float(np.sum((y - X @ beta) ** 2))
  n, k = X.shape
  var_ml = max(rss / n, 1e-300)
  loglik = -0.5 * n * (math.log(2 * math.pi * var_ml) + 1)
  cov = rss / max(n - k, 1) * np.linalg.pinv(X.T @ X)
  return {"beta": beta, "loglik": loglik, "k": k + 1, "cov": cov}


def fit_model(runs, resp: str, predictor: str, threshold: float) -> dict:
  """One model: coefficients, log-likelihood, parameter count and AIC."""
  X, y = design(runs, predictor), response(runs, resp, threshold)
  if resp == "success":
    f = analysis.fit_logistic(X, y)
    out = {"beta": f.beta, "loglik": f.loglik, "k": X.shape[1], "cov": f.cov,
           "separated": analysis.separates(X, y)}
  else:
    out = {**fit_least_squares(X, y), "separated": False}
  out["aic"] = 2 * out["k"] - 2 * out["loglik"]
  return out


def _size_slope(fit: dict) -> tuple[float, float, float]:
  if len(fit["beta"]) < 3:
    return math.nan, math.nan, math.nan
  b = float(fit["beta"][2])
  if fit["cov"] is None or not fit["cov"][2, 2] >= 0:
    return b, math.nan, math.nan
  se = math.sqrt(fit["cov"][2, 2])
  return b, b - _Z95 * se, b + _Z95 * se


def _fits(runs, threshold) -> dict:
  return {(r, p): fit_model(runs, r, p, threshold)
          for r in RESPONSES for p in PREDICTORS}


def _resample(runs: analysis.Runs, rng) -> analysis.Runs:
  """Seeds drawn with replacement, each with all of its runs."""
  return runs.take(analysis.cluster_resample(runs.seed, rng))


# Below this residual SD of log share given log count and log size, the two
# predictors are one (all runs at one data amount: the share moves only by
# the poisons' own tokens), and comparing them would report noise.
COLLINEAR_SD = 1e-3


def contrast_sd(runs: analysis.Runs) -> float:
  """SD of log share left after regressing it on log count and log size."""
  X = design(runs, "count")
  y = design(runs, "share")[:, 1]
  beta, *_ = np.linalg.lstsq(X, y, rcond=None)
  return float(np.std(y - X @ beta))


def compare(runs: analysis.Runs, threshold: float = analysis.SUCCESS_INCREASE,
            n_boot: int = analysis.BOOTSTRAP_SAMPLES,
            seed: int = analysis.BOOTSTRAP_SEED) -> dict:
  """Both responses against both predictors, with the bootstrap (see above)."""
  y = runs.success(threshold)
  if len(runs) < 6 or y.min() == y.max():
    return {"fitted": False, "n_runs": len(runs), "n_success": int(y.sum()),
            "reason": ("fewer than 6 runs" if len(runs) < 6 else
                       "all runs share one outcome")}
  sd = contrast_sd(runs)
  if sd < COLLINEAR_SD:
    return {"fitted": False, "n_runs": len(runs), "n_success": int(y.sum()),
            "contrast_sd": sd,
            "reason": ("count and share coincide here: with log size in both "
                       "models the residual SD of log share given log count is "
                       f"{sd:.1e}, so the two fits are the same model")}
  fits = _fits(runs, threshold)
  rng = np.random.default_rng(seed)
  boot_daic = {r: np.empty(n_boot) for r in RESPONSES}
  boot_slope = {k: np.empty(n_boot) for k in fits}
  for b in range(n_boot):
    bf = _fits(_resample(runs, rng), threshold)
    for r in RESPONSES:
      boot_daic[r][b] = bf[(r, "share")]["aic"] - bf[(r, "count")]["aic"]
    for k in fits:
      boot_slope[k][b] = _size_slope(bf[k])[0]
  out = {"fitted": True, "n_runs": len(runs), "n_success": int(y.sum()),
         "n_boot": n_boot, "seed": seed,
         "n_clusters": len(np.unique(runs.seed)), "contrast_sd": contrast_sd(runs),
         "floored": int(np.sum(runs.increase < INCREASE_FLOOR)), "models": {},
         "responses": {}}
  for (r, p), f in fits.items():
    b, lo, hi = _size_slope(f)
    blo, bhi = np.quantile(boot_slope[(r, p)], [0.025, 0.975]) if math.isfinite(b) else (
        math.nan, math.nan)
    out["models"][f"{r}/{p}"] = {
        "response": r, "predictor": p, "loglik": f["loglik"], "k": f["k"],
        "separated": f["separated"],
        "aic": f["aic"], "beta": [float(v) for v in f["beta"]],
        "size_slope": b, "size_slope_wald": [lo, hi],
        "size_slope_boot": [float(blo), float(bhi)]}
  for r in RESPONSES:
    daic = fits[(r, "share")]["aic"] - fits[(r, "count")]["aic"]
    out["responses"][r] = {
        "delta_aic": float(daic),
        "better": "count" if daic > 0 else "share",
        "count_weight": float(1 / (1 + math.exp(-min(max(daic, -700), 700) / 2))),
        "boot_count_better": float(np.mean(boot_daic[r] > 0)),
        "boot_delta_aic": [float(v) for v in np.quantile(boot_daic[r], [0.025, 0.975])]}
  return out


def arm_runs(runs: analysis.Runs) -> analysis.Runs:
  """The runs of the sizes run at more than one data amount: there count
  and share differ (tokens per parameter vary)."""
  sizes = [s for s in np.unique(runs.size)
           if len(np.unique(runs.data_multiplier[runs.size == s])) > 1]
  return runs.take(np.flatnonzero(np.isin(runs.size, sizes)))


def arms(runs: analysis.Runs, threshold: float = analysis.SUCCESS_INCREASE,
         n_boot: int = analysis.BOOTSTRAP_SAMPLES,
         seed: int = analysis.BOOTSTRAP_SEED) -> dict:
  """Where count and share coincide, and the comparison where they differ.

  one_amount: each data amount's runs alone (with log size in the model,
  log share there is log count shifted): how many runs and the residual SD
  of log share given log count and log size (near 0: no information).
  data_arm: compare() on arm_runs (None when no size has several amounts).
  """
  one = {}
  for m in np.unique(runs.data_multiplier):
    sub = runs.take(np.flatnonzero(runs.data_multiplier == m))
    if len(np.unique(sub.params)) > 1:
      one[float(m)] = {"n_runs": len(sub), "contrast_sd": contrast_sd(sub)}
  arm = arm_runs(runs)
  return {"one_amount": one,
          "data_arm": compare(arm, threshold, n_boot, seed) if len(arm) else None,
          "arm_sizes": sorted({str(s) for s in arm.size}),
          "arm_amounts": sorted({float(m) for m in arm.data_multiplier})}
