"""The F-weighted quartic law A ≈ γ²t⁴/8, γ = ‖F^{1/2} P_S H g‖: sympy derivation, numbers, and the quadratic toy."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

from testbed.errors import ConfigError
from theory.derivation import derive, derive_f_weighted, main
from theory.quartic import (
    exact_alignment_loss_flow,
    exact_alignment_loss_gd,
    gamma_f_weighted,
    leading_coefficient,
    leading_law,
    leading_law_gd,
    predict_alignment_loss_gd,
)
from toy_models.quadratic import QuadraticToy, build_landscape

UNEQUAL = np.array([1.0, 4.0, 20.0, 100.0])  # F's eigenvalues on S, two decades apart


def toy_landscape(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """U [32, 4], H, g0 of experiments/toy_regimes/quartic.yaml's landscape (P_S g0 = 0, coupling 0.5)."""
    return build_landscape(32, 4, 0.5, 0.0, (0.2, 1.0), 1.0, seed)


def f_weighted_loss(lam: np.ndarray, U: np.ndarray, delta: np.ndarray) -> float:
    """½‖F^{1/2} P_S δ‖² with F^{1/2} formed as a matrix (the definition, not the series)."""
    w, V = np.linalg.eigh(U @ np.diag(lam) @ U.T)
    root = (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T
    return 0.5 * float(np.sum((root @ (U @ (U.T @ delta))) ** 2))


# ---- sympy -------------------------------------------------------------------------------------------------------


def test_sympy_derivation_gives_gamma_squared_t4_over_8_without_a_factor_lambda() -> None:
    der = derive_f_weighted()
    assert der.checks and all(der.checks.values()), der.checks
    t, eta, n, gamma, lam = (der.symbols[s] for s in ("t", "eta", "n", "gamma", "lam"))
    assert sp.simplify(der.flow_leading - gamma**2 * t**4 / 8) == 0
    assert sp.simplify(der.gd_leading - gamma**2 * eta**4 * n**2 * (n - 1) ** 2 / 8) == 0
    assert lam not in der.flow_leading.free_symbols  # γ carries F: no λ outside it
    assert der.equal_eigenvalue_leading == derive(3).flow_leading  # (λ/8) G_11 t⁴ when every λ_i = λ
    # γ² is linear in the eigenvalues of F and involves each of them
    assert sp.Poly(der.gamma_squared, *der.eigenvalues).total_degree() == 1
    assert all(x in der.gamma_squared.free_symbols for x in der.eigenvalues)
    assert der.basis.T * der.basis == sp.eye(der.dim) and any(der.basis[i, j] != 0 for i in range(2) for j in (2, 3))


def test_sympy_derivation_on_three_parameters_and_bad_sizes() -> None:
    assert all(derive_f_weighted(3, 2).checks.values())
    for dim, rank in ((2, 1), (4, 1), (4, 4), (7, 2)):
        with pytest.raises(ConfigError, match="F-weighted derivation"):
            derive_f_weighted(dim, rank)


def test_derivation_main_prints_either_derivation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--f-weighted"]) == 0
    out = capsys.readouterr().out
    assert "F-weighted quartic law" in out and "\\frac{\\gamma^{2} t^{4}}{8}" in out
    assert out.count(": ok") == len(derive_f_weighted().checks) and "FAILED" not in out
    assert main([]) == 0
    assert "G_{11} \\lambda t^{4}" in capsys.readouterr().out


# ---- numbers -----------------------------------------------------------------------------------------------------


def test_gamma_is_the_norm_of_root_f_times_projected_hg() -> None:
    U, H, g0 = toy_landscape()
    gamma = gamma_f_weighted(UNEQUAL, U, H, g0)
    w, V = np.linalg.eigh(U @ np.diag(UNEQUAL) @ U.T)
    root = (V * np.sqrt(np.clip(w, 0.0, None))) @ V.T
    assert gamma == pytest.approx(np.linalg.norm(root @ U @ U.T @ H @ g0), rel=1e-10)
    assert gamma_f_weighted(UNEQUAL, U, lambda v: H @ v, g0) == pytest.approx(gamma, rel=1e-12)
    tensors = [torch.as_tensor(a) for a in (UNEQUAL, U, H, g0)]
    assert gamma_f_weighted(*tensors) == pytest.approx(gamma, rel=1e-12)
    assert leading_coefficient(UNEQUAL, U, H, g0) == pytest.approx(gamma**2 / 8, rel=1e-12)
    # equal eigenvalues: γ² = λ ‖P_S H g‖² (the old law's λ)
    assert gamma_f_weighted(7.0, U, H, g0) ** 2 == pytest.approx(7.0 * np.sum((U.T @ H @ g0) ** 2), rel=1e-12)


def test_leading_laws_shapes_values_and_bad_inputs() -> None:
    assert leading_law(2.0, 0.5) == pytest.approx(4 * 0.5**4 / 8) and isinstance(leading_law(2.0, 0.5), float)
    np.testing.assert_allclose(leading_law(2.0, np.array([0.0, 1.0])), [0.0, 0.5])
    np.testing.assert_allclose(leading_law_gd(2.0, 0.1, [1, 2, 3]), [0.0, 4 * 1e-4 * 4 / 8, 4 * 1e-4 * 36 / 8])
    U, H, g0 = toy_landscape()
    steps = np.arange(0, 40)
    np.testing.assert_allclose(
        leading_law_gd(gamma_f_weighted(UNEQUAL, U, H, g0), 1e-3, steps),
        predict_alignment_loss_gd(UNEQUAL, U, H, g0, 1e-3, steps, order=1),
        rtol=1e-9,
        atol=1e-30,  # at n = 1 the series keeps the round-off P_S g0 ~ 1e-17
    )
    for call, match in (
        (lambda: leading_law(-1.0, 1.0), "gamma"),
        (lambda: leading_law(1.0, -0.1), "t must be non-negative"),
        (lambda: leading_law_gd(1.0, 0.0, 3), "eta"),
        (lambda: leading_law_gd(float("nan"), 0.1, 3), "gamma"),
    ):
        with pytest.raises(ConfigError, match=match):
            call()


# ---- the quadratic toy, where everything is exact -----------------------------------------------------------------


def test_f_weighted_law_matches_the_exact_early_loss_with_unequal_eigenvalues() -> None:
    U, H, g0 = toy_landscape()
    gamma = gamma_f_weighted(UNEQUAL, U, H, g0)
    coupling_sq = float(np.sum((U.T @ H @ g0) ** 2))  # ‖P_S H g0‖²
    n, etas = 50, np.array([1e-3, 1e-4, 1e-5, 1e-6])  # t = η n from 0.05 down to 5e-5
    exact = np.array([exact_alignment_loss_gd(UNEQUAL, U, H, g0, eta, [n])[0] for eta in etas])
    ratio = exact / np.array([leading_law_gd(gamma, eta, n) for eta in etas])
    err = np.abs(ratio - 1)
    assert err[-1] < 1e-4 and np.all(np.diff(err) < 0)
    np.testing.assert_allclose(err[1:] / err[:-1], 0.1, rtol=0.05)  # |ratio − 1| ∝ η n: the next term is O(t⁵)
    # the old form (λ/8)‖P_S H g0‖² η⁴n²(n−1)² with any one λ of F is off by a constant factor, not by O(ηn):
    # λ_k‖P_S H g‖² ≤ γ² ≤ λ_1‖P_S H g‖², so λ_1 overestimates and λ_k underestimates
    for lam, side in ((UNEQUAL.max(), -1), (UNEQUAL.min(), 1)):
        old = exact / (lam / 8 * coupling_sq * etas**4 * n**2 * (n - 1) ** 2)
        assert side * (old[-1] - 1) > 0.25
        assert old[-1] == pytest.approx(gamma**2 / (lam * coupling_sq), rel=1e-3)
    # an extra factor λ on the F-weighted law (λ γ² t⁴/8) is off by λ itself
    extra = exact / (UNEQUAL.max() * np.array([leading_law_gd(gamma, eta, n) for eta in etas]))
    assert extra[-1] == pytest.approx(1 / UNEQUAL.max(), rel=1e-3)


def test_f_weighted_law_matches_exact_gradient_flow() -> None:
    U, H, g0 = toy_landscape(seed=3)
    t = np.array([0.3, 0.03, 0.003])
    err = np.abs(
        exact_alignment_loss_flow(UNEQUAL, U, H, g0, t) / leading_law(gamma_f_weighted(UNEQUAL, U, H, g0), t) - 1
    )
    assert err[-1] < 1e-2 and np.all(np.diff(err) < 0)


def test_the_toy_trajectory_obeys_the_f_weighted_law() -> None:
    """Run the QuadraticToy's own gradient descent (its fine-tune loss, autograd, SGD) and weigh θ_n with F."""
    lr, n_max = 5e-4, 40
    toy = QuadraticToy(dim=32, rank=4, sharpness=10.0, coupling=0.5, ft_spectrum=(0.2, 1.0), lr=lr)
    U, H, g0 = toy.U.numpy(), toy.H.numpy(), toy.g0.numpy()
    opt = toy.configure_optimizers()
    measured, toy_loss = [], []
    for _ in range(n_max):
        opt.zero_grad()
        toy.finetune_loss().backward()
        opt.step()
        theta = toy.theta.detach().numpy().copy()
        measured.append(f_weighted_loss(UNEQUAL, U, theta))
        toy_loss.append(float(toy.alignment_loss()))
    steps = np.arange(1, n_max + 1)
    exact = exact_alignment_loss_gd(UNEQUAL, U, H, g0, lr, steps)
    np.testing.assert_allclose(measured, exact, rtol=1e-9, atol=1e-30)  # A_1 = 0 up to round-off
    law = leading_law_gd(gamma_f_weighted(UNEQUAL, U, H, g0), lr, steps)
    assert measured[1] == pytest.approx(law[1], rel=1e-9)  # at n = 2 the law is exact
    assert np.max(np.abs(np.array(measured[1:]) / law[1:] - 1)) < 0.02  # t = η n <= 0.02
    # the toy's own loss ½λ‖Uᵀθ‖² is the equal-eigenvalue case of the same law
    law_toy = leading_law_gd(gamma_f_weighted(10.0, U, H, g0), lr, steps)
    assert np.max(np.abs(np.array(toy_loss[1:]) / law_toy[1:] - 1)) < 0.02
