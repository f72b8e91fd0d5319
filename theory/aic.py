"""Alignment Instability Condition (AIC) checker.

The AIC has three parts (see theory.quartic for the setting):

1. sharp low-rank alignment curvature: the alignment subspace S has rank k ≪ d and its sharpness λ_i is large
   compared with the fine-tune curvature scale ‖H‖ (spectral norm);
2. initial orthogonality: the first fine-tune gradient has no component in S, ‖P_S g0‖/‖g0‖ ≈ 0;
3. non-zero curvature coupling: ‖P_S H g0‖ > 0, so the trajectory is bent into S at second order.

The predicted early law of the alignment loss follows from the series of P_S δ in the vectors P_S Hᵐ g0: the first
m with P_S Hᵐ g0 ≠ 0 gives A ≈ ½ Σ_i λ_i (u_iᵀHᵐg0)² t^{2(m+1)}/((m+1)!)² (gradient flow) and
A_n ≈ ½ Σ_i λ_i (u_iᵀHᵐg0)² η^{2(m+1)} C(n, m+1)² (GD). So: exponent 2 if orthogonality fails, 4 under the AIC,
6 (or higher) if orthogonal but uncoupled, and no growth at all when P_S Hᵐ g0 = 0 for every m (e.g. S invariant
under H, i.e. H block-diagonal with respect to S and its complement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from testbed.errors import ConfigError
from theory.quartic import Operator, as_array, as_operator, leading_order, projected_krylov

__all__ = ["AICReport", "check_aic", "spectral_norm"]

_MAX_KRYLOV = 64  # highest power Hᵐ g0 examined when looking for the first non-zero coupling


@dataclass
class AICReport:
    """Outcome of :func:`check_aic`.

    Attributes:
        conditions: {"sharp_low_rank": …, "orthogonal": …, "coupled": …}.
        exponent: predicted leading exponent of A in t (or n): 2, 4, 6, …; None when A stays identically zero.
        coefficient: coefficient of t^exponent for gradient flow (0.0 when identically zero).
        coefficient_gd: GD analogue, A_n ≈ coefficient_gd · [n(n−1)…(n−m)]² with m = exponent/2 − 1; None without eta.
        law: the predicted law in words/formula.
        numbers: every number used for the decisions (d, k, λ range, ‖H‖, ratios, tolerances).
    """

    conditions: dict[str, bool]
    exponent: int | None
    coefficient: float
    coefficient_gd: float | None = None
    law: str = ""
    numbers: dict[str, float] = field(default_factory=dict)

    @property
    def holds(self) -> bool:
        """True when all three conditions hold."""
        return all(self.conditions.values())

    def table(self) -> str:
        """Markdown table of the three conditions and the predicted law."""
        v = self.numbers
        rows = [
            (
                "sharp low-rank alignment curvature",
                self.conditions["sharp_low_rank"],
                f"k/d = {int(v['k'])}/{int(v['d'])}; min λ/‖H‖ = {v['sharpness_measured']:.4g} "
                f"(min λ = {v['lam_min']:.4g}, ‖H‖ = {v['h_norm']:.4g})",
                f"k/d ≤ {v['max_rank_fraction']:g}; min λ/‖H‖ ≥ {v['sharpness_ratio']:g}",
            ),
            (
                "initial orthogonality",
                self.conditions["orthogonal"],
                f"‖P_S g0‖/‖g0‖ = {v['orthogonality']:.3e}",
                f"≤ {v['ortho_tol']:.1e}",
            ),
            (
                "curvature coupling",
                self.conditions["coupled"],
                f"‖P_S H g0‖ = {v['coupling']:.4g}; /(‖H‖‖g0‖) = {v['coupling_rel']:.3e}",
                f"> {v['coupling_tol']:.1e} (relative)",
            ),
        ]
        lines = ["| condition | holds | measured | required |", "|---|---|---|---|"]
        lines += [f"| {name} | {'yes' if ok else 'no'} | {value} | {req} |" for name, ok, value, req in rows]
        exp = str(self.exponent)
        if self.exponent is None:
            full = v["krylov_checked"] >= v["d"] - 1
            exp = "identically zero" if full else f"none up to t^{2 * int(v['krylov_checked']) + 2}"
        lines += [
            "",
            f"AIC {'holds' if self.holds else 'does not hold'}. Predicted leading exponent: **{exp}**; "
            f"coefficient (gradient flow): {self.coefficient:.6g}"
            + ("" if self.coefficient_gd is None else f"; GD (η = {v['eta']:g}): {self.coefficient_gd:.6g}"),
            f"Law: {self.law}",
        ]
        return "\n".join(lines)


def spectral_norm(H: Any, d: int, *, iters: int = 200, seed: int = 0) -> float:
    """‖H‖₂ of a symmetric H: exact for a matrix, power iteration (fixed seed) for a callable v -> H v."""
    if not (callable(H) and not hasattr(H, "shape")):
        mat = as_array(H, "H")
        return float(np.linalg.norm(mat, 2)) if mat.size else 0.0
    apply_h: Operator = as_operator(H, d)
    v = np.random.default_rng(seed).standard_normal(d)
    v /= np.linalg.norm(v)
    est = 0.0
    for _ in range(iters):
        w = apply_h(v)
        new = float(np.linalg.norm(w))
        if new == 0.0:
            return 0.0
        v = w / new
        if abs(new - est) <= 1e-10 * new:
            break
        est = new
    return new


def _law_text(m: int | None, has_eta: bool, krylov_checked: int, d: int) -> str:
    if m is None:
        if krylov_checked >= d - 1:  # Cayley–Hamilton: Hᵐ g0 for m < d span the whole Krylov space
            return "A(t) ≡ 0: P_S Hᵐ g0 = 0 for every m, the trajectory never enters S"
        return f"A(t) = O(t^{2 * krylov_checked + 4}): P_S Hᵐ g0 = 0 for m ≤ {krylov_checked} (checked up to there)"
    p = m + 1
    if m == 0:
        flow, gd = "A(t) ≈ ½ Σ λ_i (u_iᵀ g0)² t²", "A_n ≈ ½ Σ λ_i (u_iᵀ g0)² η² n²"
    elif m == 1:
        flow, gd = "A(t) ≈ Σ λ_i/8 (u_iᵀ H g0)² t⁴", "A_n ≈ Σ λ_i/8 (u_iᵀ H g0)² η⁴ n²(n−1)²"
    else:
        falling = "".join(["n"] + [f"(n−{i})" for i in range(1, p)])
        flow = f"A(t) ≈ ½ Σ λ_i (u_iᵀ H^{m} g0)² t^{2 * p} / ({p}!)²"
        gd = f"A_n ≈ ½ Σ λ_i (u_iᵀ H^{m} g0)² η^{2 * p} [{falling}]² / ({p}!)²"
    return f"{flow};  {gd}" if has_eta else flow


def check_aic(
    lam: Any,
    U: Any,
    H: Any,
    g0: Any,
    *,
    sharpness_ratio: float | None = None,
    ortho_tol: float = 1e-8,
    coupling_tol: float = 1e-12,
    eta: float | None = None,
    max_rank_fraction: float = 0.25,
) -> AICReport:
    """Check the three conditions of the AIC and predict the leading law of the alignment loss.

    Args:
        lam: sharpness, a scalar or one value per direction [k].
        U: orthonormal basis of the alignment subspace S, [d, k] (a [d] vector for k = 1).
        H: fine-tune Hessian [d, d], or a callable v -> H v (Hessian-vector product; H assumed symmetric).
        g0: initial fine-tune gradient, [d].
        sharpness_ratio: condition 1 needs min λ_i ≥ sharpness_ratio · ‖H‖; default 1.0 (alignment curvature at
            least the largest fine-tune curvature).
        ortho_tol: condition 2 holds when ‖P_S g0‖/‖g0‖ ≤ ortho_tol.
        coupling_tol: condition 3 holds when ‖P_S H g0‖ > coupling_tol · ‖H‖‖g0‖; the same relative tolerance
            decides which P_S Hᵐ g0 count as zero when looking for the first non-zero order.
        eta: step size; when given, the GD coefficient is reported too.
        max_rank_fraction: "k ≪ d" is taken as k/d ≤ max_rank_fraction.

    Returns:
        An :class:`AICReport`.
    """
    g = as_array(g0, "g0").reshape(-1)
    d = g.shape[0]
    g_norm = float(np.linalg.norm(g))
    if g_norm == 0.0:
        raise ConfigError("g0 is the zero vector: fine-tuning does not move, the AIC is undefined")
    for name, val in (("ortho_tol", ortho_tol), ("coupling_tol", coupling_tol)):
        if not val >= 0:
            raise ConfigError(f"{name} must be >= 0, got {val!r}")
    if eta is not None and not float(eta) > 0:
        raise ConfigError(f"eta must be positive, got {eta!r}")
    ratio = 1.0 if sharpness_ratio is None else float(sharpness_ratio)
    h_norm = spectral_norm(H, d)

    # Krylov coordinates Uᵀ Hᵐ g0 up to the Krylov limit (the space spanned by Hᵐ g0 stops growing at m = d − 1).
    m_cap = min(d, _MAX_KRYLOV)
    Y, _ = projected_krylov(lam, U, H, g0, m_cap, stop_tol=coupling_tol, scale=h_norm)
    lam_arr = as_array(lam, "lam").reshape(-1)
    k = Y.shape[1]
    lam_arr = np.full(k, float(lam_arr[0])) if lam_arr.size == 1 else lam_arr
    ortho = float(np.linalg.norm(Y[0])) / g_norm
    coupling = float(np.linalg.norm(Y[1]))
    scale = max(h_norm * g_norm, np.finfo(float).tiny)
    conditions = {
        "sharp_low_rank": bool(k / d <= max_rank_fraction and lam_arr.min() >= ratio * h_norm),
        "orthogonal": bool(ortho <= ortho_tol),
        "coupled": bool(coupling > coupling_tol * scale),
    }
    if not conditions["orthogonal"]:
        m: int | None = 0
    else:
        # P_S Hᵐ g0 counts as zero below coupling_tol relative to ‖H‖ᵐ‖g0‖ (its natural size).
        rel = np.array([coupling_tol * max(h_norm**i, np.finfo(float).tiny) * g_norm for i in range(m_cap + 1)])
        m = leading_order(Y, rel, tol=1.0)
    if m is None:
        exponent, coef, coef_gd = None, 0.0, (0.0 if eta is not None else None)
    else:
        weight = 0.5 * float(np.sum(lam_arr * Y[m] ** 2)) / math.factorial(m + 1) ** 2
        exponent, coef = 2 * (m + 1), weight
        coef_gd = None if eta is None else weight * float(eta) ** (2 * (m + 1))
    numbers = {
        "d": float(d),
        "k": float(k),
        "lam_min": float(lam_arr.min()),
        "lam_max": float(lam_arr.max()),
        "h_norm": h_norm,
        "sharpness_ratio": ratio,
        "sharpness_measured": float(lam_arr.min() / h_norm) if h_norm > 0 else math.inf,
        "max_rank_fraction": float(max_rank_fraction),
        "orthogonality": ortho,
        "ortho_tol": float(ortho_tol),
        "coupling": coupling,
        "coupling_rel": coupling / scale,
        "coupling_tol": float(coupling_tol),
        "krylov_checked": float(Y.shape[0] - 1),
        "eta": float(eta) if eta is not None else math.nan,
    }
    return AICReport(conditions, exponent, coef, coef_gd, _law_text(m, eta is not None, Y.shape[0] - 1, d), numbers)


def demo_regimes(d: int = 24, k: int = 2, lam: float = 60.0, eps: float = 0.2, seed: int = 0) -> str:
    """Markdown: the AIC report of one random quadratic instance in the three regimes (holds, ε > 0, block H)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    U, Uc = Q[:, :k], Q[:, k:]
    A = rng.standard_normal((d, d))
    H = A @ A.T / d
    g0 = Uc @ rng.standard_normal(d - k)
    P, Qc = U @ U.T, Uc @ Uc.T
    cases = {
        "AIC holds": (H, g0),
        f"orthogonality broken (ε = {eps:g})": (H, g0 + eps * U[:, 0]),
        "no coupling (H block-diagonal w.r.t. S)": (P @ H @ P + Qc @ H @ Qc, g0),
    }
    parts = []
    for name, (h, g) in cases.items():
        parts += [f"### {name}", "", check_aic(lam, U, h, g, eta=0.01).table(), ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(demo_regimes())
