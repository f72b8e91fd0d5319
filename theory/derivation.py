"""Sympy derivations of the quartic law: the series behind ``theory.quartic``, checked symbolically.

Two derivations, each returning its expressions and a dict of sympy checks that must all be True.

:func:`derive` — the alignment-loss series. The fine-tune loss is g0·δ + ½δᵀHδ and the alignment loss
A = ½λ‖P_S δ‖². Per eigenvalue h of H the flow dδ/dt = −(g0 + Hδ) and the GD recursion δ_{n+1} = δ_n − η(g0 + Hδ_n)
have scalar solutions whose hᵐ coefficients are those of Hᵐ g0 in the vector solution, so

    P_S δ(t) = Σ_m −(−1)ᵐ t^{m+1}/(m+1)! P_S Hᵐ g0,   P_S δ_n = Σ_m −(−1)ᵐ η^{m+1} C(n, m+1) P_S Hᵐ g0,

and A is a quadratic form in the Gram symbols G_ab = ⟨P_S Hᵃ g0, P_S Hᵇ g0⟩: (λ/8) G_11 t⁴ when P_S g0 = 0,
(λ/2) G_00 t² when not, (λ/72) G_22 t⁶ when also P_S H g0 = 0.

:func:`derive_f_weighted` — the law for a safety loss with unequal curvature on S. The safety loss has the quadratic
model ½δᵀFδ; S = span(u_1 … u_k) holds F's top-k eigenvectors (eigenvalues λ_i) and the rest of F, F_⊥, has eigenvalues
μ_j on S⊥. On a small explicit example (d = 4 parameters, k = 2, a fully symbolic symmetric H, a symbolic g ⊥ S and a
non-axis-aligned rational eigenbasis) it shows, with the flow's Taylor coefficients taken from the ODE and GD's from
the recursion:

    ½‖F^{1/2} P_S δ(t)‖² = γ² t⁴/8 + O(t⁵),   ½‖F^{1/2} P_S δ_n‖² = γ² η⁴ n²(n−1)²/8 + O(η⁵),
    γ² = ‖F^{1/2} P_S H g‖² = Σ_i λ_i (u_iᵀ H g)²,

so the law carries no factor λ beyond the one already inside γ (it is linear in F, as the loss is). With λ_i = λ for
all i, γ² = λ‖P_S H g‖² and the law is the (λ/8)‖P_S H g‖² t⁴ of :func:`derive`; with unequal λ_i no single λ makes
(λ/8)‖P_S H g‖² equal to γ²/8 in general (λ_k‖P_S H g‖² ≤ γ² ≤ λ_1‖P_S H g‖²). F_⊥ adds ½ gᵀF_⊥g t² to the whole
quadratic model, at most ½ (trace F − Σ_i λ_i) ‖g‖² t²: the spectrum-tail condition of the AIC bounds it.

``python -m theory.derivation`` prints the first derivation (``--f-weighted``: the second).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from functools import lru_cache

import sympy as sp

from testbed.errors import ConfigError

__all__ = ["QuarticDerivation", "FWeightedDerivation", "derive", "derive_f_weighted", "main"]


def _formula_lines(sections: list[tuple[str, sp.Expr]]) -> list[str]:
    """Each (title, expression) as a blank line, the title, the pretty-printed expression and its LaTeX."""
    lines: list[str] = []
    for title, expr in sections:
        lines += ["", title + ":", sp.pretty(expr, use_unicode=True), f"LaTeX: {sp.latex(expr)}"]
    return lines


def _check_lines(checks: dict[str, bool]) -> list[str]:
    return ["", "Checks:"] + [f"  {name}: {'ok' if ok else 'FAILED'}" for name, ok in checks.items()]


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
        lines += _formula_lines(sections)
        lines += ["", f"Alignment loss through t^{self.order + 2} (gradient flow, general g0):"]
        lines.append(sp.pretty(self.flow_loss, use_unicode=True))
        return "\n".join(lines + _check_lines(self.checks))


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


# ----------------------------------------------------------------------------------------------------------------------
# The F-weighted law
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FWeightedDerivation:
    """Result of :func:`derive_f_weighted`: the quartic law for ½‖F^{1/2} P_S δ‖² on an explicit symbolic example.

    Attributes:
        dim: number of parameters d of the example.
        rank: dimension k of S.
        symbols: t, eta, n and lam (those of :func:`derive`), gamma (γ) and scale (c in F → cF).
        eigenvalues: λ_1 … λ_k, F's eigenvalues on S (independent symbols).
        tail_eigenvalues: μ_{k+1} … μ_d, F's eigenvalues on S⊥.
        basis: the orthonormal eigenbasis of F, d×d with rational entries; its first k columns span S.
        hessian: the symmetric fine-tune Hessian (symbols h_ij).
        gradient: the fine-tune gradient g, a symbolic combination of the columns spanning S⊥ (so P_S g = 0).
        gamma_squared: γ² = ‖F^{1/2} P_S H g‖² as a polynomial in λ_i, h_ij and g_j.
        flow_leading: γ² t⁴/8.
        gd_leading: γ² η⁴ n²(n−1)²/8.
        equal_eigenvalue_leading: (λ/8) G_11 t⁴ with G_11 = ‖P_S H g‖², the law when every λ_i = λ (that of
            :func:`derive`).
        tail_leading: ½ gᵀF_⊥g t² = ½ Σ_j μ_j g_j² t², what the rest of F adds to the whole model ½δᵀFδ.
        checks: the sympy verifications (all must be True).
    """

    dim: int
    rank: int
    symbols: dict[str, sp.Symbol]
    eigenvalues: tuple[sp.Symbol, ...]
    tail_eigenvalues: tuple[sp.Symbol, ...]
    basis: sp.Matrix
    hessian: sp.Matrix
    gradient: sp.Matrix
    gamma_squared: sp.Expr
    flow_leading: sp.Expr
    gd_leading: sp.Expr
    equal_eigenvalue_leading: sp.Expr
    tail_leading: sp.Expr
    checks: dict[str, bool] = field(default_factory=dict)

    def summary(self) -> str:
        """Readable account of the derivation, as printed by ``python -m theory.derivation --f-weighted``."""
        lam = ", ".join(sp.sstr(x) for x in self.eigenvalues)
        lines = [
            "F-weighted quartic law — sympy derivation",
            "Safety loss ½δᵀFδ, F = Σ_i λ_i u_i u_iᵀ + F_⊥; S = span(u_1..u_k); fine-tune loss g·δ + ½δᵀHδ; P_S g = 0",
            f"Example: d = {self.dim} parameters, k = {self.rank}, λ = ({lam}) independent, H fully symbolic, "
            "eigenbasis of F (columns u_1 … u_k, then w_{k+1} … w_d):",
            sp.pretty(self.basis, use_unicode=True),
            "",
            f"g = Σ_j g_j w_j (the columns of the basis after the first {self.rank}: P_S g = 0)",
            "γ² = ‖F^{1/2} P_S H g‖² = Σ_i λ_i (u_iᵀ H g)²: a polynomial of "
            f"{len(sp.Add.make_args(self.gamma_squared))} terms in the λ_i, h_ij and g_j",
        ]
        sections = [
            ("Leading term of ½‖F^{1/2} P_S δ(t)‖², gradient flow", self.flow_leading),
            ("  … discrete GD", self.gd_leading),
            (
                "Equal eigenvalues λ_i = λ (G_11 = ‖P_S H g‖²): the scalar law of derive()",
                self.equal_eigenvalue_leading,
            ),
            ("What F_⊥ adds to the whole model ½δᵀFδ (at most ½ (trace F − Σ λ_i) ‖g‖² t²)", self.tail_leading),
        ]
        return "\n".join(lines + _formula_lines(sections) + _check_lines(self.checks))


_Series = dict[int, sp.Matrix]  # power of t (or η) -> vector coefficient


def _mixing_basis(dim: int, rank: int) -> sp.Matrix:
    """An orthogonal matrix with rational entries whose first `rank` columns mix S with S⊥ (rotations by 3/5, 4/5)."""
    R = sp.eye(dim)
    for i in range(min(rank, dim - rank)):
        G = sp.eye(dim)
        j = rank + i
        G[i, i], G[i, j], G[j, i], G[j, j] = sp.Rational(3, 5), sp.Rational(-4, 5), sp.Rational(4, 5), sp.Rational(3, 5)
        R = R * G
    return R


def _flow_series(H: sp.Matrix, g: sp.Matrix, degree: int) -> _Series:
    """Taylor coefficients of δ(t) from the ODE δ' = −g − Hδ, δ(0) = 0: a_1 = −g, a_{j+1} = −H a_j / (j+1)."""
    series = {1: -g}
    for j in range(1, degree):
        series[j + 1] = (-H * series[j] / (j + 1)).applyfunc(sp.expand)
    return series


