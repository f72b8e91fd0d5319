"""The quartic law of alignment collapse: numeric predictions (numpy only; the sympy derivation is theory.derivation).

Setting. Around θ0 the fine-tune loss is quadratic, L(θ0 + δ) = g0·δ + ½ δᵀHδ, and the safety (alignment) loss has the
quadratic model ½ δᵀFδ, F its Fisher (or Hessian) at θ0. S = span(u_1 … u_k) holds F's top-k eigenvectors, with
eigenvalues λ_i, and the part of the loss that lives in S is

    A(δ) = ½ ‖F^{1/2} P_S δ‖² = ½ Σ_i λ_i (u_iᵀδ)².

Fine-tuning runs gradient flow dδ/dt = −(g0 + Hδ) or gradient descent δ_{n+1} = δ_n − η(g0 + Hδ_n) from δ = 0.
Because δ is a polynomial in H applied to g0, P_S δ is a series in the vectors P_S Hᵐ g0:

    flow:  P_S δ(t) = Σ_m −(−1)ᵐ t^{m+1}/(m+1)!      P_S Hᵐ g0
    GD:    P_S δ_n  = Σ_m −(−1)ᵐ η^{m+1} C(n, m+1)   P_S Hᵐ g0      (exact; terms m ≥ n vanish)

and A = ½ Σ_{m,m'} c_m c_{m'} W_{mm'} with the F-weighted Gram matrix W_{mm'} = Σ_i λ_i (u_iᵀHᵐg0)(u_iᵀH^{m'}g0).
If P_S g0 = 0 (orthogonality) and P_S H g0 ≠ 0 (coupling), the leading term is

    A(t) ≈ γ² t⁴ / 8,   A_n ≈ γ² η⁴ n²(n−1)² / 8,   γ = ‖F^{1/2} P_S H g0‖ = (Σ_i λ_i (u_iᵀ H g0)²)^{1/2},

with no further factor λ: γ already carries F. Only when every λ_i equals one λ does γ² = λ‖P_S H g0‖², which gives
the familiar (λ/8)‖P_S H g0‖² t⁴. If P_S g0 ≠ 0 the leading term is ½‖F^{1/2} P_S g0‖² t² instead.
``theory.derivation`` obtains all of this with sympy; the functions here evaluate the same series with numpy, and the
tests hold the two together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from testbed.errors import ConfigError
from theory.numerics import as_array, as_operator, is_callable_operator

__all__ = [
    "gamma_f_weighted",
    "leading_law",
    "leading_law_gd",
    "leading_coefficient",
    "predict_alignment_loss_gd",
    "predict_alignment_loss_flow",
    "exact_alignment_loss_gd",
    "exact_alignment_loss_flow",
    "gd_series_coefficients",
    "flow_series_coefficients",
    "projected_krylov",
    "leading_order",
    "main",
]

_ORTHONORMAL_TOL = 1e-4  # U from a float32 Lanczos run is orthonormal to ~1e-6; looser means a wrong basis
_MAX_SERIES_ORDER = 12  # highest power Hᵐ g0 searched for the first non-zero coupling
_ZERO_TOL = 1e-10  # ‖P_S Hᵐ g0‖ below this fraction of ‖Hᵐ g0‖ is round-off, not coupling

# Names that moved out of this module; importing them from here still works (with a DeprecationWarning) so that code
# written against the old layout keeps running until it is updated.


# ----------------------------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------------------------


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


def _coupling_square(lam: Any, U: Any, H: Any, g0: Any) -> float:
    """γ² = ‖F^{1/2} P_S H g0‖² = Σ_i λ_i (u_iᵀ H g0)² (one Hessian-vector product)."""
    lam_arr, _, _ = _validate(lam, U, g0)
    Y, _ = projected_krylov(lam, U, H, g0, 1)
    return float(np.sum(lam_arr * Y[1] ** 2))


def gamma_f_weighted(lam: Any, U: Any, H: Any, g: Any) -> float:
    """The F-weighted curvature coupling γ = ‖F^{1/2} P_S H g‖ = (Σ_i λ_i (u_iᵀ H g)²)^{1/2}.

    F is the safety Fisher (or Hessian) and S = span(U) its top-k eigenvectors with eigenvalues ``lam``, so
    F^{1/2} P_S = Σ_i √λ_i u_i u_iᵀ. Under initial orthogonality the alignment loss starts as γ²t⁴/8
    (:func:`leading_law`).

    Args:
        lam: F's eigenvalues on S, [k] (a scalar means the same λ on every direction).
        U: orthonormal eigenvectors spanning S, [d, k] with d the number of parameters (a [d] vector for k = 1).
        H: fine-tune Hessian [d, d], or a callable v -> H v (a Hessian-vector product).
        g: fine-tune gradient at θ*, [d].

    Returns:
        γ >= 0.
    """
    return math.sqrt(_coupling_square(lam, U, H, g))


def _law_inputs(gamma: float, x: Any, name: str) -> tuple[float, np.ndarray]:
    gamma = float(gamma)
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ConfigError(f"gamma must be a finite number >= 0, got {gamma!r}")
    pts = as_array(x, name)
    if np.any(pts < 0):
        raise ConfigError(f"{name} must be non-negative")
    return gamma, pts


def _scalar_or_array(out: np.ndarray) -> np.ndarray | float:
    return float(out) if out.ndim == 0 else out


def leading_law(gamma: float, t: Any) -> np.ndarray | float:
    """The quartic law of gradient flow, A(t) = γ² t⁴ / 8 (no extra factor λ: γ is F-weighted).

    Args:
        gamma: γ = ‖F^{1/2} P_S H g‖ (:func:`gamma_f_weighted`).
        t: time(s) t = η·steps, >= 0 (scalar, array or tensor).

    Returns:
        γ²t⁴/8, same shape as ``t`` (a float for a scalar).
    """
    gamma, times = _law_inputs(gamma, t, "t")
    return _scalar_or_array(gamma**2 * times**4 / 8.0)


def leading_law_gd(gamma: float, eta: float, steps: Any) -> np.ndarray | float:
    """The quartic law of gradient descent, A_n = γ² η⁴ n²(n−1)² / 8 (→ γ²t⁴/8 with t = ηn as η → 0).

    It is the order=1 term of :func:`predict_alignment_loss_gd` when P_S g = 0, and exact at n <= 2.

    Args:
        gamma: γ = ‖F^{1/2} P_S H g‖.
        eta: step size η (> 0).
        steps: step count(s) n >= 0.

    Returns:
        γ²η⁴n²(n−1)²/8, same shape as ``steps`` (a float for a scalar).
    """
    gamma, n = _law_inputs(gamma, steps, "steps")
    if not float(eta) > 0:
        raise ConfigError(f"eta must be positive, got {eta!r}")
    return _scalar_or_array(gamma**2 * float(eta) ** 4 * n**2 * (n - 1.0) ** 2 / 8.0)


def leading_coefficient(lam: Any, U: Any, H: Any, g0: Any) -> float:
    """Coefficient c4 = γ²/8 = Σ_i λ_i/8 (u_iᵀ H g0)² of t⁴ in the gradient-flow alignment loss.

    Args:
        lam: sharpness, scalar or one per direction [k].
        U: orthonormal basis of the alignment subspace S, [d, k] (a [d] vector for k = 1).
        H: fine-tune Hessian [d, d], or a callable v -> H v (e.g. a Hessian-vector product).
        g0: initial fine-tune gradient, [d].

    Returns:
        c4 (the t⁴ coefficient; it is the leading one when P_S g0 = 0).
    """
    return _coupling_square(lam, U, H, g0) / 8.0


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


def _predict(
    lam: Any, U: Any, H: Any, g0: Any, order: int, x: Any, name: str, coefficients: Callable[..., np.ndarray]
) -> np.ndarray:
    """Series prediction at the points x (steps or times) with the given coefficient function c(x, m_max)."""
    pts = as_array(x, name).reshape(-1)
    if np.any(pts < 0):
        raise ConfigError(f"{name} must be non-negative")
    Y, lam_arr, m_max = _series_terms(lam, U, H, g0, order)
    return _series_loss(coefficients(pts, m_max), Y, lam_arr)


def predict_alignment_loss_gd(
    lam: Any, U: Any, H: Any, g0: Any, eta: float, steps: Sequence[float] | np.ndarray, order: int = 2
) -> np.ndarray:
    """Predicted alignment loss of discrete GD after each step count, from the series of P_S δ_n.

    The series keeps the terms m = 0..order of P_S δ_n = Σ_m −(−1)ᵐ η^{m+1} C(n, m+1) P_S Hᵐ g0 (m = 0 is the
    η n P_S g0 term that dominates when orthogonality fails). With P_S g0 = 0, order=1 gives the leading law
    γ²η⁴n²(n−1)²/8 and order=2 adds the P_S H² g0 correction. If the coupling starts later (P_S H g0 = 0), the
    window moves to start at the first non-zero P_S Hᵐ g0.

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
    eta = float(eta)
    return _predict(lam, U, H, g0, order, steps, "steps", lambda n, m: gd_series_coefficients(n, eta, m))


def predict_alignment_loss_flow(lam: Any, U: Any, H: Any, g0: Any, t: Any, order: int = 2) -> np.ndarray:
    """Predicted alignment loss of gradient flow at times t >= 0: the series of P_S δ(t), terms chosen as in GD.

    ``lam``, ``U``, ``H``, ``g0`` and ``order`` are those of :func:`predict_alignment_loss_gd`; ``t`` replaces
    ``eta`` and ``steps``. Returns the prediction, shape [len(t)].
    """
    return _predict(lam, U, H, g0, order, t, "times t", flow_series_coefficients)


def _eigen_setup(lam: Any, U: Any, H: Any, g0: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues h [d] of symmetric H, W = Uᵀ V diag(Vᵀg0) [k, d], and lam [k]."""
    lam_arr, basis, g = _validate(lam, U, g0)
    if is_callable_operator(H):
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


def main(argv: list[str] | None = None) -> int:
    """Print the sympy derivation (``python -m theory.quartic``, the same as ``python -m theory.derivation``)."""
    from theory import derivation  # sympy is imported only when the derivation is asked for

    return derivation.main(argv)


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
