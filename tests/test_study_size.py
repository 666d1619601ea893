"""The size exponent beta of N50 and the Firth fits behind it, on hand-made
data: closed forms for the penalised fit, and synthetic grids whose true
beta is 0 (count) or 1 (share), each recovered within its interval while the
other value is excluded."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize
from scipy import special

from poisonjax.study import analysis
from poisonjax.study import analysis_firth as firth
from poisonjax.study import analysis_parallel
from poisonjax.study import analysis_size
from poisonjax.study import count_vs_share

SIZES = (237_888.0, 418_272.0, 1_115_264.0)  # cpu-xxs, cpu-xs, cpu-s


def test_firth_matches_closed_forms():
  # Intercept only: the Jeffreys posterior mode (k + 1/2) / (n + 1), finite
  # even when every run succeeds.
  fit = firth.fit(np.ones((5, 1)), np.ones(5))
  assert special.expit(fit.theta[0]) == pytest.approx(5.5 / 6, abs=1e-9)
  # One binary covariate: the log odds ratio with 1/2 added to each cell.
  x = np.r_[np.zeros(10), np.ones(8)]
  y = np.r_[np.ones(3), np.zeros(7), np.ones(8)]  # Separated: all x=1 succeed.
  fit = firth.fit(np.c_[np.ones(18), x], y)
  assert fit.theta[1] == pytest.approx(math.log(8.5 * 7.5 / (0.5 * 3.5)), abs=1e-7)


def test_firth_is_the_penalised_maximum_also_under_separation():
  rng = np.random.default_rng(0)
  X = np.c_[np.ones(30), rng.normal(size=30), rng.normal(size=30)]
  for y in ((rng.random(30) < special.expit(X @ [0.3, 1.5, -1.0])).astype(float),
            (X[:, 1] > 0).astype(float)):  # The second is completely separated.
    fit = firth.fit(X, y)
    assert fit.converged and np.all(np.isfinite(fit.theta))
    ref = optimize.minimize(lambda t: -firth.penalised_loglik(t, X, y), np.zeros(3),
                            method="Nelder-Mead",
                            options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 40000})
    assert fit.loglik == pytest.approx(-ref.fun, abs=1e-6)
    np.testing.assert_allclose(fit.theta, ref.x, atol=1e-3)


def test_firth_n50_is_finite_and_covered_under_separation():
  """Failures at 10 and 30, successes at 100: no ML fit; the Firth N50 lies
  between the counts and its profile interval is finite on the low side,
  open above only if the data allow."""
  n = np.repeat([10.0, 30.0, 100.0], 4)
  y = (n > 50).astype(float)
  f = analysis.firth_n50(n, y)
  assert 30 < f.n50 < 100 and f.lo < 30 and f.hi > 100
  assert 0 < f.lo and f.slope > 0
  # Denser counts, a steep logistic: the interval narrows around the truth.
  rng = np.random.default_rng(4)
  n = np.repeat(np.geomspace(20, 120, 8), 12)
  y = (rng.random(len(n)) < special.expit(4 * np.log(n / 50))).astype(float)
  f = analysis.firth_n50(n, y)
  assert f.lo < 50 < f.hi and f.hi / f.lo < 1.6
  assert analysis.firth_n50(np.full(4, 30.0), np.array([0, 1, 0, 1.0])) is None


def test_cluster_resample_keeps_seeds_whole():
  seeds = np.repeat([3, 5, 8], [2, 3, 4])
  rng = np.random.default_rng(1)
  for _ in range(20):
    idx = analysis.cluster_resample(seeds, rng)
    drawn, counts = np.unique(seeds[idx], return_counts=True)
    per_seed = {3: 2, 5: 3, 8: 4}
    assert all(c % per_seed[s] == 0 for s, c in zip(drawn, counts))
    assert sum(c // per_seed[s] for s, c in zip(drawn, counts)) == 3
  assert analysis.distinct_resamples(3) == 10 and analysis.distinct_resamples(5) == 126


def grid_runs(beta: float, seed: int, counts=(10, 20, 30, 50, 70, 100, 150),
              n_seeds: int = 5, slope: float = 4.0, seed_sd: float = 0.15,
              mults=(1.0,)) -> analysis.Runs:
  """Sizes x counts x seeds x data amounts with P(success) = expit(slope *
  (log N - log N50(size))), N50 = 50 (size / mid size)^beta; each seed
  shifts log N50 by its own normal draw (seeds are clusters)."""
  rng = np.random.default_rng(seed)
  mid = math.exp(np.mean(np.log(SIZES)))
  shift = rng.normal(0, seed_sd, n_seeds)
  rows = []
  for p in SIZES:
    for m in mults:
      for n in counts:
        for s in range(n_seeds):
          log_n50 = math.log(50) + beta * math.log(p / mid) + shift[s]
          ok = rng.random() < special.expit(slope * (math.log(n) - log_n50))
          rows.append((f"s{p:g}", p, m, s, n, 20 * p * m, 500.0 if ok else 1.0))
  c = list(zip(*rows))
  return analysis.Runs(np.array(c[0], object), np.array(c[0], object),
                       np.array(c[1]), np.array(c[2]), np.array(c[3]),
                       np.array(c[4], float), np.array(c[5]), np.array(c[6]))


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_beta_is_recovered_and_the_other_hypothesis_excluded(beta):
  other = 1.0 - beta
  r = analysis_size.size_exponent(grid_runs(beta, seed=int(10 + beta)), 50.0,
                                  n_boot=200, seed=0)
  assert r["fitted"] and r["n_runs"] == 105 and r["n_clusters"] == 5
  for lo, hi in (r["boot"], r["profile"]):
    assert lo <= beta <= hi, (beta, lo, hi)
    assert not lo <= other <= hi, (other, lo, hi)
  assert abs(r["beta"] - beta) < 0.4
  assert r["tests"][f"{beta:g}"]["p"] > 0.05
  assert r["tests"][f"{other:g}"]["p"] < 0.01
  # The LR statistic is the profile deviance: its p-value and the interval agree.
  assert (r["tests"]["0"]["p"] > 0.05) == (r["profile"][0] <= 0 <= r["profile"][1])
  mid = [row for row in r["by_size"] if row["size"] == f"s{SIZES[1]:g}"][0]
  assert mid["boot"][0] < mid["n50"] < mid["boot"][1]


def test_beta_uses_only_the_runs_at_one_x_and_says_when_it_cannot():
  runs = grid_runs(0.0, seed=3, mults=(1.0, 4.0), n_seeds=3)
  r = analysis_size.size_exponent(runs, 50.0, n_boot=20, seed=0)
  assert r["n_runs"] == len(runs) // 2
  one = runs.take(np.flatnonzero(runs.params == SIZES[0]))
  r = analysis_size.size_exponent(one, 50.0, n_boot=20, seed=0)
  assert not r["fitted"] and "two sizes" in r["reason"]


def test_targets_take_the_wider_interval_inside_the_counts_tried():
  counts = [25, 35, 50, 70]
  th = [{"size": "a", "data_multiplier": 1.0, "firth": analysis.FirthN50(40, 30, 55, 4),
         "interval": {"lo": 32, "hi": 52}, "counts": counts},
        {"size": "b", "data_multiplier": 1.0, "firth": analysis.FirthN50(40, 30, 55, 4),
         "interval": {"lo": 20, "hi": 52}, "counts": counts},
        {"size": "c", "data_multiplier": 1.0, "firth": analysis.FirthN50(40, 30, 55, 4),
         "interval": {"lo": 32, "hi": 52}, "counts": [20, 30, 50]},
        {"size": "a", "data_multiplier": 8.0, "firth": analysis.FirthN50(40, 1, 1e3, 1),
         "interval": {"lo": 1, "hi": 1e3}, "counts": counts}]
  size = {"fitted": True, "boot": [-0.3, 0.5], "profile": [-0.45, 0.6]}
  tg = analysis_size.targets(size, {}, th)
  # b: the bootstrap reaches x2.0; c: within x1.5 but its profile end (55)
  # lies beyond the largest count tried (50), an extrapolation.
  assert [(r["size"], r["met"]) for r in tg["n50"]] == [("a", True), ("b", False),
                                                         ("c", False)]
  assert tg["n50"][1]["boot_factor"] == pytest.approx(2.0)
  assert tg["n50"][2]["profile_factor"] < 1.5 and not tg["n50"][2]["inside"]
  assert not tg["beta"]["met"] and tg["beta"]["profile_half"] == pytest.approx(0.525)
  size["profile"] = [-0.3, 0.6]
  assert analysis_size.targets(size, {}, th)["beta"]["met"]


def test_count_and_share_are_compared_where_they_differ():
  """At one data amount count and share coincide given log size; the data
  arm (one size, several amounts) separates them and picks the generator."""
  runs = grid_runs(0.0, seed=5, mults=(1.0,), n_seeds=3)
  rng = np.random.default_rng(6)
  arm = []
  for m in (0.5, 1.0, 4.0, 16.0):
    for n in (10, 20, 30, 50, 70, 100, 150, 200):
      for s in range(3):
        tokens = 20 * SIZES[0] * m
        share = n / tokens * 1e6
        ok = rng.random() < special.expit(4 * math.log(share / 10.0))
        arm.append((n, m, s, tokens, 500.0 if ok else 1.0))
  c = list(zip(*arm))
  k = len(arm)
  more = analysis.Runs(np.full(k, "xxs-arm", object), np.full(k, "xxs-arm", object),
                       np.full(k, SIZES[0]), np.array(c[1]), np.array(c[2]),
                       np.array(c[0], float), np.array(c[3]), np.array(c[4]))
  both = analysis.Runs(**{f: np.concatenate([getattr(runs, f), getattr(more, f)])
                          for f in ("name", "size", "params", "data_multiplier",
                                    "seed", "poisons", "tokens", "increase")})
  a = count_vs_share.arms(both, 50.0, n_boot=40, seed=0)
  assert a["one_amount"][1.0]["contrast_sd"] < 1e-6
  assert a["arm_sizes"] == ["xxs-arm"] and a["arm_amounts"] == [0.5, 1.0, 4.0, 16.0]
  assert a["data_arm"]["n_runs"] == k
  assert a["data_arm"]["responses"]["success"]["better"] == "share"


def test_common_slope_n50_per_size_covers_the_truth():
  """A shared slope narrows each size's interval; the parallelism test
  keeps it when the slopes agree and rejects it when they do not."""
  runs = grid_runs(1.0, seed=21)
  r = analysis_parallel.per_size(runs, 50.0, n_boot=100, seed=0)
  assert r["fitted"] and r["parallel_test"]["p"] > 0.05
  mid = math.exp(np.mean(np.log(SIZES)))
  own = {(row["size"], row["data_multiplier"]): row
         for row in analysis.thresholds(runs, 50.0, 20, 0)}
  for row in r["rows"]:
    truth = 50 * float(row["size"][1:]) / mid
    for lo, hi in (row["profile"], row["boot"]):
      assert lo < truth < hi, (row, truth)
    f = own[(row["size"], 1.0)]["firth"]
    assert row["profile"][1] / row["profile"][0] < f.hi / f.lo
  # Steep at one size, flat at another: separate slopes fit far better.
  rng = np.random.default_rng(2)
  n = np.tile(np.repeat([10.0, 20, 40, 80, 160], 8), 2)
  size = np.repeat(["a", "b"], 40).astype(object)
  y = np.where(size == "a", n > 40, rng.random(80) < 0.5).astype(float)
  flat = analysis.Runs(size, size, np.where(size == "a", 1e5, 2e5), np.ones(80),
                       np.tile(np.arange(8), 10), n, 20 * n, 500 * y + 1)
  assert analysis_parallel.per_size(flat, 50.0, 20, 0)["parallel_test"]["p"] < 0.01
