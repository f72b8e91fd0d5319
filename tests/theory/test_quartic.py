"""The quartic law: the sympy derivation, its agreement with the numeric series, and both against exact solutions."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

from testbed.errors import ConfigError
from theory.derivation import derive
from theory.fit import fit_loglog_slope
from theory.quartic import (
    exact_alignment_loss_flow,
    exact_alignment_loss_gd,
    flow_series_coefficients,
    gd_series_coefficients,
    leading_coefficient,
    main,
    predict_alignment_loss_flow,
    predict_alignment_loss_gd,
)


def random_instance(seed: int, d: int = 20, k: int = 2, eps: float = 0.0):
    """λ per direction, orthonormal U [d, k], SPD H [d, d] and g0 ⊥ S (plus eps · u_1)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    U, Uc = Q[:, :k], Q[:, k:]
    A = rng.standard_normal((d, d))
    H = A @ A.T / d + 0.1 * np.eye(d)
    g0 = Uc @ rng.standard_normal(d - k) + eps * U[:, 0]
    lam = rng.uniform(20.0, 80.0, size=k)
    return lam, U, H, g0


def iterate_gd(lam, U, H, g0, eta, n_max):
    delta, out = np.zeros_like(g0), []
    for _ in range(n_max):
        delta = delta - eta * (g0 + H @ delta)
        out.append(0.5 * np.sum(lam * (U.T @ delta) ** 2))
    return np.array(out)


# ---- sympy derivation ----------------------------------------------------------------------------------------------


def test_derivation_gives_the_quartic_law_and_its_discrete_analogue() -> None:
    der = derive(3)
    t, eta, n, lam = (der.symbols[s] for s in ("t", "eta", "n", "lam"))
    G = der.gram
    assert all(der.checks.values()), der.checks
    assert sp.simplify(der.flow_leading - lam / 8 * G[1, 1] * t**4) == 0
    assert sp.simplify(der.gd_leading - lam / 8 * G[1, 1] * eta**4 * n**2 * (n - 1) ** 2) == 0
    # next order: the cross term with P_S H² g0
    assert sp.simplify(der.flow_correction + lam / 12 * G[1, 2] * t**5) == 0
    assert der.gd_correction.free_symbols >= {G[1, 2], eta, n}
    # broken orthogonality: exponent 2
    assert sp.simplify(der.flow_nonorthogonal_leading - lam / 2 * G[0, 0] * t**2) == 0
    assert sp.simplify(der.gd_nonorthogonal_leading - lam / 2 * G[0, 0] * eta**2 * n**2) == 0
    # no coupling: next non-zero order is t⁶ with P_S H² g0
    assert sp.simplify(der.flow_uncoupled_leading - lam / 72 * G[2, 2] * t**6) == 0
    assert sp.Poly(der.gd_uncoupled_leading, eta).degree() == 6


