"""Firth's penalised logistic regression and profile-likelihood intervals.

Why: the study's runs are often separated (every failure at a count below
every success), and then the maximum-likelihood fit does not exist and Wald
or likelihood-ratio intervals are undefined. Firth (1993) maximises the
log-likelihood plus 1/2 log det I(theta) (Jeffreys' prior; I is the Fisher
information X'WX): the estimate is always finite, its first-order bias is
removed, and likelihood-ratio tests and profile intervals built on the
penalised likelihood behave under separation (Heinze & Schemper 2002,
Statistics in Medicine 21:2409; the R package logistf does the same).

A hypothesis is a linear constraint theta = M phi (phi free). The penalty of
a constrained fit is the FULL model's 1/2 log det X'WX at theta = M phi, as
in logistf's profile penalised likelihood, so a constrained and the
unconstrained fit are on one scale and twice their difference is the
penalised likelihood-ratio statistic (chi-square, 1 df for one constraint).

Checked in tests against closed forms: the intercept-only fit is
(k + 1/2) / (n + 1) (the Jeffreys posterior mode), and one binary covariate
gives the log odds ratio with 1/2 added to each cell (Haldane's correction).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import optimize, special, stats

CHI2_95 = float(stats.chi2.ppf(0.95, 1))


@dataclasses.dataclass(frozen=True)
class FirthFit:
  theta: np.ndarray  # coefficients of the full design's columns (M @ phi)
  loglik: float  # penalised log-likelihood (log-likelihood + 1/2 log det I)
  converged: bool


def _scaling(X: np.ndarray) -> np.ndarray:
  """A with X @ A = columns centred and scaled (the intercept column kept):
  the fit is done in these better-conditioned coordinates."""
  k = X.shape[1]
  A = np.eye(k)
  for j in range(1, k):
    sd = X[:, j].std()
    if sd > 0:
      A[0, j] = -X[:, j].mean() / sd
      A[j, j] = 1.0 / sd
  return A


def penalised_loglik(theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
  """log L(theta) + 1/2 log det(X'WX); -inf where the information is singular."""
  eta = X @ theta
  ll = -float(np.sum(np.logaddexp(0.0, eta) - y * eta))
  w = special.expit(eta) * special.expit(-eta)
  with np.errstate(divide="ignore"):  # A singular information: -inf below.
    sign, logdet = np.linalg.slogdet((X * w[:, None]).T @ X)
  return ll + 0.5 * logdet if sign > 0 else -math.inf


def _step(phi, Xs, Ms, y):
  """One Fisher-scoring step of Firth's modified score (the hat-value form)."""
  eta = Xs @ (Ms @ phi)
  p, w = special.expit(eta), special.expit(eta) * special.expit(-eta)
  info = (Xs * w[:, None]).T @ Xs
  h = w * np.einsum("ij,ji->i", Xs, np.linalg.solve(info, Xs.T))
  score = Ms.T @ (Xs.T @ (y - p + h * (0.5 - p)))
  return np.linalg.lstsq(Ms.T @ info @ Ms, score, rcond=None)[0]


def _newton(Xs, Ms, y, phi, max_iter=200):
  f = penalised_loglik(Ms @ phi, Xs, y)
  if not math.isfinite(f):  # Singular information at the start: no fit.
    return phi, -math.inf, False
  for _ in range(max_iter):
    try:
      step = _step(phi, Xs, Ms, y)
    except np.linalg.LinAlgError:
      return phi, f, False
    t = 1.0
    if not np.all(np.isfinite(step)):
      return phi, f, False
    while t > 1e-10:
      new = penalised_loglik(Ms @ (phi + t * step), Xs, y)
      if new >= f - 1e-12:
        break
      t /= 2
    else:
      return phi, f, False
    phi, done = phi + t * step, abs(new - f) < 1e-11 and np.max(np.abs(t * step)) < 1e-7
    f = new
    if done:
      return phi, f, True
  return phi, f, False


def fit(X: np.ndarray, y: np.ndarray, M: np.ndarray | None = None,
        starts: list | None = None) -> FirthFit:
  """Firth fit of y ~ X under theta = M phi (M None: unconstrained).

  starts: initial phi values (besides 0) in the coordinates of M; the best
  penalised log-likelihood wins (a constrained profile can have a local
  maximum on each side of a zero slope).
  """
  X, y = np.asarray(X, float), np.asarray(y, float)
  M = np.eye(X.shape[1]) if M is None else np.asarray(M, float)
  A = _scaling(X)
  Xs, Ms = X @ A, np.linalg.solve(A, M)
  # log det of X'WX and of (XA)'W(XA) differ by the constant 2 log|det A|.
  const = -math.log(abs(np.linalg.det(A)))
  best = None
  for phi0 in [np.zeros(M.shape[1])] + [np.asarray(s, float) for s in starts or []]:
    phi, f, ok = _newton(Xs, Ms, y, phi0)
    if best is None or f > best[1]:
      best = (phi, f, ok)
  phi, f, ok = best
  return FirthFit(M @ phi, f + const, ok)


def profile_interval(deviance, estimate: float, lo_limit: float, hi_limit: float,
                     cut: float = CHI2_95, first_step: float = 0.02) -> tuple[float, float]:
  """The set {x: deviance(x) <= cut} around estimate, as (lo, hi).

  Steps out from the estimate (doubling) to the first point past the cut,
  then finds the crossing with brentq. An end with no crossing inside the
  limits is -inf / +inf (the data do not bound it on that side).
  """
  ends = []
  for sign, limit in ((-1, lo_limit), (1, hi_limit)):
    prev, step, end = estimate, first_step, sign * math.inf
    while True:
      x = estimate + sign * step
      if sign * (x - limit) > 0:
        x = limit
      if deviance(x) > cut:
        end = optimize.brentq(lambda v: deviance(v) - cut, min(prev, x),
                              max(prev, x), xtol=1e-6)
        break
      if x == limit:
        break
      prev, step = x, step * 2
    ends.append(end)
  return ends[0], ends[1]
