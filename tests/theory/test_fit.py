"""Power-law fits: the plain slope, the OLS interval of the exponent, Student's t quantile and the running fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from testbed.errors import ConfigError
from theory.fit import RunningLogLogFit, fit_loglog, fit_loglog_slope, t_quantile


def noisy_power_law(seed: int, n: int = 20, exponent: float = 4.0, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.arange(1.0, n + 1.0)
    return x, 0.3 * x**exponent * np.exp(noise * rng.standard_normal(n))


def test_fit_loglog_slope_recovers_power_law_and_skips_bad_points() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    y = 3.0 * x**4.5
    y[0], y[3] = -1.0, np.nan
    slope, intercept = fit_loglog_slope(torch.as_tensor(x), y)
    assert slope == pytest.approx(4.5, abs=1e-12) and intercept == pytest.approx(np.log(3.0), abs=1e-12)
    assert all(np.isnan(fit_loglog_slope([1.0, 2.0], [0.0, 1.0])))
    with pytest.raises(ConfigError, match="same length"):
        fit_loglog_slope([1.0, 2.0], [1.0])


def test_interval_fit_has_the_same_line_and_the_ols_standard_error() -> None:
    x, y = noisy_power_law(0)
    y[3] = 0.0  # skipped, and not counted
    fit = fit_loglog(x, y)
    assert (fit.slope, fit.intercept) == fit_loglog_slope(x, y)
    assert fit.n_points == 19 and fit.level == 0.95
    keep = y > 0
    _, cov = np.polyfit(np.log(x[keep]), np.log(y[keep]), 1, cov=True)  # scaled by SSR / (n − 2)
    assert fit.stderr == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-10)
    assert fit.half_width == pytest.approx(t_quantile(0.975, 17) * fit.stderr, rel=1e-12)
    assert fit.ci_low < 4.0 < fit.ci_high
    assert fit.coefficient == pytest.approx(math.exp(fit.intercept))
    assert fit.text().startswith(f"{fit.slope:.3f} ± ") and "95% CI" in fit.text() and "19 points" in fit.text()
    wider = fit_loglog(x, y, level=0.99)
    assert wider.ci_low < fit.ci_low and wider.ci_high > fit.ci_high


def test_interval_covers_the_true_exponent_about_95_percent_of_the_time() -> None:
    covered = [fit_loglog(*noisy_power_law(seed, n=12, exponent=2.5, noise=0.3)) for seed in range(400)]
    rate = np.mean([f.ci_low <= 2.5 <= f.ci_high for f in covered])
    assert 0.92 <= rate <= 0.98  # binomial sd at 400 draws ≈ 0.011


def test_degenerate_fits() -> None:
    exact = fit_loglog([1.0, 2.0, 4.0, 8.0], [2.0, 32.0, 512.0, 8192.0])
    assert exact.slope == pytest.approx(4.0) and exact.stderr < 1e-12 and exact.half_width < 1e-11
    two = fit_loglog([1.0, 2.0], [1.0, 4.0])
    assert two.slope == pytest.approx(2.0) and math.isnan(two.stderr) and math.isnan(two.ci_low)
    assert "no interval" in two.text()
    one = fit_loglog([1.0, 2.0], [1.0, 0.0])
    assert one.n_points == 1 and math.isnan(one.slope) and math.isnan(one.coefficient)
    with pytest.raises(ConfigError, match="level"):
        fit_loglog([1.0, 2.0], [1.0, 2.0], level=95)


def test_t_quantile_known_values_and_limits() -> None:
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-13)
    assert t_quantile(0.975, 2) == pytest.approx((2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025), rel=1e-12)
    assert t_quantile(0.975, 10) == pytest.approx(2.2281388519862744, rel=1e-12)
    assert t_quantile(0.975, 1e9) == pytest.approx(1.959963984540054, rel=1e-8)  # → the normal quantile
    assert t_quantile(0.025, 7) == -t_quantile(0.975, 7) and t_quantile(0.5, 3) == 0.0
    for p, df in ((0.0, 3), (1.0, 3), (0.9, 0.5), (0.9, math.inf)):
        with pytest.raises(ConfigError, match="t quantile"):
            t_quantile(p, df)


def test_running_fit_equals_the_batch_fit_over_its_window() -> None:
    x, y = noisy_power_law(1, n=60)
    y[10] = -1.0
    running = RunningLogLogFit(window=(5, 40))
    used = [running.add(a, b) for a, b in zip(x, y, strict=True)]
    keep = (x >= 5) & (x <= 40) & (y > 0)
    assert sum(used) == int(keep.sum()) == running.n
    batch, stream = fit_loglog(x[keep], y[keep]), running.fit()
    assert stream.slope == pytest.approx(batch.slope, rel=1e-12) and running.slope == stream.slope
    assert stream.intercept == pytest.approx(batch.intercept, rel=1e-10)
    assert stream.stderr == pytest.approx(batch.stderr, rel=1e-8)
    assert stream.ci_low == pytest.approx(batch.ci_low, rel=1e-8) and stream.n_points == batch.n_points


def test_running_fit_resumes_from_its_state() -> None:
    x, y = noisy_power_law(2, n=30)
    whole, first = RunningLogLogFit(), RunningLogLogFit()
    for a, b in zip(x, y, strict=True):
        whole.add(a, b)
    for a, b in zip(x[:12], y[:12], strict=True):
        first.add(a, b)
    resumed = RunningLogLogFit()
    resumed.load_state_dict(first.state_dict())
    for a, b in zip(x[12:], y[12:], strict=True):
        resumed.add(a, b)
    assert resumed.fit() == whole.fit()
    assert math.isnan(RunningLogLogFit().slope) and RunningLogLogFit().fit().n_points == 0
    with pytest.raises(ConfigError, match="start < end"):
        RunningLogLogFit(window=(10, 10))