def test_sympy_coefficients_equal_the_numeric_series() -> None:
    der = derive(3)
    t, eta, n = der.symbols["t"], der.symbols["eta"], der.symbols["n"]
    steps, step_size, times = np.array([0.0, 1.0, 3.0, 7.0, 50.0]), 0.013, np.array([0.0, 0.2, 1.7])
    num_gd, num_flow = gd_series_coefficients(steps, step_size, 3), flow_series_coefficients(times, 3)
    for m in range(4):
        f_gd = sp.lambdify((n, eta), der.gd_coefficients[m], "numpy")
        f_flow = sp.lambdify(t, der.flow_coefficients[m], "numpy")
        np.testing.assert_allclose(f_gd(steps, step_size), num_gd[:, m], rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(f_flow(times) * np.ones_like(times), num_flow[:, m], rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sympy_leading_coefficient_equals_numeric(seed: int) -> None:
    _, U, H, g0 = random_instance(seed)
    lam = 37.5
    der = derive(3)
    G11 = float(np.sum((U.T @ H @ g0) ** 2))
    symbolic = float(der.flow_leading.subs({der.symbols["lam"]: lam, der.gram[1, 1]: G11, der.symbols["t"]: 1}))
    assert leading_coefficient(lam, U, H, g0) == pytest.approx(symbolic, rel=1e-12)
    # the general leading law for the first non-zero order m agrees with the uncoupled one at m = 2
    assert sp.simplify(der.leading_law(2) - der.flow_uncoupled_leading) == 0


def test_leading_coefficient_per_direction_callable_and_torch() -> None:
    lam, U, H, g0 = random_instance(3)
    expected = float(np.sum(lam / 8 * (U.T @ H @ g0) ** 2))
    assert leading_coefficient(lam, U, H, g0) == pytest.approx(expected, rel=1e-12)
    assert leading_coefficient(lam, U, lambda v: H @ v, g0) == pytest.approx(expected, rel=1e-12)
    tensors = [torch.as_tensor(a) for a in (lam, U, H, g0)]
    assert leading_coefficient(*tensors) == pytest.approx(expected, rel=1e-12)


def test_coefficient_scales_as_sharpness_times_coupling_squared() -> None:
    d, k = 12, 2
    U = np.eye(d)[:, :k]
    g0 = np.zeros(d)
    g0[k:] = np.linspace(1.0, 2.0, d - k)
    base = np.diag(np.linspace(0.5, 1.5, d))
    block = np.zeros((d, d))
    block[:k, k:] = np.random.default_rng(0).standard_normal((k, d - k))
    ratios = [
        leading_coefficient(lam, U, base + c * (block + block.T), g0) / (lam * c**2)
        for lam in (10.0, 100.0, 1000.0)
        for c in (0.01, 0.1, 1.0)
    ]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-10)


# ---- numeric predictions against exact solutions ------------------------------------------------------------------


def test_exact_gd_matches_the_recursion_including_stiff_and_flat_directions() -> None:
    lam, U, H, g0 = random_instance(4, d=10)
    w, V = np.linalg.eigh(H)
    w[0], w[-1] = 0.0, 150.0  # a flat direction and one with 1 − ηh < 0
    H = (V * w) @ V.T
    eta, n_max = 0.01, 30
    exact = exact_alignment_loss_gd(lam, U, H, g0, eta, np.arange(1, n_max + 1))
    np.testing.assert_allclose(exact, iterate_gd(lam, U, H, g0, eta, n_max), rtol=1e-9, atol=1e-30)


def test_gd_series_is_exact_while_n_le_order_plus_one() -> None:
    lam, U, H, g0 = random_instance(5, eps=0.3)
    steps = np.arange(0, 5)
    exact = exact_alignment_loss_gd(lam, U, H, g0, 0.05, steps)
    np.testing.assert_allclose(predict_alignment_loss_gd(lam, U, H, g0, 0.05, steps, order=3), exact, rtol=1e-11)


def test_gd_prediction_with_correction_within_one_percent_early() -> None:
    lam, U, H, g0 = random_instance(6)
    eta, steps = 0.01, np.arange(2, 11)  # η n ‖H‖ ≤ 0.45 (‖H‖ ≈ 4.5): the early window
    exact = exact_alignment_loss_gd(lam, U, H, g0, eta, steps)
    err1 = np.abs(predict_alignment_loss_gd(lam, U, H, g0, eta, steps, order=1) / exact - 1)
    err2 = np.abs(predict_alignment_loss_gd(lam, U, H, g0, eta, steps, order=2) / exact - 1)
    assert err2.max() < 0.01
    assert err2.max() < err1.max() / 3  # the P_S H² g0 correction is what buys the accuracy
    # the leading law alone is (λ/8)‖P_S H g0‖² η⁴ n²(n−1)²
    c4 = leading_coefficient(lam, U, H, g0)
    np.testing.assert_allclose(
        predict_alignment_loss_gd(lam, U, H, g0, eta, steps, order=1), c4 * eta**4 * steps**2 * (steps - 1) ** 2
    )


def test_flow_prediction_against_exact_flow() -> None:
    lam, U, H, g0 = random_instance(7)
    t = np.linspace(0.005, 0.05, 10)
    exact = exact_alignment_loss_flow(lam, U, H, g0, t)
    err = {o: np.max(np.abs(predict_alignment_loss_flow(lam, U, H, g0, t, order=o) / exact - 1)) for o in (1, 2, 4)}
    assert err[2] < 1e-2 and err[4] < 1e-4 and err[4] < err[2] < err[1]
    # GD with a tiny step approaches the flow (relative gap ≈ 2/n from n²(n−1)² vs n⁴)
    eta = 1e-6
    gd = exact_alignment_loss_gd(lam, U, H, g0, eta, np.round(t / eta))
    np.testing.assert_allclose(gd, exact, rtol=1e-3)


def test_exponents_four_two_and_next_order() -> None:
    t = np.geomspace(1e-4, 2e-3, 12)
    lam, U, H, g0 = random_instance(8)
    slope4, _ = fit_loglog_slope(t, exact_alignment_loss_flow(lam, U, H, g0, t))
    assert slope4 == pytest.approx(4.0, abs=0.02)
    lam, U, H, g1 = random_instance(8, eps=0.5)
    slope2, _ = fit_loglog_slope(t, exact_alignment_loss_flow(lam, U, H, g1, t))
    assert slope2 == pytest.approx(2.0, abs=0.02)
    # uncoupled but P_S H² g0 ≠ 0: first non-zero order is t⁶, and the prediction follows it
    H3 = np.array([[1.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.5]])
    U3, g3 = np.array([[1.0], [0.0], [0.0]]), np.array([0.0, 0.0, 1.0])
    exact6 = exact_alignment_loss_flow(10.0, U3, H3, g3, t)
    assert fit_loglog_slope(t, exact6)[0] == pytest.approx(6.0, abs=0.02)
    np.testing.assert_allclose(predict_alignment_loss_flow(10.0, U3, H3, g3, t, order=1), 10 / 72 * 0.15**2 * t**6)
    np.testing.assert_allclose(predict_alignment_loss_flow(10.0, U3, H3, g3, t, order=2), exact6, rtol=2e-2)


def test_no_coupling_at_all_stays_at_numerical_zero() -> None:
    lam, U, H, g0 = random_instance(9)
    P = U @ U.T
    Q = np.eye(len(g0)) - P
    H_block = P @ H @ P + Q @ H @ Q  # S invariant under H
    steps = np.arange(1, 200)
    assert np.max(exact_alignment_loss_gd(lam, U, H_block, g0, 0.01, steps)) < 1e-25
    assert np.max(predict_alignment_loss_gd(lam, U, H_block, g0, 0.01, steps)) < 1e-25
    assert leading_coefficient(lam, U, H_block, g0) < 1e-28


# ---- errors -----------------------------------------------------------------------------------------------------


def test_bad_inputs_are_config_errors() -> None:
    lam, U, H, g0 = random_instance(10)
    with pytest.raises(ConfigError, match="orthonormal"):
        leading_coefficient(lam, 2 * U, H, g0)
    with pytest.raises(ConfigError, match="non-negative"):
        leading_coefficient(-1.0, U, H, g0)
    with pytest.raises(ConfigError, match="20x20"):
        leading_coefficient(lam, U, H[:5, :5], g0)
    with pytest.raises(ConfigError, match="one sharpness per direction"):
        leading_coefficient(np.ones(3), U, H, g0)
    with pytest.raises(ConfigError, match="order"):
        predict_alignment_loss_gd(lam, U, H, g0, 0.01, [1, 2], order=0)
    with pytest.raises(ConfigError, match="symmetric"):
        exact_alignment_loss_gd(lam, U, H + np.triu(np.ones_like(H)), g0, 0.01, [1])
    with pytest.raises(ConfigError, match="integers"):
        exact_alignment_loss_gd(lam, U, H, g0, 0.01, [1.5])
    with pytest.raises(ConfigError, match="order"):
        derive(1)


def test_module_main_prints_the_derivation(capsys: pytest.CaptureFixture[str]) -> None:
    main()
    out = capsys.readouterr().out
    assert "G_{11} \\lambda t^{4}" in out and "FAILED" not in out
    assert out.count(": ok") == 4
