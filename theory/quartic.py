"""The quartic law of alignment collapse: sympy derivation and numeric predictions.

Setting. Around θ0 the fine-tune loss is quadratic, F(θ0 + δ) = g0·δ + ½ δᵀHδ, and the alignment loss is
A(δ) = ½ Σ_i λ_i (u_iᵀδ)², with U = [u_1 … u_k] an orthonormal basis of the alignment subspace S (d×k) and λ_i its
sharpness per direction. Fine-tuning runs gradient flow dδ/dt = −(g0 + Hδ) or gradient descent
δ_{n+1} = δ_n − η(g0 + Hδ_n), from δ = 0.

Because δ is a polynomial in H applied to g0, P_S δ is a series in the vectors P_S Hᵐ g0:

    flow:  P_S δ(t) = Σ_m −(−1)ᵐ t^{m+1}/(m+1)!      P_S Hᵐ g0
    GD:    P_S δ_n  = Σ_m −(−1)ᵐ η^{m+1} C(n, m+1)   P_S Hᵐ g0      (exact; terms m ≥ n vanish)

and A = ½ Σ_{m,m'} c_m c_{m'} W_{mm'} with the λ-weighted Gram matrix W_{mm'} = Σ_i λ_i (u_iᵀHᵐg0)(u_iᵀH^{m'}g0).
If P_S g0 = 0 (orthogonality) and P_S H g0 ≠ 0 (coupling) the leading term is (λ/8)‖P_S H g0‖² t⁴ for flow and
(λ/8)‖P_S H g0‖² η⁴ n²(n−1)² for GD; if P_S g0 ≠ 0 it is ½λ‖P_S g0‖² t². :func:`derive` obtains all of this with
sympy; the numeric functions below evaluate the same series with numpy (tests hold the two together).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import sympy as sp

from testbed.errors import ConfigError

__all__ = [
    "QuarticDerivation",
    "derive",
    "leading_coefficient",
    "predict_alignment_loss_gd",
    "predict_alignment_loss_flow",
    "exact_alignment_loss_gd",
    "exact_alignment_loss_flow",
    "fit_loglog_slope",
    "gd_series_coefficients",
    "flow_series_coefficients",
    "projected_krylov",
    "leading_order",
    "as_array",
    "as_operator",
]

Operator = Callable[[np.ndarray], np.ndarray]
_ORTHONORMAL_TOL = 1e-4  # U from a float32 Lanczos run is orthonormal to ~1e-6; looser means a wrong basis
_MAX_SERIES_ORDER = 12  # highest power Hᵐ g0 searched for the first non-zero coupling
_ZERO_TOL = 1e-10  # ‖P_S Hᵐ g0‖ below this fraction of ‖Hᵐ g0‖ is round-off, not coupling


# ----------------------------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------------------------


def as_array(x: Any, name: str = "array") -> np.ndarray:
    """Convert a numpy array, torch tensor, list or scalar to a float64 numpy array."""
    if hasattr(x, "detach"):  # torch tensor; theory does not import torch
        x = x.detach().cpu().double().numpy()
    try:
        out = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be numeric, got {type(x).__name__}") from exc
    if not np.all(np.isfinite(out)):
        raise ConfigError(f"{name} contains NaN or inf")
    return out


def as_operator(H: Any, d: int) -> Operator:
    """Turn H (a d×d array/tensor, or a callable v -> H v such as a Hessian-vector product) into v -> H v.

    A callable receives a float64 numpy vector of length d and may return a numpy array or a torch tensor.
    """
    if callable(H) and not hasattr(H, "shape"):

        def apply(v: np.ndarray) -> np.ndarray:
            out = as_array(H(v), "H(v)").reshape(-1)
            if out.shape != (d,):
                raise ConfigError(f"H(v) must return a vector of length {d}, got shape {out.shape}")
            return out

        return apply
    mat = as_array(H, "H")
    if mat.shape != (d, d):
        raise ConfigError(f"H must be a {d}x{d} matrix (or a callable v -> H v), got shape {mat.shape}")
    return lambda v: mat @ v


def _validate(lam: Any, U: Any, g0: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (lam [k], U [d, k], g0 [d]) as float64, checking shapes, orthonormality and sign of λ."""
    g = as_array(g0, "g0").reshape(-1)
    d = g.shape[0]
    basis = as_array(U, "U")
    if basis.ndim == 1:
        basis = basis[:, None]
    if basis.ndim != 2 or basis.shape[0] != d:
        raise ConfigError(f"U must be a d×k basis with d = len(g0) = {d}, got shape {basis.shape}")
    k = basis.shape[1]
    if not 1 <= k <= d:
        raise ConfigError(f"alignment subspace rank k must satisfy 1 <= k <= d = {d}, got k = {k}")
    gram_err = float(np.max(np.abs(basis.T @ basis - np.eye(k))))
    if gram_err > _ORTHONORMAL_TOL:
        raise ConfigError(f"U must have orthonormal columns (max |UᵀU − I| = {gram_err:.2e} > {_ORTHONORMAL_TOL})")
    lam_arr = as_array(lam, "lam").reshape(-1)
    if lam_arr.size == 1:
        lam_arr = np.full(k, float(lam_arr[0]))
    if lam_arr.shape != (k,):
        raise ConfigError(f"lam must be a scalar or have one sharpness per direction (k = {k}), got {lam_arr.size}")
    if np.any(lam_arr < 0):
        raise ConfigError(f"sharpness lam must be non-negative, got min {lam_arr.min():g}")
    return lam_arr, basis, g


