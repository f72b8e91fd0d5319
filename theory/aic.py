"""The Alignment Instability Condition (AIC): which of its three conditions hold, and the early law they predict.

The AIC has three parts (the setting is that of ``theory.quartic``: F = Σ_i λ_i u_i u_iᵀ on S, plus a tail F_⊥):

1. sharp low-rank alignment curvature: S has rank k ≪ d (the Fisher's mass outside S, its tail, is small) and its
   curvature λ_i is large next to the fine-tune curvature;
2. initial orthogonality: the first fine-tune gradient has no component in S, ‖P_S g0‖/‖g0‖ ≈ 0;
3. non-zero curvature coupling: γ = ‖F^{1/2} P_S H g0‖ > 0, so the trajectory is bent into S at second order.

The early law of A = ½‖F^{1/2} P_S δ‖² follows from the series of P_S δ in the vectors P_S Hᵐ g0: the first m with
P_S Hᵐ g0 ≠ 0 gives A ≈ ½‖F^{1/2} P_S Hᵐ g0‖² t^{2(m+1)}/((m+1)!)² (gradient flow, t = η·steps) and
A_n ≈ ½‖F^{1/2} P_S Hᵐ g0‖² η^{2(m+1)} C(n, m+1)² (GD). So the exponent is 2 if orthogonality fails, 4 under the AIC
(A ≈ γ²t⁴/8), 6 or higher if orthogonal but uncoupled, and A stays zero when P_S Hᵐ g0 = 0 for every m (S invariant
under H). Condition 1 does not change the exponent of A; it decides whether A is what the whole safety loss does:
F_⊥ adds ½ gᵀF_⊥g t² ≤ ½ min(λ_k, tail) ‖g0‖² t² to it.

Two ways in, one outcome type each, sharing the condition names, the law text and the table:

- :func:`check_aic` (→ :class:`AICReport`) from exact inputs λ, U, H (matrix or Hessian-vector product), g0, as the
  toys have them; it finds the first non-zero order m by a Krylov search.
- :func:`aic_verdict` (→ :class:`AICVerdict`) from the scalars a curvature-diagnostics pass measures on a real model:
  F's top-k eigenvalues, trace F, ‖P_S g‖, ‖g‖, γ and ‖H g‖.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from testbed.errors import ConfigError
from theory.numerics import Operator, as_array, as_operator, is_callable_operator
from theory.quartic import leading_order, projected_krylov

__all__ = ["AICReport", "AICVerdict", "aic_verdict", "check_aic", "demo_regimes", "spectral_norm"]

_MAX_KRYLOV = 64  # highest power Hᵐ g0 examined when looking for the first non-zero coupling
_LABELS = {
    "sharp_low_rank": "sharp low-rank alignment curvature",
    "orthogonal": "initial orthogonality",
    "coupled": "curvature coupling",
}


class _Outcome:
    """What both outcome types share: the three conditions, the exponent, the law, and their wording."""

    conditions: dict[str, bool]
    exponent: int | None
    law: str

    @property
    def holds(self) -> bool:
        """True when all three conditions hold."""
        return all(self.conditions.values())

    @property
    def verdict(self) -> str:
        """``AIC holds`` or ``AIC does not hold (fails: …)`` naming the failed conditions."""
        if self.holds:
            return "AIC holds"
        failed = ", ".join(_LABELS[name] for name, ok in self.conditions.items() if not ok)
        return f"AIC does not hold (fails: {failed})"

    def exponent_text(self) -> str:
        """The predicted leading exponent in words (overridden where None needs explaining)."""
        return str(self.exponent)

    def _coefficient_text(self) -> str:
        """The coefficient(s) of the predicted law, in words."""
        raise NotImplementedError

    def line(self) -> str:
        """One line: the verdict, the predicted leading exponent and its coefficient, and the law."""
        return f"{self.verdict}; leading exponent {self.exponent_text()}; {self._coefficient_text()}; {self.law}"

    def _evidence(self) -> dict[str, tuple[str, str]]:
        """Per condition: (what was measured, what is required), for the table."""
        raise NotImplementedError

    def table(self) -> str:
        """Markdown table of the three conditions (measured against required) and the predicted law."""
        lines = ["| condition | holds | measured | required |", "|---|---|---|---|"]
        lines += [
            f"| {_LABELS[key]} | {'yes' if self.conditions[key] else 'no'} | {measured} | {required} |"
            for key, (measured, required) in self._evidence().items()
        ]
        lines += [
            "",
            f"{self.verdict}. Predicted leading exponent: **{self.exponent_text()}**; {self._coefficient_text()}",
            f"Law: {self.law}",
        ]
        return "\n".join(lines)


def _law_text(m: int | None, has_eta: bool, none_text: str) -> str:
    """The leading law when P_S Hᵐ g0 is the first non-zero vector (``none_text`` when there is none)."""
    if m is None:
        return none_text
    p = m + 1
    if m == 0:
        flow, gd = "A(t) ≈ ½‖F^{1/2} P_S g0‖² t²", "A_n ≈ ½‖F^{1/2} P_S g0‖² η² n²"
    elif m == 1:
        flow, gd = "A(t) ≈ γ² t⁴/8 with γ = ‖F^{1/2} P_S H g0‖", "A_n ≈ γ² η⁴ n²(n−1)²/8"
    else:
        falling = "".join(["n"] + [f"(n−{i})" for i in range(1, p)])
        flow = f"A(t) ≈ ½‖F^{{1/2}} P_S H^{m} g0‖² t^{2 * p} / ({p}!)²"
        gd = f"A_n ≈ ½‖F^{{1/2}} P_S H^{m} g0‖² η^{2 * p} [{falling}]² / ({p}!)²"
    return f"{flow};  {gd}" if has_eta else flow


@dataclass
class AICReport(_Outcome):
    """Outcome of :func:`check_aic` (exact inputs).

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

    def exponent_text(self) -> str:
        """The exponent, or how far the Krylov search showed A to vanish."""
        if self.exponent is not None:
            return str(self.exponent)
        if self.numbers["krylov_checked"] >= self.numbers["d"] - 1:
            return "identically zero"
        return f"none up to t^{2 * int(self.numbers['krylov_checked']) + 2}"

    def _coefficient_text(self) -> str:
        gd = "" if self.coefficient_gd is None else f"; GD (η = {self.numbers['eta']:g}): {self.coefficient_gd:.6g}"
        return f"coefficient (gradient flow): {self.coefficient:.6g}{gd}"

    def _evidence(self) -> dict[str, tuple[str, str]]:
        v = self.numbers
        rank = f"k/d = {int(v['k'])}/{int(v['d'])}; min λ/‖H‖ = {v['sharpness_measured']:.4g}"
        sharp = f"{rank} (min λ = {v['lam_min']:.4g}, ‖H‖ = {v['h_norm']:.4g})"
        sharp_req = f"k/d ≤ {v['max_rank_fraction']:g}; min λ/‖H‖ ≥ {v['sharpness_ratio']:g}"
        coupled = f"‖P_S H g0‖ = {v['coupling']:.4g}; /(‖H‖‖g0‖) = {v['coupling_rel']:.3e}"
        return {
            "sharp_low_rank": (sharp, sharp_req),
            "orthogonal": (f"‖P_S g0‖/‖g0‖ = {v['orthogonality']:.3e}", f"≤ {v['ortho_tol']:.1e}"),
            "coupled": (coupled, f"> {v['coupling_tol']:.1e} (relative)"),
        }


