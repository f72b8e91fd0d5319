"""The statistics of a report, each from numpy, scipy or torchmetrics.

* mean ± sample standard deviation (ddof = 1) over seeds; a 95% Student-t interval for the mean
  (``scipy.stats.t``, n − 1 degrees of freedom, scale = standard error);
* the area under a series (trapezoid rule over the logged steps, ``numpy.trapezoid``), and its time average
  (area / (last step − first step));
* a log-log least-squares fit, value ≈ coefficient · step^exponent (the project's ``fit_loglog_slope``);
* Spearman's rank correlation (``torchmetrics.functional.spearman_corrcoef``, ties get average ranks);
* a one-sided test that groups are ordered, g₁ < g₂ < … < g_k: the Jonckheere–Terpstra statistic
  J = Σ_{i<j} Σ_{a∈g_i, b∈g_j} ([a < b] + ½[a = b]) with its permutation distribution (``scipy.stats.
  permutation_test``: exact over all assignments of the values to the groups when there are at most
  ``n_resamples`` of them, else Monte Carlo with a fixed seed); p = P(J ≥ J_observed);
* a two-sided test that two groups differ: the difference of means Δ = mean(g₂) − mean(g₁) with the same
  permutation distribution; p = P(|Δ| ≥ |Δ_observed|).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from testbed.errors import ConfigError

__all__ = [
    "LOG_FLOOR",
    "OrderingResult",
    "mean_std",
    "t_interval",
    "area",
    "time_average",
    "loglog_fit",
    "spearman",
    "jonckheere",
    "ordering_test",
    "difference_test",
]

# Values this far below the largest over arms are round-off (e.g. an alignment loss theory says is exactly 0).
LOG_FLOOR = 1e-12


def _scipy_stats():
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - scipy ships with the test extras
        raise ConfigError("this report needs scipy (t-intervals, ordering tests): pip install scipy") from None
    return stats


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1); nan for what is undefined (no values; std of one value)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else float("nan")


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval for the mean of ``values``; (nan, nan) with fewer than two values."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size < 2:
        return float("nan"), float("nan")
    stats = _scipy_stats()
    sem = float(stats.sem(arr))
    if sem == 0.0:
        return float(arr.mean()), float(arr.mean())
    low, high = stats.t.interval(level, arr.size - 1, loc=float(arr.mean()), scale=sem)
    return float(low), float(high)


def area(steps: np.ndarray, values: np.ndarray) -> float:
    """Trapezoid-rule area under ``values`` over ``steps`` (0 for a single point, nan for none)."""
    if len(steps) == 0:
        return float("nan")
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 names it trapz
    return float(trapezoid(np.asarray(values, dtype=np.float64), np.asarray(steps, dtype=np.float64)))


def time_average(steps: np.ndarray, values: np.ndarray) -> float:
    """The trapezoid area over the span of ``steps``, divided by that span (the value itself for a single point)."""
    if len(steps) == 1:
        return float(values[0])
    return area(steps, values) / float(steps[-1] - steps[0]) if len(steps) else float("nan")


def loglog_fit(steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(exponent, coefficient) of value ≈ coefficient · step^exponent over positive points; nan if under-determined."""
    from theory.fit import fit_loglog_slope
    slope, intercept = fit_loglog_slope(np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64))
    return float(slope), math.exp(intercept) if math.isfinite(intercept) else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of paired values; nan with fewer than 3 pairs or a constant side."""
    import torch
    from torchmetrics.functional import spearman_corrcoef

    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.size < 3 or np.ptp(xs) == 0.0 or np.ptp(ys) == 0.0:
        return float("nan")
    return float(spearman_corrcoef(torch.from_numpy(xs), torch.from_numpy(ys)))


def jonckheere(*groups: Sequence[float]) -> float:
    """The Jonckheere–Terpstra statistic J of groups given in their hypothesised increasing order."""
    total = 0.0
    for i, low in enumerate(groups):
        a = np.asarray(low, dtype=np.float64)[:, None]
        for high in groups[i + 1 :]:
            b = np.asarray(high, dtype=np.float64)[None, :]
            total += float(np.sum(a < b) + 0.5 * np.sum(a == b))
    return total


@dataclass(frozen=True)
class OrderingResult:
    """A permutation test (``ordering``: one-sided Jonckheere–Terpstra; ``difference``: two-sided difference of
    means): statistic, p-value and how the null distribution was obtained."""

    statistic: float
    pvalue: float
    exact: bool
    permutations: int
    sizes: tuple[int, ...]
    kind: str = "ordering"

    def describe(self) -> str:
        how = (f"exact permutation distribution over all {self.permutations} assignments, so p >= "
               f"{1 / self.permutations:.3g}" if self.exact else
               f"Monte Carlo permutation distribution, {self.permutations} resamples, seed 0")
        what = (f"Jonckheere–Terpstra J = {self.statistic:g}, one-sided" if self.kind == "ordering" else
                f"difference of means Δ = {self.statistic:.4g}, two-sided")
        return f"{what} p = {self.pvalue:.4g} ({how}; group sizes {list(self.sizes)}; scipy.stats.permutation_test)"


def _permutation(groups: Sequence[Sequence[float]], statistic, alternative: str, n_resamples: int,
                 kind: str) -> OrderingResult:
    """``scipy.stats.permutation_test`` over assignments of the values to the groups (exact when few enough)."""
    sizes = tuple(len(g) for g in groups)
    if len(groups) < 2 or min(sizes, default=0) < 1:
        raise ConfigError(f"the {kind} test needs at least two groups with values each, got sizes {list(sizes)}")
    stats = _scipy_stats()
    assignments = math.factorial(sum(sizes)) // math.prod(math.factorial(n) for n in sizes)
    data = tuple(np.asarray(g, dtype=np.float64) for g in groups)
    result = stats.permutation_test(data, statistic, permutation_type="independent", vectorized=False,
                                    n_resamples=n_resamples, alternative=alternative, rng=np.random.default_rng(0))
    exact = assignments <= n_resamples
    return OrderingResult(float(result.statistic), float(result.pvalue), exact,
                          assignments if exact else n_resamples, sizes, kind)


def difference_test(first: Sequence[float], second: Sequence[float], n_resamples: int = 9999) -> OrderingResult:
    """Test H1: the two groups' means differ (two-sided), against exchangeability (H0).

    Args:
        first: per-seed values of one arm (e.g. a random-direction control).
        second: per-seed values of the other (e.g. plain).
        n_resamples: permutations at most; with fewer distinct assignments the test is exact.
    """
    return _permutation([first, second], lambda a, b: float(np.mean(b) - np.mean(a)), "two-sided", n_resamples,
                        "difference")


def ordering_test(groups: Sequence[Sequence[float]], n_resamples: int = 9999) -> OrderingResult:
    """Test H1: the groups' values increase in the order given, against exchangeability (H0).

    Args:
        groups: per-group values (e.g. per-seed harmfulness of the block, plain and push arms), low to high.
        n_resamples: permutations at most; with fewer distinct assignments the test is exact.
    """
    return _permutation(groups, jonckheere, "greater", n_resamples, "ordering")
