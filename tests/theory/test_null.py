"""The exact isotropic cosine null: closed-form cases, internal consistency, and Monte Carlo agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from testbed.errors import ConfigError
from theory.null import (
    cosine_null_cdf,
    cosine_null_pdf,
    cosine_null_quantile,
    cosine_null_sf,
    cosine_null_threshold,
    sample_null_cosines,
)


def test_d3_is_uniform_so_p99_is_0_98() -> None:
    assert cosine_null_threshold(3, 0.99) == pytest.approx(0.98, abs=1e-12)
    assert cosine_null_threshold(3, 0.999) == pytest.approx(0.998, abs=1e-12)
    xs = np.array([-1.0, -0.3, 0.0, 0.7, 1.0])
    np.testing.assert_allclose(cosine_null_cdf(xs, 3), (1 + xs) / 2, atol=1e-15)
    np.testing.assert_allclose(cosine_null_pdf(xs, 3), 0.5)


def test_d2_is_the_arcsine_law() -> None:
    xs = np.linspace(-0.99, 0.99, 11)
    np.testing.assert_allclose(cosine_null_cdf(xs, 2), 0.5 + np.arcsin(xs) / np.pi, atol=1e-14)
    np.testing.assert_allclose(cosine_null_pdf(xs, 2), 1 / (np.pi * np.sqrt(1 - xs**2)), rtol=1e-12)
    assert cosine_null_threshold(2, 0.99) == pytest.approx(math.sin(np.pi * 0.49), abs=1e-12)


@pytest.mark.parametrize("d", [4, 16, 257])
def test_pdf_is_derivative_of_cdf_and_integrates_to_one(d: int) -> None:
    xs = np.linspace(-1, 1, 20001)
    pdf = cosine_null_pdf(xs, d)
    assert np.trapezoid(pdf, xs) == pytest.approx(1.0, abs=1e-6)
    x0, h = 0.05, 1e-5
    deriv = (cosine_null_cdf(x0 + h, d) - cosine_null_cdf(x0 - h, d)) / (2 * h)
    assert deriv == pytest.approx(cosine_null_pdf(x0, d), rel=1e-7)


@pytest.mark.parametrize("d", [2, 5, 64, 768])
def test_quantile_inverts_cdf_and_is_symmetric(d: int) -> None:
    for q in (0.01, 0.3, 0.5, 0.9, 0.99, 0.999):
        x = cosine_null_quantile(q, d)
        assert cosine_null_cdf(x, d) == pytest.approx(q, abs=1e-10)
        assert cosine_null_quantile(1 - q, d) == pytest.approx(-x, abs=1e-12)
    thr = cosine_null_threshold(d, 0.99)
    assert cosine_null_sf(thr, d) == pytest.approx(0.01, abs=1e-10)


def test_large_d_approaches_gaussian_with_variance_1_over_d() -> None:
    z99 = 2.3263478740408408  # standard normal 0.99 quantile
    for d in (4096, 100_000):
        assert cosine_null_threshold(d, 0.99) * math.sqrt(d) == pytest.approx(z99, rel=2e-3)


@pytest.mark.parametrize("d", [16, 256])
def test_threshold_matches_monte_carlo(d: int) -> None:
    n = 200_000
    cos = sample_null_cosines(d, n, seed=1)
    for p in (0.99, 0.999):
        thr = cosine_null_threshold(d, p)
        rate = float(np.mean(cos > thr))
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(rate - (1 - p)) < 4.5 * sigma, (d, p, rate)
    # Kolmogorov-Smirnov distance on a grid: well inside the 1% critical value 1.63/sqrt(n).
    grid = np.linspace(-0.6, 0.6, 25) * (3 / math.sqrt(d)) / 0.6
    ecdf = np.searchsorted(np.sort(cos), grid, side="right") / n
    assert np.max(np.abs(ecdf - cosine_null_cdf(grid, d))) < 1.63 / math.sqrt(n)


def test_samples_are_deterministic_and_unit_cosines() -> None:
    a, b = sample_null_cosines(10, 1000, seed=3), sample_null_cosines(10, 1000, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_null_cosines(10, 1000, seed=4))
    assert a.shape == (1000,) and np.all(np.abs(a) <= 1)


def test_accepts_torch_tensors() -> None:
    x = torch.tensor([0.1, 0.2], dtype=torch.float32)
    np.testing.assert_allclose(cosine_null_cdf(x, 8), cosine_null_cdf(x.double().numpy(), 8))


@pytest.mark.parametrize("bad_d", [1, 0, -3, 2.5, "16", True])
def test_bad_dimension_is_a_config_error(bad_d: object) -> None:
    with pytest.raises(ConfigError, match="d >= 2"):
        cosine_null_threshold(bad_d)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_p", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_bad_level_is_a_config_error(bad_p: float) -> None:
    with pytest.raises(ConfigError, match="p must lie"):
        cosine_null_threshold(16, bad_p)


def test_bad_sample_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="positive integer"):
        sample_null_cosines(16, 0)