def _gd_series_for_step(H: sp.Matrix, g: sp.Matrix, steps: int, degree: int) -> _Series:
    """η-power coefficients of δ_n, iterating δ ← δ − η(g + Hδ) `steps` times and dropping powers above `degree`."""
    delta: _Series = {}
    for _ in range(steps):
        new = dict(delta)
        new[1] = new.get(1, sp.zeros(*g.shape)) - g
        for p, vec in delta.items():
            if p + 1 <= degree:
                new[p + 1] = (new.get(p + 1, sp.zeros(*g.shape)) - H * vec).applyfunc(sp.expand)
        delta = new
    return delta


def _gd_series_closed_form(H: sp.Matrix, g: sp.Matrix, n: sp.Symbol, degree: int) -> _Series:
    """η-power coefficients of δ_n from the closed form: the η^{m+1} coefficient is −(−1)ᵐ C(n, m+1) Hᵐ g."""
    series, vec = {}, g
    for m in range(degree):
        series[m + 1] = -((-1) ** m) * sp.expand_func(sp.binomial(n, m + 1)) * vec
        vec = (H * vec).applyfunc(sp.expand)
    return series


def _weighted_coefficient(series: _Series, basis: sp.Matrix, weights: list[sp.Expr], power: int) -> sp.Expr:
    """Coefficient of var^power in ½ Σ_i w_i (b_iᵀδ)², δ = Σ_j series[j] var^j, b_i the columns of ``basis``."""
    coords = {j: [sp.expand(basis[:, i].dot(vec)) for i in range(basis.shape[1])] for j, vec in series.items()}
    total = sp.Integer(0)
    for j, zj in coords.items():
        if power - j in coords:
            total += sum(w * a * b for w, a, b in zip(weights, zj, coords[power - j], strict=True))
    return sp.expand(total / 2)


