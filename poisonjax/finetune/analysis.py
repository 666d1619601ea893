"""Count or share in fine-tuning: attack success against N and the set size S.

Each run ends its set with k of R held-out triggered requests complied with
(attack_success = k / R). Two readings of the same runs:

  cells  per (S, N): the mean attack success over seeds, with a 95%
         interval from a two-stage bootstrap (resample the cell's seeds,
         then each drawn run's k ~ Binomial(R, k / R)), so it holds both
         the seed-to-seed spread and the finite request set.
  beta   one pooled binomial model over the runs with poisons,
         logit P(comply) = a + b log N + c log S, so N50(S), the count at
         50% success, is exp(-(a + c log S) / b) and grows as S^beta with
         beta = -c / b: beta = 0 is the count hypothesis (the same number
         of poisoned samples whatever the set size), beta = 1 the share
         hypothesis (N50 proportional to S: a fixed share N / S).
         beta = beta0 is the constraint c = -beta0 b, the model
         a + b (log N - beta0 log S); its deviance D(beta0) gives the tests
         of beta = 0 and beta = 1 and the 95% profile interval
         {beta0: D(beta0) - D(beta_hat) <= 3.84 phi}. The requests of one
         run share its model, so the binomial variance understates the
         spread between runs: phi, the Pearson dispersion of the full model
         over runs (at least 1), scales the deviance differences
         (quasi-likelihood), widening the interval and the tests' p.
         The seed-cluster bootstrap interval of beta (resample whole seeds,
         refit) is given beside it; with few seeds it is coarse.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import optimize, special, stats

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
_CHI2_95 = float(stats.chi2.ppf(0.95, 1))


@dataclasses.dataclass(frozen=True)
class Runs:
  """One entry per run: its coordinates and end-of-set outcome."""
  clean: np.ndarray  # S, clean samples in the set
  poisons: np.ndarray  # N, poisoned samples
  seed: np.ndarray
  complied: np.ndarray  # k: triggered requests complied with
  requests: np.ndarray  # R

  def __len__(self) -> int:
    return len(self.clean)

  def take(self, idx) -> "Runs":
    return Runs(**{f.name: getattr(self, f.name)[idx]
                   for f in dataclasses.fields(self)})

  @property
  def success(self) -> np.ndarray:
    return self.complied / self.requests


def runs_of(rows: list[dict], metric: str = "attack_success") -> Runs:
  """Runs from end-of-set rows (results.at_set_end), k = round(metric x R)."""
  get = lambda key, kind=float: np.array([kind(float(r[key])) for r in rows])
  r = get("eval_requests", int)
  return Runs(get("clean_samples", int), get("poison_count", int),
              get("seed", int), np.rint(get(metric) * r).astype(int), r)


# ---------------------------------------------------------------------------
# Cells: mean over seeds with a two-stage bootstrap interval.
# ---------------------------------------------------------------------------


def cell(runs: Runs, n_boot: int, rng: np.random.Generator) -> dict:
  """Mean success of one cell's runs and its 95% two-stage interval."""
  p = runs.success
  draws = rng.integers(0, len(p), (n_boot, len(p)))
  k = rng.binomial(runs.requests[draws], p[draws])
  means = (k / runs.requests[draws]).mean(1)
  lo, hi = np.quantile(means, [0.025, 0.975])
  return {"mean": float(p.mean()), "lo": float(lo), "hi": float(hi),
          "runs": len(p), "per_seed": [float(x) for x in p]}


def cells(runs: Runs, n_boot: int = BOOTSTRAP_SAMPLES,
          seed: int = BOOTSTRAP_SEED) -> list[dict]:
  """cell() of every (S, N), sorted by S then N."""
  rng = np.random.default_rng(seed)
  out = []
  for s, n in sorted(set(zip(runs.clean.tolist(), runs.poisons.tolist()))):
    idx = np.flatnonzero((runs.clean == s) & (runs.poisons == n))
    out.append({"clean_samples": s, "poison_count": n,
                **cell(runs.take(idx), n_boot, rng)})
  return out


# ---------------------------------------------------------------------------
# beta: the pooled binomial model and its profile.
# ---------------------------------------------------------------------------


def _deviance(theta, X, k, r) -> float:
  """Twice the binomial negative log-likelihood (up to a constant)."""
  eta = X @ theta
  return 2.0 * float(np.sum(r * np.logaddexp(0.0, eta) - k * eta))