def spectral_norm(H: Any, d: int, *, iters: int = 200, seed: int = 0) -> float:
    """‖H‖₂ of a symmetric H: exact for a matrix, power iteration (fixed seed) for a callable v -> H v."""
    if not is_callable_operator(H):
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


def _vanishing_text(krylov_checked: int, d: int) -> str:
    if krylov_checked >= d - 1:  # Cayley–Hamilton: Hᵐ g0 for m < d span the whole Krylov space
        return "A(t) ≡ 0: P_S Hᵐ g0 = 0 for every m, the trajectory never enters S"
    return f"A(t) = O(t^{2 * krylov_checked + 4}): P_S Hᵐ g0 = 0 for m ≤ {krylov_checked} (checked up to there)"


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
    law = _law_text(m, eta is not None, _vanishing_text(Y.shape[0] - 1, d))
    return AICReport(conditions, exponent, coef, coef_gd, law, numbers)


@dataclass
class AICVerdict(_Outcome):
    """Outcome of :func:`aic_verdict` (measured scalars).

    Attributes:
        conditions: {"sharp_low_rank": …, "orthogonal": …, "coupled": …}, the keys of :class:`AICReport`.
        exponent: predicted leading exponent of the alignment loss in t = η·steps: 4 when orthogonal and coupled,
            2 when orthogonality fails, None when orthogonal but uncoupled (no t⁴ term: t⁶ or higher, which the
            measured scalars cannot tell apart).
        coefficient: γ²/8, the coefficient of t⁴ (the leading one when ``exponent`` is 4; for GD use
            ``theory.quartic.leading_law_gd``).
        law: the predicted law in words/formula.
        numbers: the measurements, derived ratios, thresholds used, and two crossover times (upper bounds): after
            ``t_after_eps`` = 2√λ_1 ‖P_S g‖/γ the t⁴ term exceeds the t² term that ‖P_S g‖ adds inside S, after
            ``t_after_tail`` = 2‖g‖√min(λ_k, tail)/γ it exceeds the t² term F_⊥ adds to the whole safety loss.
    """

    conditions: dict[str, bool]
    exponent: int | None
    coefficient: float
    law: str = ""
    numbers: dict[str, float] = field(default_factory=dict)

    def exponent_text(self) -> str:
        """The exponent, or "no t⁴ term (t⁶ or higher)"."""
        return "no t⁴ term (t⁶ or higher)" if self.exponent is None else str(self.exponent)

    def _coefficient_text(self) -> str:
        v = self.numbers
        text = f"t⁴ coefficient γ²/8 = {self.coefficient:.4g} (t = η·steps)"
        if self.exponent == 2:
            text += f"; t² coefficient ≤ ½λ_1‖P_S g‖² = {0.5 * v['lam_1'] * v['eps'] ** 2:.4g}"
        return text

    def _evidence(self) -> dict[str, tuple[str, str]]:
        v = self.numbers
        spectrum = (
            f"λ_k = {v['lam_k']:.4g} (k = {int(v['k'])}, λ_1 = {v['lam_1']:.4g}); tail/trace = {v['tail_fraction']:.3g}"
        )
        ortho = f"‖P_S g‖ = {v['eps']:.3g}; /‖g‖ = {v['eps_rel']:.3e}"
        return {
            "sharp_low_rank": (spectrum, f"λ_k ≥ {v['lam_min']:.4g}; tail/trace ≤ {v['tail_max']:g}"),
            "orthogonal": (ortho, f"≤ {v['eps_max']:.1e} (relative)"),
            "coupled": (f"γ = {v['gamma']:.4g}; /(√λ_1 ‖H g‖) = {v['gamma_rel']:.3e}", f"≥ {v['gamma_min']:.4g}"),
        }