def projected_krylov(
    lam: Any, U: Any, H: Any, g0: Any, m_max: int, *, stop_tol: float | None = None, scale: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in S of the Krylov vectors: Y[m] = Uᵀ Hᵐ g0 for m = 0..m_max, and the norms ‖Hᵐ g0‖.

    Args:
        lam: sharpness, scalar or [k] (validated only).
        U: orthonormal basis of S, [d, k].
        H: fine-tune Hessian, [d, d] or a callable v -> H v.
        g0: initial fine-tune gradient, [d].
        m_max: highest power of H.
        stop_tol: if given, stop after the first m >= 1 with ‖Uᵀ Hᵐ g0‖ > stop_tol · ref_m (saves Hessian-vector
            products), where ref_m = scaleᵐ ‖g0‖ if ``scale`` is given, else ‖Hᵐ g0‖.
        scale: curvature scale for ``stop_tol`` (e.g. ‖H‖).

    Returns:
        (Y [m+1, k], norms [m+1]) with m = m_max, or the stopping index.
    """
    _, basis, g = _validate(lam, U, g0)
    apply_h = as_operator(H, g.shape[0])
    ys, norms, v = [], [], g
    g_norm = float(np.linalg.norm(g))
    for m in range(m_max + 1):
        if m:
            v = apply_h(v)
        ys.append(basis.T @ v)
        norms.append(float(np.linalg.norm(v)))
        if stop_tol is not None and m >= 1:
            ref = norms[-1] if scale is None else scale**m * g_norm
            if np.linalg.norm(ys[-1]) > stop_tol * max(ref, np.finfo(float).tiny):
                break
    return np.stack(ys), np.asarray(norms)


def leading_order(Y: np.ndarray, norms: np.ndarray, tol: float = _ZERO_TOL) -> int | None:
    """First m >= 1 with ‖P_S Hᵐ g0‖ > tol · ‖Hᵐ g0‖ (the coupling order); None if none up to len(Y) − 1."""
    for m in range(1, Y.shape[0]):
        if np.linalg.norm(Y[m]) > tol * max(norms[m], np.finfo(float).tiny):
            return m
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Numeric predictions
# ----------------------------------------------------------------------------------------------------------------------


def leading_coefficient(lam: Any, U: Any, H: Any, g0: Any) -> float:
    """Coefficient c4 of t⁴ in the gradient-flow alignment loss: Σ_i λ_i/8 (u_iᵀ H g0)².

    Args:
        lam: sharpness, scalar or one per direction [k].
        U: orthonormal basis of the alignment subspace S, [d, k] (a [d] vector for k = 1).
        H: fine-tune Hessian [d, d], or a callable v -> H v (e.g. a Hessian-vector product).
        g0: initial fine-tune gradient, [d].

    Returns:
        c4 (the t⁴ coefficient; it is the leading one when P_S g0 = 0).
    """
    lam_arr, _, _ = _validate(lam, U, g0)
    Y, _ = projected_krylov(lam, U, H, g0, 1)
    return float(np.sum(lam_arr * Y[1] ** 2) / 8.0)


def _falling_over_factorial(n: np.ndarray, j: int) -> np.ndarray:
    """C(n, j) = n(n−1)…(n−j+1)/j! for real n (vectorised)."""
    out = np.ones_like(n)
    for i in range(j):
        out = out * (n - i)
    return out / math.factorial(j)


def gd_series_coefficients(n: np.ndarray, eta: float, m_max: int) -> np.ndarray:
    """c_m(n) = −(−1)ᵐ η^{m+1} C(n, m+1), m = 0..m_max: P_S δ_n = Σ_m c_m(n) P_S Hᵐ g0. Shape [len(n), m_max+1]."""
    return np.stack([-((-1.0) ** m) * eta ** (m + 1) * _falling_over_factorial(n, m + 1) for m in range(m_max + 1)], 1)


def flow_series_coefficients(t: np.ndarray, m_max: int) -> np.ndarray:
    """c_m(t) = −(−1)ᵐ t^{m+1}/(m+1)!, m = 0..m_max. Shape [len(t), m_max+1]."""
    return np.stack([-((-1.0) ** m) * t ** (m + 1) / math.factorial(m + 1) for m in range(m_max + 1)], 1)


def _series_loss(coeffs: np.ndarray, Y: np.ndarray, lam_arr: np.ndarray) -> np.ndarray:
    z = coeffs @ Y[: coeffs.shape[1]]  # [T, k]: coordinates of P_S δ in U
    return 0.5 * np.sum(lam_arr * z**2, axis=1)


def _series_terms(lam: Any, U: Any, H: Any, g0: Any, order: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Krylov coordinates and the last series index m_max to use for a prediction of the given order."""
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise ConfigError(f"series order must be an integer >= 1, got {order!r}")
    lam_arr, _, g = _validate(lam, U, g0)
    Y, norms = projected_krylov(lam_arr, U, H, g0, min(_MAX_SERIES_ORDER, g.shape[0]), stop_tol=_ZERO_TOL)
    m_lead = leading_order(Y, norms, tol=_ZERO_TOL)
    # Terms m = 0..order are always kept (m = 0 is the η n P_S g0 term of the t² regime); when the coupling only
    # starts at m_lead > 1 the window is moved up so that `order` counts terms from the first non-zero one.
    m_max = max(int(order), (m_lead or 1) + int(order) - 1)
    if Y.shape[0] <= m_max:
        Y, _ = projected_krylov(lam_arr, U, H, g0, m_max)
    return Y[: m_max + 1], lam_arr, m_max


def predict_alignment_loss_gd(
    lam: Any, U: Any, H: Any, g0: Any, eta: float, steps: Sequence[float] | np.ndarray, order: int = 2
) -> np.ndarray:
    """Predicted alignment loss of discrete GD after each step count, from the series of P_S δ_n.

    The series keeps the terms m = 0..order of P_S δ_n = Σ_m −(−1)ᵐ η^{m+1} C(n, m+1) P_S Hᵐ g0 (m = 0 is the
    η n P_S g0 term that dominates when orthogonality fails). With P_S g0 = 0, order=1 gives the leading law
    (λ/8)‖P_S H g0‖² η⁴ n²(n−1)² and order=2 adds the P_S H² g0 correction. If the coupling starts later
    (P_S H g0 = 0), the window moves to start at the first non-zero P_S Hᵐ g0.

    Args:
        lam: sharpness, scalar or [k].
        U: orthonormal basis of S, [d, k].
        H: fine-tune Hessian [d, d], or a callable v -> H v.
        g0: initial fine-tune gradient, [d].
        eta: step size.
        steps: step counts n (>= 0) at which to predict.
        order: number of series terms from the leading coupling term (>= 1).

    Returns:
        Predicted alignment loss, shape [len(steps)].
    """
    n = as_array(steps, "steps").reshape(-1)
    if np.any(n < 0):
        raise ConfigError("steps must be non-negative")
    Y, lam_arr, m_max = _series_terms(lam, U, H, g0, order)
    return _series_loss(gd_series_coefficients(n, float(eta), m_max), Y, lam_arr)


def predict_alignment_loss_flow(
    lam: Any, U: Any, H: Any, g0: Any, t: Sequence[float] | np.ndarray, order: int = 2
) -> np.ndarray:
    """Predicted alignment loss of gradient flow at times t (series of P_S δ(t), same term choice as the GD one).

    Args:
        lam: sharpness, scalar or [k].
        U: orthonormal basis of S, [d, k].
        H: fine-tune Hessian [d, d], or a callable v -> H v.
        g0: initial fine-tune gradient, [d].
        t: times (>= 0).
        order: number of series terms from the leading coupling term (>= 1).

    Returns:
        Predicted alignment loss, shape [len(t)].
    """
    times = as_array(t, "t").reshape(-1)
    if np.any(times < 0):
        raise ConfigError("times t must be non-negative")
    Y, lam_arr, m_max = _series_terms(lam, U, H, g0, order)
    return _series_loss(flow_series_coefficients(times, m_max), Y, lam_arr)


def _eigen_setup(lam: Any, U: Any, H: Any, g0: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues h [d] of symmetric H, W = Uᵀ V diag(Vᵀg0) [k, d], and lam [k]."""
    lam_arr, basis, g = _validate(lam, U, g0)
    if callable(H) and not hasattr(H, "shape"):
        raise ConfigError("the exact solution needs H as a d×d matrix, not a callable")
    mat = as_array(H, "H")
    d = g.shape[0]
    if mat.shape != (d, d):
        raise ConfigError(f"H must be a {d}x{d} matrix, got shape {mat.shape}")
    if not np.allclose(mat, mat.T, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(mat).max())):
        raise ConfigError("H must be symmetric (a Hessian) for the exact solution")
    h, V = np.linalg.eigh(0.5 * (mat + mat.T))
    W = (basis.T @ V) * (V.T @ g)[None, :]
    return h, W, lam_arr


def exact_alignment_loss_gd(lam: Any, U: Any, H: Any, g0: Any, eta: float, steps: Any) -> np.ndarray:
    """Exact alignment loss of GD on the quadratic: δ_n = −η Σ_{j<n} (I − ηH)ʲ g0, evaluated in H's eigenbasis.

    Per eigenvalue h, η Σ_{j<n} rʲ with r = 1 − ηh equals −η expm1(n log r)/(1 − r) for 0 < r ≠ 1 (no cancellation
    for small ηh), η n for r = 1, and the plain geometric sum otherwise.

    Args:
        lam: sharpness, scalar or [k].
        U: orthonormal basis of S, [d, k].
        H: symmetric fine-tune Hessian, [d, d] (matrix only).
        g0: initial fine-tune gradient, [d].
        eta: step size.
        steps: step counts n (non-negative integers).

    Returns:
        Alignment loss after each step count, shape [len(steps)].
    """
    h, W, lam_arr = _eigen_setup(lam, U, H, g0)
    n = as_array(steps, "steps").reshape(-1)
    if np.any(n < 0) or np.any(n != np.round(n)):
        raise ConfigError("GD step counts must be non-negative integers")
    eta = float(eta)
    r = 1.0 - eta * h  # [d]
    nn = n[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        pos = -np.expm1(nn * np.log(np.where(r > 0, r, 1.0))) / np.where(r == 1.0, 1.0, 1.0 - r)
        other = (1.0 - np.power(r, nn)) / np.where(r == 1.0, 1.0, 1.0 - r)
    s = eta * np.where(r == 1.0, nn, np.where(r > 0, pos, other))  # [T, d]
    z = -(s @ W.T)  # [T, k]
    return 0.5 * np.sum(lam_arr * z**2, axis=1)


def exact_alignment_loss_flow(lam: Any, U: Any, H: Any, g0: Any, t: Any) -> np.ndarray:
    """Exact alignment loss of gradient flow on the quadratic: δ(t) = −Σ_h (1 − e^{−ht})/h (eigen-components of g0).

    Args:
        lam: sharpness, scalar or [k].
        U: orthonormal basis of S, [d, k].
        H: symmetric fine-tune Hessian, [d, d].
        g0: initial fine-tune gradient, [d].
        t: times (>= 0).

    Returns:
        Alignment loss at each time, shape [len(t)].
    """
    h, W, lam_arr = _eigen_setup(lam, U, H, g0)
    times = as_array(t, "t").reshape(-1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(h == 0.0, times, -np.expm1(-h * times) / np.where(h == 0.0, 1.0, h))
    z = -(s @ W.T)
    return 0.5 * np.sum(lam_arr * z**2, axis=1)


def fit_loglog_slope(x: Any, y: Any) -> tuple[float, float]:
    """Least-squares line through (log x, log y), ignoring points with x <= 0, y <= 0 or non-finite values.

    Args:
        x: abscissae (e.g. steps or times), array or tensor.
        y: ordinates (e.g. alignment loss), same length.

    Returns:
        (slope, intercept) with y ≈ exp(intercept) · x^slope; (nan, nan) if fewer than two usable distinct x.
    """
    xs, ys = as_array_lenient(x), as_array_lenient(y)
    if xs.shape != ys.shape:
        raise ConfigError(f"x and y must have the same length, got {xs.shape} and {ys.shape}")
    keep = np.isfinite(xs) & np.isfinite(ys) & (xs > 0) & (ys > 0)
    lx, ly = np.log(xs[keep]), np.log(ys[keep])
    if lx.size < 2 or np.ptp(lx) == 0.0:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(intercept)


def as_array_lenient(x: Any) -> np.ndarray:
    """Like :func:`as_array` but keeps NaN/inf (measured series may contain them) and flattens."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


# ----------------------------------------------------------------------------------------------------------------------
# Symbolic derivation
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuarticDerivation:
    """Result of :func:`derive`: the projected-displacement series and the alignment-loss laws, as sympy expressions.

    Notation: G_ab = ⟨P_S Hᵃ g0, P_S Hᵇ g0⟩ (symmetric Gram symbols), λ a scalar sharpness (for per-direction λ_i
    replace λ G_ab by the λ-weighted Gram Σ_i λ_i (u_iᵀHᵃg0)(u_iᵀHᵇg0)), t the flow time, η the step size, n the step.

    Attributes:
        order: the displacement series keeps P_S Hᵐ g0 for m = 0..order.
        symbols: the commutative symbols used (t, eta, n, lam, h).
        gram: the (order+1)×(order+1) symmetric matrix of Gram symbols G_ab.
        flow_coefficients: c_m(t) with P_S δ(t) = Σ_m c_m(t) P_S Hᵐ g0.
        gd_coefficients: c_m(n, η) with P_S δ_n = Σ_m c_m(n, η) P_S Hᵐ g0 (exact: a finite binomial sum).
        flow_loss: A(t) through t^{order+2} (every term kept is exact), general g0.
        gd_loss: A_n through η^{order+2}, general g0.
        flow_leading: the leading law under the AIC, (λ/8) G_11 t⁴.
        gd_leading: its discrete analogue, (λ/8) G_11 η⁴ n²(n−1)².
        flow_correction: the next term under the AIC, −(λ/12) G_12 t⁵ (it involves P_S H² g0).
        gd_correction: its discrete analogue.
        flow_nonorthogonal_leading: the leading law when P_S g0 ≠ 0, ½ λ G_00 t² (exponent drops to 2).
        gd_nonorthogonal_leading: ½ λ G_00 η² n².
        flow_uncoupled_leading: the leading law when P_S g0 = P_S H g0 = 0, (λ/72) G_22 t⁶.
        gd_uncoupled_leading: its discrete analogue.
        checks: verifications performed with sympy (all must be True).
    """

    order: int
    symbols: dict[str, sp.Symbol]
    gram: sp.Matrix
    flow_coefficients: list[sp.Expr]
    gd_coefficients: list[sp.Expr]
    flow_loss: sp.Expr
    gd_loss: sp.Expr
    flow_leading: sp.Expr
    gd_leading: sp.Expr
    flow_correction: sp.Expr
    gd_correction: sp.Expr
    flow_nonorthogonal_leading: sp.Expr
    gd_nonorthogonal_leading: sp.Expr
    flow_uncoupled_leading: sp.Expr
    gd_uncoupled_leading: sp.Expr
    checks: dict[str, bool] = field(default_factory=dict)

    def leading_law(self, m_lead: int, *, discrete: bool = False) -> sp.Expr:
        """Leading alignment-loss term when P_S Hᵐ g0 = 0 for m < m_lead (needs m_lead <= order).

        It is ½ λ G_mm c_m² with m = m_lead: exponent 2(m+1) in t (flow) or in η (GD).
        """
        if not 0 <= m_lead <= self.order:
            raise ConfigError(f"leading law needs 0 <= m_lead <= order = {self.order}, got {m_lead}")
        c = (self.gd_coefficients if discrete else self.flow_coefficients)[m_lead]
        return sp.factor(self.symbols["lam"] * self.gram[m_lead, m_lead] * c**2 / 2)

    def summary(self) -> str:
        """Readable account of the derivation (pretty-printed formulas plus LaTeX), as printed by the module main."""
        lines = [
            "Quartic law of alignment collapse — sympy derivation",
            "F(θ0+δ) = g0·δ + ½δᵀHδ;  A(δ) = ½λ‖P_S δ‖²;  flow dδ/dt = −(g0+Hδ);  GD δ_{n+1} = δ_n − η(g0+Hδ_n)",
            "Notation: G_ab = ⟨P_S H^a g0, P_S H^b g0⟩ (so G_11 = ‖P_S H g0‖²).",
            "",
            "Projected displacement P_S δ = Σ_m c_m · P_S H^m g0:",
        ]
        for m, (cf, cg) in enumerate(zip(self.flow_coefficients, self.gd_coefficients, strict=True)):
            lines.append(f"  m={m}:  flow c_m(t) = {sp.sstr(cf)}    GD c_m(n) = {sp.sstr(sp.factor(cg))}")
        sections = [
            ("AIC holds (P_S g0 = 0, P_S H g0 ≠ 0): leading term, gradient flow", self.flow_leading),
            ("  … discrete GD", self.gd_leading),
            ("Next-order correction (involves P_S H² g0), gradient flow", self.flow_correction),
            ("  … discrete GD", self.gd_correction),
            ("Orthogonality broken (P_S g0 ≠ 0): exponent drops to 2, gradient flow", self.flow_nonorthogonal_leading),
            ("  … discrete GD", self.gd_nonorthogonal_leading),
            (
                "No coupling (P_S H g0 = 0, P_S H² g0 ≠ 0): first non-zero order, gradient flow",
                self.flow_uncoupled_leading,
            ),
            ("  … discrete GD", self.gd_uncoupled_leading),
        ]
        for title, expr in sections:
            lines += ["", title + ":", sp.pretty(expr, use_unicode=True), f"LaTeX: {sp.latex(expr)}"]
        lines += ["", f"Alignment loss through t^{self.order + 2} (gradient flow, general g0):"]
        lines.append(sp.pretty(self.flow_loss, use_unicode=True))
        lines += ["", "Checks:"] + [f"  {name}: {'ok' if ok else 'FAILED'}" for name, ok in self.checks.items()]
        return "\n".join(lines)


def _truncate(expr: sp.Expr, var: sp.Symbol, max_degree: int) -> sp.Expr:
    """Drop the terms of a polynomial in var above max_degree."""
    poly = sp.Poly(sp.expand(expr), var)
    return sp.Add(*[coef * var**deg for (deg,), coef in poly.terms() if deg <= max_degree])


def _lowest_term(expr: sp.Expr, var: sp.Symbol) -> sp.Expr:
    poly = sp.Poly(sp.expand(expr), var)
    deg = min(d for (d,), c in poly.terms() if c != 0)
    return sp.factor(poly.coeff_monomial(var**deg)) * var**deg


def _term(expr: sp.Expr, var: sp.Symbol, degree: int) -> sp.Expr:
    return sp.factor(sp.Poly(sp.expand(expr), var).coeff_monomial(var**degree)) * var**degree


def _check_recursion(gd_coefficients: list[sp.Expr], n: sp.Symbol, eta: sp.Symbol, steps: int) -> bool:
    """Iterate δ_{k+1} = δ_k − η(g + Hδ_k) with non-commutative H, P, g and compare P δ_k with the closed form."""
    H, P, g = sp.symbols("H P g", commutative=False)
    delta = sp.Integer(0)
    for k in range(1, steps + 1):
        delta = sp.expand(delta - eta * (g + H * delta))
        closed = sum((c.subs(n, k) * P * H**m * g for m, c in enumerate(gd_coefficients)), sp.Integer(0))
        if sp.expand(P * delta - closed) != 0:
            return False
    return True


def _check_flow_ode(flow_coefficients: list[sp.Expr], t: sp.Symbol) -> bool:
    """The truncated flow series satisfies dδ/dt + g + Hδ = O(t^{M}) with non-commutative H, g (M terms kept)."""
    H, g = sp.symbols("H g", commutative=False)
    delta = sum((c * H**m * g for m, c in enumerate(flow_coefficients)), sp.Integer(0))
    residual = sp.expand(sp.diff(delta, t) + g + H * delta)
    last = len(flow_coefficients)
    return sp.expand(residual - (-1) ** (last - 1) * t**last / sp.factorial(last) * H**last * g * (-1)) == 0


def _scalar_trajectories(order: int) -> tuple[dict[str, sp.Symbol], list[sp.Expr], list[sp.Expr]]:
    """Series coefficients of δ per eigenvalue h of H: flow from dsolve, GD from a binomial sum over steps.

    δ is a polynomial (or power series) in H applied to g0, so the coefficient of hᵐ in the scalar solution is the
    coefficient of Hᵐ g0 in the vector one.
    """
    t, eta, n, j, h, lam = sp.symbols("t eta n j h lambda", nonnegative=True)
    x = sp.Function("x")
    # Gradient flow on one eigen-direction of H (g0 component set to 1): x' = −(1 + h x), x(0) = 0.
    flow_solution = sp.dsolve(sp.Eq(x(t).diff(t), -(1 + h * x(t))), x(t), ics={x(0): 0}).rhs
    flow_series = sp.expand(sp.series(flow_solution, h, 0, order + 1).removeO())
    # GD: x_n = −η Σ_{j<n} (1 − ηh)^j; expand (1 − ηh)^j in h (binomial in j), then sum over j in closed form.
    power_series = sp.expand(sp.series((1 - eta * h) ** j, h, 0, order + 1).removeO())
    gd_series = sp.expand(-eta * sp.summation(power_series, (j, 0, n - 1)))
    flow_c = [sp.factor(flow_series.coeff(h, m)) for m in range(order + 1)]
    gd_c = [sp.factor(gd_series.coeff(h, m)) for m in range(order + 1)]
    return {"t": t, "eta": eta, "n": n, "lam": lam, "h": h}, flow_c, gd_c


@lru_cache(maxsize=8)
def derive(order: int = 3) -> QuarticDerivation:
    """Derive the alignment-loss series for gradient flow and discrete GD with sympy.

    Args:
        order: keep P_S Hᵐ g0 for m = 0..order in the projected displacement (>= 2, needed for the correction).

    Returns:
        A :class:`QuarticDerivation`; every expression in it is computed here, and ``checks`` records the sympy
        verifications (closed form vs. the GD recursion, flow series vs. the ODE, GD → flow as η → 0 with t = ηn,
        and the GD leading law against (λ/8)‖P_S H g0‖² η⁴ n²(n−1)²).
    """
    if isinstance(order, bool) or not isinstance(order, int) or not 2 <= order <= 8:
        raise ConfigError(f"derivation order must be an integer in [2, 8], got {order!r}")
    syms, flow_c, gd_c = _scalar_trajectories(order)
    t, eta, n, lam = syms["t"], syms["eta"], syms["n"], syms["lam"]
    gram = sp.Matrix(order + 1, order + 1, lambda a, b: sp.Symbol(f"G_{min(a, b)}{max(a, b)}", real=True))

    def loss(coeffs: list[sp.Expr]) -> sp.Expr:
        """A = ½ λ ‖Σ_m c_m P_S Hᵐ g0‖² = ½ λ Σ_{a,b} c_a c_b G_ab."""
        return sp.expand(
            lam / 2 * sum(coeffs[a] * coeffs[b] * gram[a, b] for a in range(order + 1) for b in range(order + 1))
        )

    # c_{order+1} (degree order+2) is dropped; its first effect is its product with the first non-zero c_m, at degree
    # order+3 in general, order+4 when P_S g0 = 0 and order+5 when also P_S H g0 = 0. Keep only the exact terms.
    full_flow, full_gd = loss(flow_c), loss(gd_c)
    orthogonal = {gram[0, b]: 0 for b in range(order + 1)}
    uncoupled = {**orthogonal, **{gram[1, b]: 0 for b in range(order + 1)}}
    flow_loss, gd_loss = _truncate(full_flow, t, order + 2), _truncate(full_gd, eta, order + 2)
    flow_orth, gd_orth = (
        _truncate(full_flow.subs(orthogonal), t, order + 3),
        _truncate(full_gd.subs(orthogonal), eta, order + 3),
    )
    flow_unc, gd_unc = (
        _truncate(full_flow.subs(uncoupled), t, order + 4),
        _truncate(full_gd.subs(uncoupled), eta, order + 4),
    )
    gd_leading = _lowest_term(gd_orth, eta)
    target = lam / 8 * gram[1, 1] * eta**4 * n**2 * (n - 1) ** 2
    checks = {
        "gd_leading_equals_lam/8*G_11*eta^4*n^2*(n-1)^2": sp.simplify(gd_leading - target) == 0,
        # c_m(n) = 0 for m >= n, so the kept terms are the whole solution for n <= order + 1.
        f"gd_closed_form_matches_recursion(n<={order + 1})": _check_recursion(gd_c, n, eta, order + 1),
        "flow_series_solves_ode": _check_flow_ode(flow_c, t),
        "gd_tends_to_flow_as_eta_to_0": all(
            sp.simplify(sp.limit(cg.subs(n, t / eta), eta, 0) - cf) == 0 for cf, cg in zip(flow_c, gd_c, strict=True)
        ),
    }
    return QuarticDerivation(
        order=order,
        symbols=syms,
        gram=gram,
        flow_coefficients=flow_c,
        gd_coefficients=gd_c,
        flow_loss=flow_loss,
        gd_loss=gd_loss,
        flow_leading=_lowest_term(flow_orth, t),
        gd_leading=gd_leading,
        flow_correction=_term(flow_orth, t, 5),
        gd_correction=_term(gd_orth, eta, 5),
        flow_nonorthogonal_leading=_lowest_term(flow_loss, t),
        gd_nonorthogonal_leading=_lowest_term(gd_loss, eta),
        flow_uncoupled_leading=_lowest_term(flow_unc, t),
        gd_uncoupled_leading=_lowest_term(gd_unc, eta),
        checks=checks,
    )


def main() -> None:
    """Print the derivation (``python -m theory.quartic``)."""
    print(derive(3).summary())


if __name__ == "__main__":
    main()
