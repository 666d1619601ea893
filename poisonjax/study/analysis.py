"""The poison threshold N50 with its intervals, from a study's runs.

For each model size and data amount, P(success | N) = expit(b0 + b1 log N)
is fitted over every finished run and seed (success: final increase >
SUCCESS_INCREASE), and N50 = exp(-b0 / b1) is the count at 50% success.

Two estimates, side by side:
  bracket  maximum likelihood. Where the data do not pin N50 down the answer
           is a bound, not a number: no success -> "> max N"; every run a
           success, or a fit crossing 50% below the smallest count -> "< min
           N"; crossing above the largest -> "> max N"; failures and
           successes separated (the likelihood rises without end as the
           slope grows) -> "between the largest failing and the smallest
           succeeding count".
  Firth    the penalised fit (analysis_firth), finite even under
           separation, with its profile penalised-likelihood 95% interval
           for log N50 (the constraint b0 = -b1 log N50, b1 profiled out).

The bracket's 95% interval is a bootstrap that resamples SEEDS as clusters
(cluster_resample: a seed fixes the poison contents and places and the data
order in every cell, so its runs are not independent draws), refits, and
takes the 2.5% quantile of the resamples' lower ends and the 97.5% quantile
of their upper ends (a resample whose answer is a bound contributes the
bound's ends), so bounds widen the interval instead of being replaced by a
made-up number. Count vs share is in count_vs_share; the size exponent of
N50 in analysis_size.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
from scipy import optimize, special

from poisonjax.study import analysis_firth as firth

SUCCESS_INCREASE = 50.0  # Success: final perplexity increase above this.
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
_MIN_RUNS = 2


@dataclasses.dataclass(frozen=True)
class Runs:
  """One entry per finished run with poisons: its final evaluation."""
  name: np.ndarray
  size: np.ndarray
  params: np.ndarray
  data_multiplier: np.ndarray
  seed: np.ndarray
  poisons: np.ndarray  # poisons seen by the end of training
  tokens: np.ndarray  # tokens seen by the end of training
  increase: np.ndarray  # final perplexity increase (triggered - clean)

  def __len__(self) -> int:
    return len(self.name)

  def take(self, idx) -> "Runs":
    return Runs(**{f.name: getattr(self, f.name)[idx]
                   for f in dataclasses.fields(self)})

  def success(self, threshold: float = SUCCESS_INCREASE) -> np.ndarray:
    return (self.increase > threshold).astype(float)

  def groups(self) -> dict:
    """Indices of the runs of each (size, data multiplier), smallest first."""
    g = collections.defaultdict(list)
    for i in range(len(self)):
      g[(str(self.size[i]), float(self.data_multiplier[i]))].append(i)
    order = sorted(g, key=lambda k: (k[1] != 1.0, self.params[g[k][0]], k[1]))
    return {k: np.array(g[k]) for k in order}


def final_runs(rows: list[dict]) -> tuple[Runs, dict]:
  """The last evaluation of every finished run with poisons and its counts.

  Returns the runs and how many were left out, by reason (unfinished runs
  have no final result; runs without poisons have no log N).
  """
  last = {}
  for r in rows:
    if r["run"] not in last or r["eval_index"] > last[r["run"]]["eval_index"]:
      last[r["run"]] = r
  keep, dropped = [], {"unfinished": 0, "no_poisons": 0, "no_increase": 0}
  for r in (last[k] for k in sorted(last)):
    poisons = r.get("poisons_seen") or r.get("poison_count") or 0
    if not r.get("finished"):
      dropped["unfinished"] += 1
    elif poisons <= 0 or not r.get("tokens_seen"):
      dropped["no_poisons"] += 1
    elif r.get("increase") is None or math.isnan(r["increase"]):
      dropped["no_increase"] += 1
    else:
      keep.append({**r, "poisons_seen": poisons})
  col = lambda k, dt: np.array([r[k] for r in keep], dtype=dt)
  runs = Runs(col("run", object), col("size", object), col("params", float),
              col("data_multiplier", float), col("seed", int),
              col("poisons_seen", float), col("tokens_seen", float),
              col("increase", float))
  return runs, dropped


# ---------------------------------------------------------------------------
# Logistic regression by maximum likelihood.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LogisticFit:
  beta: np.ndarray  # coefficients of the design's columns
  loglik: float
  cov: np.ndarray | None  # inverse observed information (None if singular)


def _nll(beta, X, y) -> float:
  eta = X @ beta
  return float(np.sum(np.logaddexp(0.0, eta) - y * eta))


def _info(beta, X):
  p = special.expit(X @ beta)
  return (X * (p * (1 - p))[:, None]).T @ X


def _newton(Z, y, max_iter: int = 100) -> np.ndarray:
  """Newton's method with step halving on the negative log-likelihood.

  Each accepted step lowers it; under perfect separation the coefficients
  grow until the decrease is below 1e-10 or max_iter steps are taken.
  """
  beta = np.zeros(Z.shape[1])
  f = _nll(beta, Z, y)
  for _ in range(max_iter):
    grad = Z.T @ (special.expit(Z @ beta) - y)
    step = np.linalg.lstsq(_info(beta, Z), grad, rcond=None)[0]
    t = 1.0
    while t > 1e-8 and _nll(beta - t * step, Z, y) > f:
      t /= 2
    new = _nll(beta - t * step, Z, y)
    if new > f:
      break
    beta, done = beta - t * step, f - new < 1e-10
    f = new
    if done:
      break
  return beta


def separates(X: np.ndarray, y: np.ndarray, tol: float = 1e-7) -> bool:
  """Whether some direction b puts every success at x.b >= 0 and every
  failure at x.b <= 0, not all on the line (complete or quasi-complete
  separation): then the logistic likelihood has no maximum, its bound is
  approached as |b| grows, and the coefficients and their Wald intervals
  are not identified. A linear program: maximise sum_i s_i x_i.b subject
  to s_i x_i.b >= 0 (s = +1 success, -1 failure) and |b_j| <= 1."""
  A = (2 * np.asarray(y, float) - 1)[:, None] * X
  res = optimize.linprog(-A.sum(0), A_ub=-A, b_ub=np.zeros(len(A)),
                         bounds=[(-1, 1)] * X.shape[1], method="highs")
  return bool(res.status == 0 and -res.fun > tol * max(1.0, np.abs(A).sum()))


def fit_logistic(X: np.ndarray, y: np.ndarray) -> LogisticFit:
  """Maximum likelihood logistic fit (Newton's method).

  Columns other than the first (the intercept) are standardised for the
  iterations and the coefficients mapped back. Under perfect separation the
  likelihood has no maximum: the result is then near its supremum (loglik
  near its bound) with large coefficients.
  """
  mu = np.r_[0.0, X[:, 1:].mean(0)]
  sd = np.r_[1.0, X[:, 1:].std(0)]
  sd[sd == 0] = 1.0
  Z = (X - mu) / sd
  Z[:, 0] = 1.0
  bz = _newton(Z, y)
  # beta_x[j] = bz[j] / sd[j] (j > 0); beta_x[0] = bz[0] - sum_j bz[j] mu[j] / sd[j].
  A = np.diag(1.0 / sd)
  A[0, 1:] = -mu[1:] / sd[1:]
  try:
    cov = A @ np.linalg.inv(_info(bz, Z)) @ A.T
  except np.linalg.LinAlgError:
    cov = None
  return LogisticFit(A @ bz, -_nll(bz, Z, y), cov)


# ---------------------------------------------------------------------------
# N50 of one group, and its bootstrap interval.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class N50:
  """N50 as a closed range [lo, hi] of counts: lo == hi is a point estimate;
  lo = 0 means "below hi", hi = inf means "above lo"."""
  lo: float
  hi: float
  kind: str  # fit | separated | all_success | no_success | below | above | falling
  slope: float = math.nan  # b1 of the fit (per unit log N), when fitted

  @property
  def point(self) -> float | None:
    return self.lo if self.lo == self.hi else None


def n50(n: np.ndarray, y: np.ndarray) -> N50:
  """N50 of one group of runs (poison counts, 0/1 successes), or its bound.

  With the failures all at or below the successes the fit is separated (no
  maximum likelihood; the limit is a step between them): the answer is the
  range from the largest failing to the smallest succeeding count (one
  count when they meet, e.g. mixed outcomes at that count only).
  """
  if y.sum() == 0:
    return N50(float(n.max()), math.inf, "no_success")
  if y.sum() == len(y):
    return N50(0.0, float(n.min()), "all_success")
  max_fail, min_success = float(n[y == 0].max()), float(n[y == 1].min())
  if max_fail <= min_success:
    return N50(max_fail, min_success, "separated")
  log_n = np.log(n)
  fit = fit_logistic(np.c_[np.ones_like(log_n), log_n], y)
  b0, b1 = fit.beta
  if b1 <= 0:
    return N50(0.0, math.inf, "falling", float(b1))
  log_est = -b0 / b1
  if log_est < log_n.min():
    return N50(0.0, float(n.min()), "below", float(b1))
  if log_est > log_n.max():
    return N50(float(n.max()), math.inf, "above", float(b1))
  est = float(np.exp(log_est))
  return N50(est, est, "fit", float(b1))


def cluster_resample(seeds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Indices of a resample of whole seeds: as many seeds as there are,
  drawn with replacement, each bringing all of its runs (a seed drawn
  twice brings them twice). Every bootstrap of the study resamples this way."""
  seeds = np.asarray(seeds)
  unique = np.unique(seeds)
  drawn = rng.choice(unique, len(unique))
  return np.concatenate([np.flatnonzero(seeds == s) for s in drawn])


def distinct_resamples(n_clusters: int) -> int:
  """How many different resamples k clusters allow (multisets of size k):
  10 for 3 seeds, 126 for 5. Few clusters make a percentile interval
  coarse and too narrow (Cameron, Gelbach & Miller 2008)."""
  return math.comb(2 * n_clusters - 1, n_clusters)


def bootstrap_n50(n, y, n_boot: int, rng: np.random.Generator, seeds=None) -> dict:
  """95% interval of N50 over resamples of the seeds (see module docstring);
  seeds None: every run its own cluster."""
  seeds = np.arange(len(y)) if seeds is None else np.asarray(seeds)
  los, his, kinds = np.empty(n_boot), np.empty(n_boot), collections.Counter()
  for b in range(n_boot):
    idx = cluster_resample(seeds, rng)
    est = n50(n[idx], y[idx])
    los[b], his[b] = est.lo, est.hi
    kinds[est.kind] += 1
  return {"lo": float(np.quantile(los, 0.025, method="lower")),
          "hi": float(np.quantile(his, 0.975, method="higher")),
          "n_boot": n_boot, "kinds": dict(kinds),
          "n_clusters": len(np.unique(seeds))}


@dataclasses.dataclass(frozen=True)
class FirthN50:
  """The penalised fit's N50 and its profile-likelihood 95% interval
  (lo = 0 / hi = inf: the data do not bound that side)."""
  n50: float
  lo: float
  hi: float
  slope: float  # b1 of the penalised fit (per unit log N)


def firth_n50(n: np.ndarray, y: np.ndarray) -> FirthN50 | None:
  """Firth N50 of one group (None: fewer than two distinct counts).

  The profile deviance of log N50 = t is twice the penalised log-likelihood
  lost by the constraint b0 = -b1 t (b1 free, searched on both signs); the
  interval is where it stays below chi2(1) 95%, searched up to a factor
  e^4 beyond the counts tested. A falling fit (b1 <= 0) has no N50: nan.
  """
  log_n = np.log(np.asarray(n, float))
  if len(np.unique(log_n)) < 2:
    return None
  X = np.c_[np.ones_like(log_n), log_n]
  full = firth.fit(X, y)
  b0, b1 = full.theta
  if b1 <= 0:
    return FirthN50(math.nan, 0.0, math.inf, float(b1))
  t_hat, sd = -b0 / b1, log_n.std()

  def deviance(t):
    prof = firth.fit(X, y, np.array([[-t], [1.0]]), starts=[[1 / sd], [-1 / sd]])
    return 2 * (full.loglik - prof.loglik)

  lo, hi = firth.profile_interval(deviance, t_hat, min(t_hat, log_n.min()) - 4,
                                  max(t_hat, log_n.max()) + 4)
  return FirthN50(float(np.exp(t_hat)), float(np.exp(lo)), float(np.exp(hi)),
                  float(b1))


def thresholds(runs: Runs, threshold: float = SUCCESS_INCREASE,
               n_boot: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> list[dict]:
  """Per (size, data multiplier): N50 (bracket and Firth), their 95%
  intervals (seed-clustered bootstrap, profile likelihood) and the data."""
  rng = np.random.default_rng(seed)
  y_all = runs.success(threshold)
  out = []
  for (size, mult), idx in runs.groups().items():
    n, y = runs.poisons[idx], y_all[idx]
    row = {"size": size, "data_multiplier": mult,
           "params": int(runs.params[idx[0]]), "n_runs": len(idx),
           "n_success": int(y.sum()), "counts": sorted({int(v) for v in runs.poisons[idx]}),
           "seeds": sorted({int(v) for v in runs.seed[idx]})}
    if len(idx) < _MIN_RUNS:
      row.update(estimate=None, interval=None, firth=None)
    else:
      row.update(estimate=n50(n, y), firth=firth_n50(n, y),
                 interval=bootstrap_n50(n, y, n_boot, rng, runs.seed[idx]))
    out.append(row)
  return out


def curve(estimate: N50, n_grid: np.ndarray, n, y) -> np.ndarray | None:
  """The fitted P(success) on a grid of counts (None where no fit exists)."""
  if estimate is None or estimate.kind in ("separated", "all_success", "no_success"):
    return None
  fit = fit_logistic(np.c_[np.ones(len(n)), np.log(n)], y)
  return special.expit(fit.beta[0] + fit.beta[1] * np.log(n_grid))


def format_n50(estimate: N50) -> str:
  """The estimate in words: a count, '< x', '> x' or 'x to y' (separated)."""
  if estimate.lo == estimate.hi:
    return f"{estimate.lo:.3g}"
  if estimate.lo <= 0 and estimate.hi == math.inf:
    return "undetermined (success does not rise with N)"
  if estimate.lo <= 0:
    return f"< {estimate.hi:.3g}"
  if estimate.hi == math.inf:
    return f"> {estimate.lo:.3g}"
  return f"{estimate.lo:.3g} to {estimate.hi:.3g}"


def format_interval(interval: dict, counts: list) -> str:
  """The 95% interval: an end beyond the counts tested reads '< min' / '> max'."""
  lo = f"< {min(counts):.3g}" if interval["lo"] < min(counts) else f"{interval['lo']:.3g}"
  hi = f"> {max(counts):.3g}" if interval["hi"] > max(counts) else f"{interval['hi']:.3g}"
  return f"[{lo}, {hi}]"
