"""The AIC checker: condition flags, predicted exponent and coefficient, checked against exact quadratic solutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from testbed.errors import ConfigError
from theory.aic import aic_verdict, check_aic, demo_regimes, spectral_norm
from theory.fit import fit_loglog_slope
from theory.quartic import exact_alignment_loss_flow, exact_alignment_loss_gd, gamma_f_weighted, leading_coefficient


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


# ---- the verdict from measured scalars --------------------------------------------------------------------------


def measured(lam, U, H, g0, tail: float = 0.0) -> dict[str, float]:
    """What a diagnostics pass would measure: F's eigenvalues on S, trace F, ‖P_S g‖, ‖g‖, γ, ‖H g‖."""
    lam_arr = np.broadcast_to(np.asarray(lam, dtype=float), (U.shape[1],))
    return {
        "eigenvalues": lam_arr,
        "trace": float(lam_arr.sum()) + tail,
        "eps": float(np.linalg.norm(U.T @ g0)),
        "grad_norm": float(np.linalg.norm(g0)),
        "gamma": gamma_f_weighted(lam_arr, U, H, g0),
        "hg_norm": float(np.linalg.norm(H @ g0)),
    }


def test_verdict_aic_holds_agrees_with_the_exact_checker() -> None:
    lam, U, H, g0 = instance()
    verdict, exact = aic_verdict(**measured(lam, U, H, g0)), check_aic(lam, U, H, g0)
    assert verdict.conditions == exact.conditions == {"sharp_low_rank": True, "orthogonal": True, "coupled": True}
    assert verdict.holds and verdict.verdict == exact.verdict == "AIC holds"
    assert verdict.exponent == exact.exponent == 4
    assert verdict.coefficient == pytest.approx(exact.coefficient, rel=1e-12)  # γ²/8
    t = 1e-4
    assert exact_alignment_loss_flow(lam, U, H, g0, [t])[0] / t**4 == pytest.approx(verdict.coefficient, rel=1e-3)
    line = verdict.line()
    assert "\n" not in line and line.startswith("AIC holds; leading exponent 4; t⁴ coefficient γ²/8 = ")
    assert verdict.numbers["t_after_tail"] == 0.0 and verdict.numbers["t_after_eps"] < 1e-12
    table = verdict.table()
    assert table.startswith("| condition | holds |") and table.count("\n| ") == 3 and "**4**" in table


def test_verdict_broken_orthogonality_predicts_exponent_two() -> None:
    lam, U, H, g0 = instance(eps=0.2)
    m = measured(lam, U, H, g0)
    verdict, exact = aic_verdict(**m), check_aic(lam, U, H, g0)
    assert verdict.conditions == exact.conditions and verdict.conditions["orthogonal"] is False
    assert verdict.exponent == exact.exponent == 2 and not verdict.holds
    assert verdict.verdict == "AIC does not hold (fails: initial orthogonality)"
    assert verdict.numbers["eps_rel"] == pytest.approx(0.2 / np.linalg.norm(g0), rel=1e-9)
    assert exact.coefficient <= 0.5 * lam * m["eps"] ** 2 * (1 + 1e-12)  # the bound the line states
    assert f"≤ ½λ_1‖P_S g‖² = {0.5 * lam * m['eps'] ** 2:.4g}" in verdict.line()
    # well before the crossover t_after_eps the t² term dwarfs γ²t⁴/8
    t_cross = verdict.numbers["t_after_eps"]
    assert t_cross == pytest.approx(2 * np.sqrt(lam) * m["eps"] / m["gamma"])
    assert exact_alignment_loss_flow(lam, U, H, g0, [t_cross / 10])[0] > 50 * verdict.coefficient * (t_cross / 10) ** 4
    assert aic_verdict(**m, eps_max=0.5).conditions["orthogonal"] is True


