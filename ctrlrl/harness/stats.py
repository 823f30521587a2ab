"""Across-seed statistics for result tables: bootstrap CIs (of a mean and of a difference of means),
IQM, Welch's t-test, area under curve.

A few lines on `scipy.stats`, as rliable computes them (rliable itself does not import beside
pandas 3). Confidence intervals are percentile bootstraps of the mean with a fixed seed, so a
report regenerated from the same logs prints the same numbers.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
SEED = 0


def bootstrap_ci(x: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                 axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile-bootstrap CI of the mean along `axis` (the seeds).

    With a single seed there is no spread to resample: the interval is the value itself.
    """
    x = np.asarray(x, dtype=float)
    if x.shape[axis] < 2:
        return x.mean(axis), x.mean(axis)
    res = stats.bootstrap((x,), np.mean, axis=axis, vectorized=True, method="percentile",
                          confidence_level=CONFIDENCE, n_resamples=n_resamples,
                          rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return np.asarray(low), np.asarray(high)


def bootstrap_diff_ci(a: np.ndarray, b: np.ndarray, n_resamples: int = N_RESAMPLES,
                      seed: int = SEED) -> tuple[float, float]:
    """95% percentile-bootstrap CI of mean(a) − mean(b), each group's seeds resampled on their own
    (two independent samples, as Welch's test takes them)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if min(len(a), len(b)) < 2:
        diff = float(a.mean() - b.mean())
        return diff, diff
    res = stats.bootstrap((a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), vectorized=True,
                          paired=False, method="percentile", confidence_level=CONFIDENCE,
                          n_resamples=n_resamples, rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return float(low), float(high)


def iqm(x: np.ndarray) -> float:
    """Interquartile mean: the mean after dropping ⌊n/4⌋ values at each end (scipy's trim_mean)."""
    return float(stats.trim_mean(np.asarray(x, dtype=float), 0.25))


def welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Welch's unequal-variance t-test of mean(a) vs mean(b): (t, two-sided p)."""
    res = stats.ttest_ind(np.asarray(a, float), np.asarray(b, float), equal_var=False)
    return float(res.statistic), float(res.pvalue)


def area_under_curve(steps: np.ndarray, values: np.ndarray) -> float:
    """Trapezoid area under a learning curve divided by its step span: the curve's mean level,
    comparable across budgets (a single point is its own value)."""
    if len(steps) < 2:
        return float(values[-1])
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))
