"""The AIC checker: condition flags, predicted exponent and coefficient, checked against exact quadratic solutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from testbed.errors import ConfigError
from theory.aic import check_aic, spectral_norm
from theory.quartic import exact_alignment_loss_flow, exact_alignment_loss_gd, fit_loglog_slope, leading_coefficient


def instance(d: int = 24, k: int = 2, eps: float = 0.0, lam: float = 60.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    U, Uc = Q[:, :k], Q[:, k:]
    A = rng.standard_normal((d, d))
    H = A @ A.T / d
    g0 = Uc @ rng.standard_normal(d - k) + eps * U[:, 0]
    return lam, U, H, g0


def test_aic_holds_exponent_four_and_coefficients() -> None:
    lam, U, H, g0 = instance()
    eta = 0.01
    rep = check_aic(lam, U, H, g0, eta=eta)
    assert rep.conditions == {"sharp_low_rank": True, "orthogonal": True, "coupled": True} and rep.holds
    assert rep.exponent == 4
    assert rep.coefficient == pytest.approx(leading_coefficient(lam, U, H, g0), rel=1e-12)
    # at n = 2 the GD series stops after the coupling term, so A_2 = coefficient_gd · (2·1)² exactly
    assert rep.coefficient_gd == pytest.approx(rep.coefficient * eta**4, rel=1e-12)
    assert exact_alignment_loss_gd(lam, U, H, g0, eta, [2])[0] == pytest.approx(4 * rep.coefficient_gd, rel=1e-9)
    t = np.geomspace(1e-4, 1e-3, 8)
    exact = exact_alignment_loss_flow(lam, U, H, g0, t)
    assert fit_loglog_slope(t, exact)[0] == pytest.approx(rep.exponent, abs=0.01)
    assert exact[0] / t[0] ** 4 == pytest.approx(rep.coefficient, rel=1e-3)


def test_broken_orthogonality_predicts_exponent_two() -> None:
    lam, U, H, g0 = instance(eps=0.2)
    rep = check_aic(lam, U, H, g0, eta=0.01)
    assert rep.conditions["orthogonal"] is False and not rep.holds
    assert rep.exponent == 2
    assert rep.coefficient == pytest.approx(0.5 * lam * 0.2**2, rel=1e-9)
    assert rep.numbers["orthogonality"] == pytest.approx(0.2 / np.linalg.norm(g0), rel=1e-9)
    t = np.geomspace(1e-5, 1e-4, 8)
    exact = exact_alignment_loss_flow(lam, U, H, g0, t)
    assert fit_loglog_slope(t, exact)[0] == pytest.approx(2.0, abs=0.01)
    assert exact[0] / t[0] ** 2 == pytest.approx(rep.coefficient, rel=1e-3)


def test_block_diagonal_hessian_is_identically_zero() -> None:
    lam, U, H, g0 = instance()
    P = U @ U.T
    Q = np.eye(len(g0)) - P
    H_block = P @ H @ P + Q @ H @ Q
    rep = check_aic(lam, U, H_block, g0, eta=0.01)
    assert rep.conditions == {"sharp_low_rank": True, "orthogonal": True, "coupled": False}
    assert rep.exponent is None and rep.coefficient == 0.0 and rep.coefficient_gd == 0.0
    assert "identically zero" in rep.table()
    assert np.max(exact_alignment_loss_gd(lam, U, H_block, g0, 0.01, np.arange(1, 300))) < 1e-25


def test_block_diagonal_beyond_the_krylov_cap_says_how_far_it_checked() -> None:
    lam, U, H, g0 = instance(d=80)
    P = U @ U.T
    Q = np.eye(80) - P
    H_block = P @ H @ P + Q @ H @ Q
    rep = check_aic(lam, U, lambda v: H_block @ v, g0)
    assert rep.exponent is None and rep.coefficient == 0.0
    assert rep.numbers["krylov_checked"] == 64 and "none up to t^130" in rep.table()


def test_uncoupled_but_second_order_coupled_predicts_exponent_six() -> None:
    H = np.array([[1.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.5]])
    U, g0 = np.array([[1.0], [0.0], [0.0]]), np.array([0.0, 0.0, 1.0])
    rep = check_aic(10.0, U, H, g0, max_rank_fraction=0.5)
    assert rep.conditions["coupled"] is False and rep.exponent == 6
    assert rep.coefficient == pytest.approx(10.0 / 72 * 0.15**2, rel=1e-12)  # ½λ(u·H²g0)²/(3!)²
    t = np.geomspace(1e-3, 1e-2, 8)
    exact = exact_alignment_loss_flow(10.0, U, H, g0, t)
    assert fit_loglog_slope(t, exact)[0] == pytest.approx(6.0, abs=0.01)
    assert exact[0] / t[0] ** 6 == pytest.approx(rep.coefficient, rel=1e-2)


def test_sharpness_and_rank_conditions_use_reported_numbers() -> None:
    lam, U, H, g0 = instance(lam=2.0)
    h_norm = np.linalg.norm(H, 2)
    rep = check_aic(lam, U, H, g0)
    assert rep.numbers["h_norm"] == pytest.approx(h_norm) and rep.numbers["sharpness_ratio"] == 1.0
    assert h_norm > 2.0 and rep.conditions["sharp_low_rank"] is False  # λ = 2 is below the fine-tune curvature
    strict = check_aic(60.0, U, H, g0, sharpness_ratio=60.0 / h_norm * 1.01)
    loose = check_aic(60.0, U, H, g0, sharpness_ratio=60.0 / h_norm * 0.99)
    assert strict.conditions["sharp_low_rank"] is False and loose.conditions["sharp_low_rank"] is True
    _, U_big, H_big, g_big = instance(d=20, k=10)
    assert check_aic(1e3, U_big, H_big, g_big).conditions["sharp_low_rank"] is False  # k/d = 0.5 is not low rank
    table = rep.table()
    assert table.startswith("| condition | holds |") and table.count("\n| ") == 3


def test_callable_hessian_and_torch_inputs_give_the_same_report() -> None:
    lam, U, H, g0 = instance()
    ref = check_aic(lam, U, H, g0, eta=0.05)
    hvp = check_aic(lam, U, lambda v: H @ v, g0, eta=0.05)
    tens = check_aic(torch.tensor(lam), torch.as_tensor(U), torch.as_tensor(H), torch.as_tensor(g0), eta=0.05)
    for rep in (hvp, tens):
        assert rep.conditions == ref.conditions and rep.exponent == ref.exponent
        assert rep.coefficient == pytest.approx(ref.coefficient, rel=1e-10)
    assert spectral_norm(lambda v: H @ v, H.shape[0]) == pytest.approx(np.linalg.norm(H, 2), rel=1e-6)


def test_bad_inputs_are_config_errors() -> None:
    lam, U, H, g0 = instance()
    with pytest.raises(ConfigError, match="zero vector"):
        check_aic(lam, U, H, np.zeros_like(g0))
    with pytest.raises(ConfigError, match="eta"):
        check_aic(lam, U, H, g0, eta=-1.0)
    with pytest.raises(ConfigError, match="orthonormal"):
        check_aic(lam, U * 3, H, g0)