def test_verdict_without_coupling_has_no_t4_term() -> None:
    lam, U, H, g0 = instance()
    P = U @ U.T
    Q = np.eye(len(g0)) - P
    H_block = P @ H @ P + Q @ H @ Q
    verdict = aic_verdict(**measured(lam, U, H_block, g0))
    assert verdict.conditions == {"sharp_low_rank": True, "orthogonal": True, "coupled": False}
    assert verdict.exponent is None and check_aic(lam, U, H_block, g0).exponent is None
    assert verdict.exponent_text() == "no t⁴ term (t⁶ or higher)" and "O(t⁶)" in verdict.law
    assert verdict.verdict == "AIC does not hold (fails: curvature coupling)"
    # uncoupled but P_S H² g ≠ 0: the exact checker finds t⁶, the measured scalars say "no t⁴ term"
    H3 = np.array([[1.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.5]])
    U3, g3 = np.array([[1.0], [0.0], [0.0]]), np.array([0.0, 0.0, 1.0])
    assert check_aic(10.0, U3, H3, g3, max_rank_fraction=0.5).exponent == 6
    assert aic_verdict(**measured(10.0, U3, H3, g3)).exponent is None


def test_verdict_spectrum_condition_thresholds_and_scale_freedom() -> None:
    lam, U, H, g0 = instance()
    m = measured(lam, U, H, g0, tail=40.0)  # 40 / 160 of the trace outside S
    wide = aic_verdict(**m)
    assert wide.conditions == {"sharp_low_rank": False, "orthogonal": True, "coupled": True}
    assert wide.exponent == 4 and wide.numbers["tail_fraction"] == pytest.approx(0.25)
    assert wide.verdict == "AIC does not hold (fails: sharp low-rank alignment curvature)"
    assert aic_verdict(**m, tail_max=0.3).holds
    assert wide.numbers["t_after_tail"] == pytest.approx(2 * m["grad_norm"] * np.sqrt(40.0) / m["gamma"])
    # default λ threshold: the fine-tune curvature along g, ‖H g‖/‖g‖; an absolute one replaces it
    m0 = measured(lam, U, H, g0)
    assert aic_verdict(**m0).numbers["lam_min"] == pytest.approx(m0["hg_norm"] / m0["grad_norm"])
    assert aic_verdict(**m0, lam_min=61.0).conditions["sharp_low_rank"] is False
    assert aic_verdict(**{**m0, "eigenvalues": [60.0, 0.5], "trace": 60.5}).conditions["sharp_low_rank"] is False
    assert aic_verdict(**m0, gamma_min=m0["gamma"] * 1.01).conditions["coupled"] is False
    # scale-free: F → cF, H → cH, g → cg changes no decision
    c = 1e3
    scaled = {**m0, "eigenvalues": c * m0["eigenvalues"], "trace": c * m0["trace"], "eps": c * m0["eps"]}
    scaled.update(grad_norm=c * m0["grad_norm"], gamma=c**2.5 * m0["gamma"], hg_norm=c**2 * m0["hg_norm"])
    for mm in (m0, m):
        mm_scaled = {**scaled, "trace": c * mm["trace"]}
        assert aic_verdict(**mm_scaled).conditions == aic_verdict(**mm).conditions


def test_verdict_bad_inputs_are_config_errors() -> None:
    m = measured(*instance())
    for change, match in (
        ({"eigenvalues": []}, "at least one"),
        ({"eigenvalues": [60.0, -1.0]}, ">= 0"),
        ({"trace": 100.0}, "below the sum"),
        ({"grad_norm": 0.0}, "grad_norm is 0"),
        ({"gamma": -1.0}, "gamma must be"),
        ({"eps": float("nan")}, "eps must be"),
    ):
        with pytest.raises(ConfigError, match=match):
            aic_verdict(**{**m, **change})
    with pytest.raises(ConfigError, match="tail_max"):
        aic_verdict(**m, tail_max=2.0)


def test_exact_report_has_the_same_verdict_and_line() -> None:
    rep = check_aic(*instance(eps=0.2), eta=0.01)
    assert rep.verdict == "AIC does not hold (fails: initial orthogonality)"
    assert rep.line().startswith("AIC does not hold (fails: initial orthogonality); leading exponent 2; coefficient")
    assert rep.table().count(rep.verdict) == 1
    assert "identically zero" in demo_regimes() and demo_regimes().count("Measured: ") == 3