@lru_cache(maxsize=4)
def derive_f_weighted(dim: int = 4, rank: int = 2) -> FWeightedDerivation:
    """Derive the F-weighted quartic law γ²t⁴/8 with sympy on an explicit example (see the module docstring).

    Args:
        dim: number of parameters of the example (3 <= dim <= 6; sympy's time grows quickly with it).
        rank: dimension k of S (2 <= rank < dim: at least two independent eigenvalues on S).

    Returns:
        A :class:`FWeightedDerivation` whose ``checks`` record: the t⁰…t³ terms of ½‖F^{1/2}P_Sδ(t)‖² vanish and its
        t⁴ term is γ²/8; GD's η⁴ term is γ²n²(n−1)²/8 for every n (closed form) and for n = 1…4 (the recursion itself);
        the law scales linearly with F; with equal eigenvalues it is (λ/8)‖P_S H g‖² t⁴ and equals :func:`derive`'s
        law; with unequal ones it is not the scalar law for any one of the λ_i; F_⊥ starts at ½gᵀF_⊥g t².
    """
    for name, val, lo, hi in (("dim", dim, 3, 6), ("rank", rank, 2, dim - 1)):
        if isinstance(val, bool) or not isinstance(val, int) or not lo <= val <= hi:
            raise ConfigError(f"F-weighted derivation needs an integer {name} in [{lo}, {hi}], got {val!r}")
    scalar = derive(3)
    t, eta, n, lam, G11 = (*(scalar.symbols[s] for s in ("t", "eta", "n", "lam")), scalar.gram[1, 1])
    gamma, c = sp.symbols("gamma c", positive=True)
    lams = list(sp.symbols(f"lambda_1:{rank + 1}", positive=True))
    mus = list(sp.symbols(f"mu_{rank + 1}:{dim + 1}", nonnegative=True))
    g_perp = sp.symbols(f"g_{rank + 1}:{dim + 1}", real=True)
    R = _mixing_basis(dim, rank)
    U, W = R[:, :rank], R[:, rank:]
    H = sp.Matrix(dim, dim, lambda i, j: sp.Symbol(f"h_{min(i, j) + 1}{max(i, j) + 1}", real=True))
    g = W * sp.Matrix(g_perp)  # P_S g = 0 by construction
    # γ from its definition: F^{1/2} P_S = U diag(√λ) Uᵀ applied to H g, then the squared norm
    root_hg = (U * sp.diag(*[sp.sqrt(x) for x in lams]) * U.T * H * g).applyfunc(sp.expand)
    gamma_sq = sp.expand(root_hg.dot(root_hg))
    proj_hg = (U * U.T * H * g).applyfunc(sp.expand)
    coupling_sq = sp.expand(proj_hg.dot(proj_hg))  # ‖P_S H g‖²

    def in_s(series: _Series, power: int) -> sp.Expr:
        return _weighted_coefficient(series, U, lams, power)

    flow = _flow_series(H, g, 3)
    closed = _gd_series_closed_form(H, g, n, 3)
    gd_law = gamma_sq * n**2 * (n - 1) ** 2 / 8
    recursion = [_gd_series_for_step(H, g, k, 3) for k in range(1, 5)]
    equal = {x: lam for x in lams}
    checks = {
        "flow: no t^0..t^3 term when P_S g = 0": all(in_s(flow, p) == 0 for p in range(4)),
        "flow: t^4 coefficient = gamma^2/8": sp.expand(in_s(flow, 4) - gamma_sq / 8) == 0,
        "gd: no eta^2, eta^3 term; eta^4 coefficient = gamma^2 n^2 (n-1)^2/8": sp.expand(in_s(closed, 4) - gd_law) == 0
        and all(in_s(closed, p) == 0 for p in (2, 3)),
        "gd: the recursion itself gives the same for n = 1..4": all(
            in_s(rec, 3) == 0 and sp.expand(in_s(rec, 4) - gd_law.subs(n, k)) == 0
            for k, rec in enumerate(recursion, start=1)
        ),
        "linear in F (F -> cF scales the law by c: no extra factor lambda)": sp.expand(
            gamma_sq.subs({x: c * x for x in lams}, simultaneous=True) - c * gamma_sq
        )
        == 0,
        "equal eigenvalues: gamma^2 = lambda ||P_S H g||^2": sp.expand(gamma_sq.subs(equal) - lam * coupling_sq) == 0,
        "equal eigenvalues: the law of derive() with G_11 = ||P_S H g||^2": sp.expand(
            scalar.flow_leading.subs(G11, coupling_sq) - gamma_sq.subs(equal) * t**4 / 8
        )
        == 0,
        "unequal eigenvalues: no single lambda_i gives the scalar law": all(
            sp.expand(gamma_sq - x * coupling_sq) != 0 for x in lams
        ),
        "tail: F_perp adds (1/2) g^T F_perp g t^2 to the whole model": sp.expand(
            _weighted_coefficient(flow, R, lams + mus, 2) - sum(m * x**2 for m, x in zip(mus, g_perp, strict=True)) / 2
        )
        == 0,
    }
    return FWeightedDerivation(
        dim=dim,
        rank=rank,
        symbols={"t": t, "eta": eta, "n": n, "gamma": gamma, "lam": lam, "scale": c},
        eigenvalues=tuple(lams),
        tail_eigenvalues=tuple(mus),
        basis=R,
        hessian=H,
        gradient=g,
        gamma_squared=gamma_sq,
        flow_leading=gamma**2 * t**4 / 8,
        gd_leading=gamma**2 * eta**4 * n**2 * (n - 1) ** 2 / 8,
        equal_eigenvalue_leading=scalar.flow_leading,
        tail_leading=sum(m * x**2 for m, x in zip(mus, g_perp, strict=True)) * t**2 / 2,
        checks=checks,
    )


def main(argv: list[str] | None = None) -> int:
    """Print a derivation: ``python -m theory.derivation`` (the alignment-loss series) or ``--f-weighted``."""
    parser = argparse.ArgumentParser(prog="python -m theory.derivation", description=main.__doc__)
    parser.add_argument("--f-weighted", action="store_true", help="derive the F-weighted law γ²t⁴/8 instead")
    args = parser.parse_args([] if argv is None else argv)
    print(derive_f_weighted().summary() if args.f_weighted else derive(3).summary())
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