def _nonnegative(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _spectrum(eigenvalues: Any, trace: float) -> tuple[np.ndarray, float]:
    """Top-k eigenvalues sorted descending, and the tail trace − Σλ_i (round-off below zero clipped)."""
    lam = np.sort(as_array(eigenvalues, "eigenvalues").reshape(-1))[::-1]
    if lam.size == 0:
        raise ConfigError("eigenvalues must hold at least one value (the top-k eigenvalues of F)")
    if lam[-1] < 0:
        raise ConfigError(f"eigenvalues of a Fisher must be >= 0, got {lam[-1]:g}")
    trace = _nonnegative("trace", trace)
    tail = trace - float(lam.sum())
    if tail < -1e-6 * max(trace, float(lam.sum())):
        raise ConfigError(f"trace = {trace:.6g} is below the sum of the top eigenvalues {float(lam.sum()):.6g}")
    return lam, max(tail, 0.0)


def aic_verdict(
    eigenvalues: Sequence[float] | np.ndarray,
    trace: float,
    eps: float,
    grad_norm: float,
    gamma: float,
    hg_norm: float,
    *,
    lam_min: float | None = None,
    tail_max: float = 0.1,
    eps_max: float = 1e-3,
    gamma_min: float | None = None,
) -> AICVerdict:
    """The AIC verdict from what a curvature-diagnostics pass measures on a model at the start of fine-tuning.

    Conditions (defaults are scale-free: unchanged when the loss is multiplied by a constant or the parameters are
    rescaled):

    1. concentrated, sharp spectrum: λ_k ≥ ``lam_min`` and tail/trace ≤ ``tail_max``, where tail = trace − Σ λ_i is
       the Fisher's mass outside S. Default ``lam_min`` = ‖H g‖/‖g‖, the fine-tune curvature along g (a lower bound
       of ‖H‖, so this is ``check_aic``'s default min λ ≥ ‖H‖ with the one scale measured); ``tail_max`` = 0.1.
    2. initial orthogonality: ‖P_S g‖/‖g‖ ≤ ``eps_max`` (relative; default 1e-3).
    3. curvature coupling: γ > 0 and γ ≥ ``gamma_min``. Default ``gamma_min`` = 1e-3 · √λ_1 ‖H g‖, since
       γ ≤ √λ_1 ‖P_S H g‖ ≤ √λ_1 ‖H g‖ (γ/(√λ_1 ‖H g‖) is the reported relative coupling, in [0, 1]).

    The exponent follows conditions 2 and 3 as in :func:`check_aic`: 2 without orthogonality, 4 with orthogonality
    and coupling (A ≈ γ²t⁴/8), and no t⁴ term when orthogonal but uncoupled. Condition 1 decides only whether the AIC
    holds; how early the t⁴ term takes over is in ``numbers["t_after_eps"]`` and ``numbers["t_after_tail"]``.

    Args:
        eigenvalues: the top-k eigenvalues λ_1 ≥ … ≥ λ_k of the safety Fisher F (any order; sorted here).
        trace: trace of F (e.g. the mean squared per-example gradient norm).
        eps: ‖P_S g‖ for the fine-tune gradient g.
        grad_norm: ‖g‖ (> 0).
        gamma: γ = ‖F^{1/2} P_S H g‖ (``theory.quartic.gamma_f_weighted``).
        hg_norm: ‖H g‖, the norm of the Hessian-vector product γ was computed from.
        lam_min: absolute threshold λ of condition 1 (the paper's λ_k ≥ λ); None for the default above.
        tail_max: largest allowed tail/trace, in [0, 1].
        eps_max: largest allowed ‖P_S g‖/‖g‖, >= 0.
        gamma_min: absolute threshold of condition 3; None for the default above.

    Returns:
        An :class:`AICVerdict`.
    """
    lam, tail = _spectrum(eigenvalues, trace)
    eps, gamma, hg_norm = _nonnegative("eps", eps), _nonnegative("gamma", gamma), _nonnegative("hg_norm", hg_norm)
    grad_norm = _nonnegative("grad_norm", grad_norm)
    if grad_norm == 0.0:
        raise ConfigError("grad_norm is 0: fine-tuning does not move, the AIC is undefined")
    if not 0.0 <= float(tail_max) <= 1.0:
        raise ConfigError(f"tail_max is a fraction of the trace in [0, 1], got {tail_max!r}")
    eps_max = _nonnegative("eps_max", eps_max)
    lam_1, lam_k = float(lam[0]), float(lam[-1])
    lam_thr = hg_norm / grad_norm if lam_min is None else _nonnegative("lam_min", lam_min)
    gamma_scale = math.sqrt(lam_1) * hg_norm
    gamma_thr = 1e-3 * gamma_scale if gamma_min is None else _nonnegative("gamma_min", gamma_min)
    total = tail + float(lam.sum())
    numbers = {
        "k": float(lam.size),
        "lam_1": lam_1,
        "lam_k": lam_k,
        "trace": float(trace),
        "tail": tail,
        "tail_fraction": tail / total if total > 0 else 0.0,
        "eps": eps,
        "eps_rel": eps / grad_norm,
        "grad_norm": grad_norm,
        "gamma": gamma,
        "gamma_rel": gamma / gamma_scale if gamma_scale > 0 else 0.0,
        "hg_norm": hg_norm,
        "lam_min": lam_thr,
        "tail_max": float(tail_max),
        "eps_max": eps_max,
        "gamma_min": gamma_thr,
        "t_after_eps": 2 * math.sqrt(lam_1) * eps / gamma if gamma > 0 else math.inf,
        "t_after_tail": 2 * grad_norm * math.sqrt(min(lam_k, tail)) / gamma if gamma > 0 else math.inf,
    }
    conditions = {
        "sharp_low_rank": bool(lam_k >= lam_thr and numbers["tail_fraction"] <= tail_max),
        "orthogonal": bool(numbers["eps_rel"] <= eps_max),
        "coupled": bool(gamma > 0 and gamma >= gamma_thr),
    }
    m = 0 if not conditions["orthogonal"] else (1 if conditions["coupled"] else None)
    law = _law_text(m, True, "no t⁴ term: A(t) = O(t⁶) (t⁶ when P_S H² g ≠ 0, which these measurements do not show)")
    return AICVerdict(conditions, None if m is None else 2 * (m + 1), gamma**2 / 8, law, numbers)


def demo_regimes(d: int = 24, k: int = 2, lam: float = 60.0, eps: float = 0.2, seed: int = 0) -> str:
    """Markdown: both outcomes on one random quadratic instance in the three regimes (holds, ε > 0, block H).

    Under each :func:`check_aic` table, :func:`aic_verdict` is given the scalars a diagnostics pass would measure on
    the same instance (eigenvalues λ, trace = kλ, ‖P_S g0‖, ‖g0‖, γ, ‖H g0‖) and its one line is printed.
    """
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
        measured = aic_verdict(
            [lam] * k,
            k * lam,
            float(np.linalg.norm(U.T @ g)),
            float(np.linalg.norm(g)),
            math.sqrt(lam) * float(np.linalg.norm(U.T @ h @ g)),
            float(np.linalg.norm(h @ g)),
        )
        parts += [f"### {name}", "", check_aic(lam, U, h, g, eta=0.01).table(), "", f"Measured: {measured.line()}", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(demo_regimes())