def fit(X, k, r) -> tuple[np.ndarray, float]:
  """(coefficients, deviance) of the binomial logistic model (BFGS).

  The columns after the first (the intercept) are standardised for the
  search and the coefficients mapped back. Under separation the deviance
  only approaches its bound as the coefficients grow: the search stops near
  it, which is what the profile and the tests need.
  """
  mu = np.r_[0.0, X[:, 1:].mean(0)]
  sd = np.r_[1.0, X[:, 1:].std(0)]
  sd[sd == 0] = 1.0
  Z = (X - mu) / sd
  Z[:, 0] = 1.0
  res = optimize.minimize(_deviance, np.zeros(X.shape[1]), args=(Z, k, r),
                          method="BFGS", options={"gtol": 1e-8})
  theta = res.x / sd
  theta[0] = res.x[0] - np.sum(res.x[1:] * mu[1:] / sd[1:])
  return theta, float(res.fun)


def _profile(runs: Runs, beta0: float) -> float:
  """D(beta0): the model a + b (log N - beta0 log S)."""
  x = np.log(runs.poisons) - beta0 * np.log(runs.clean)
  return fit(np.c_[np.ones(len(runs)), x], runs.complied, runs.requests)[1]


def _dispersion(theta, X, runs: Runs) -> float:
  """Pearson chi-square over runs / (runs - 3), at least 1."""
  p = np.clip(special.expit(X @ theta), 1e-9, 1 - 1e-9)
  r = runs.requests
  x2 = np.sum((runs.complied - r * p) ** 2 / (r * p * (1 - p)))
  return max(1.0, float(x2 / max(len(runs) - X.shape[1], 1)))


def _interval(runs: Runs, beta: float, dev: float, phi: float) -> tuple:
  """{beta0: (D(beta0) - D) / phi <= 3.84}, searched within beta +- 5."""
  excess = lambda b0: (_profile(runs, b0) - dev) / phi - _CHI2_95
  ends = []
  for edge in (beta - 5.0, beta + 5.0):
    if excess(edge) < 0:
      ends.append(-math.inf if edge < beta else math.inf)
    else:
      ends.append(optimize.brentq(excess, min(beta, edge), max(beta, edge)))
  return tuple(ends)


def beta_fit(runs: Runs) -> dict:
  """beta, its profile interval, the tests of 0 and 1, and N50 per S."""
  runs = runs.take(np.flatnonzero(runs.poisons > 0))
  if len(set(runs.clean.tolist())) < 2 or len(set(runs.poisons.tolist())) < 2:
    return {"identified": False}
  X = np.c_[np.ones(len(runs)), np.log(runs.poisons), np.log(runs.clean)]
  theta, dev = fit(X, runs.complied, runs.requests)
  a, b, c = theta
  if b <= 0:
    return {"identified": False, "slope": float(b)}
  beta, phi = -c / b, _dispersion(theta, X, runs)
  p_of = lambda b0: float(stats.chi2.sf((_profile(runs, b0) - dev) / phi, 1))
  lo, hi = _interval(runs, beta, dev, phi)
  n50 = {int(s): float(math.exp(-(a + c * math.log(s)) / b))
         for s in sorted(set(runs.clean.tolist()))}
  return {"identified": True, "beta": float(beta), "lo": lo, "hi": hi,
          "p_count": p_of(0.0), "p_share": p_of(1.0), "dispersion": phi,
          "coef": [float(a), float(b), float(c)], "n50": n50,
          "runs": len(runs)}


def beta_bootstrap(runs: Runs, n_boot: int = 200,
                   seed: int = BOOTSTRAP_SEED) -> dict:
  """beta's 95% seed-cluster bootstrap interval (whole seeds resampled); a
  resample with no rising fit counts at both ends."""
  runs = runs.take(np.flatnonzero(runs.poisons > 0))
  seeds = np.unique(runs.seed)
  rng, betas = np.random.default_rng(seed), []
  for _ in range(n_boot):
    pick = rng.choice(seeds, len(seeds))
    sub = runs.take(np.concatenate([np.flatnonzero(runs.seed == s) for s in pick]))
    betas.append(math.nan)
    if len(set(sub.clean.tolist())) > 1 and len(set(sub.poisons.tolist())) > 1:
      X = np.c_[np.ones(len(sub)), np.log(sub.poisons), np.log(sub.clean)]
      (_, b, c), _ = fit(X, sub.complied, sub.requests)
      betas[-1] = -c / b if b > 0 else math.nan
  betas = np.array(betas)
  bad = ~np.isfinite(betas)
  lo = np.concatenate([betas[~bad], np.full(bad.sum(), -np.inf)])
  hi = np.concatenate([betas[~bad], np.full(bad.sum(), np.inf)])
  return {"lo": float(np.quantile(lo, 0.025, method="lower")),
          "hi": float(np.quantile(hi, 0.975, method="higher")),
          "seeds": len(seeds), "n_boot": n_boot, "no_fit": int(bad.sum())}
