"""AIC diagnostics at the start of fine-tuning: the three conditions measured on a model, and the verdict.

With S = span(V) and its eigenvalues λ (``Subspace``), the fine-tune gradient g of the first batch and H g from a
Hessian-vector product of the fine-tune loss:

- spectrum: λ_d and the tail trace − Σ λ_i (from the subspace);
- orthogonality: ε = ‖P_S g‖ = ‖V g‖, and ε/‖g‖;
- coupling: γ = ‖F^{1/2} P_S H g‖ = (Σ_i λ_i (v_iᵀ H g)²)^{1/2}, beside ‖H g‖;

and ``theory.aic.aic_verdict`` turns them into the verdict and the predicted leading exponent of the safety loss
(4 under the AIC: Δu ≈ γ² t⁴ / 8 with t = η · steps; 2 when orthogonality fails).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from testbed.curvature.partition import FlatPartition
from testbed.curvature.subspace import Subspace
from testbed.errors import ConfigError, fraction, positive_number
from testbed.tags import CURVATURE, tag
from theory.aic import AICVerdict, aic_verdict

__all__ = ["AICThresholds", "Diagnostics", "diagnose"]


@dataclass
class AICThresholds:
    """Thresholds of the AIC verdict (``theory.aic.aic_verdict``); None keeps its scale-free defaults.

    Args:
        lam_min: condition 1 needs λ_d >= lam_min (default: ‖H g‖/‖g‖, the fine-tune curvature along g).
        tail_max: condition 1 needs tail/trace <= tail_max.
        eps_max: condition 2 needs ‖P_S g‖/‖g‖ <= eps_max.
        gamma_min: condition 3 needs γ >= gamma_min (default: 1e-3 √λ_1 ‖H g‖).
    """

    lam_min: float | None = None
    tail_max: float = 0.1
    eps_max: float = 1e-3
    gamma_min: float | None = None

    def __post_init__(self) -> None:
        positive_number("aic lam_min", self.lam_min, allow_zero=True, allow_none=True)
        fraction("aic tail_max", self.tail_max)
        positive_number("aic eps_max", self.eps_max, allow_zero=True)
        positive_number("aic gamma_min", self.gamma_min, allow_zero=True, allow_none=True)


@dataclass
class Diagnostics:
    """The measured AIC quantities and the verdict.

    Attributes:
        grad_norm: ‖g‖.
        eps: ‖P_S g‖.
        hg_norm: ‖H g‖.
        gamma: γ = ‖F^{1/2} P_S H g‖.
        verdict: ``theory.aic.AICVerdict``.
        hvp: how H g was computed (double backward or finite differences).
    """

    grad_norm: float
    eps: float
    hg_norm: float
    gamma: float
    verdict: AICVerdict
    hvp: str = ""

    @property
    def eps_rel(self) -> float:
        return self.eps / self.grad_norm

    def scalars(self) -> dict[str, float]:
        """The numbers logged at step 0 under ``curvature/`` (conditions and verdict as 0/1)."""
        v = self.verdict
        out = {
            tag(CURVATURE, "grad_norm"): self.grad_norm,
            tag(CURVATURE, "eps"): self.eps,
            tag(CURVATURE, "eps_rel"): self.eps_rel,
            tag(CURVATURE, "hg_norm"): self.hg_norm,
            tag(CURVATURE, "gamma"): self.gamma,
            tag(CURVATURE, "gamma_rel"): v.numbers["gamma_rel"],
            tag(CURVATURE, "aic_holds"): float(v.holds),
            tag(CURVATURE, "sharp_low_rank"): float(v.conditions["sharp_low_rank"]),
            tag(CURVATURE, "orthogonal"): float(v.conditions["orthogonal"]),
            tag(CURVATURE, "coupled"): float(v.conditions["coupled"]),
        }
        if v.exponent is not None:
            out[tag(CURVATURE, "aic_exponent")] = float(v.exponent)
        return {k: x for k, x in out.items() if math.isfinite(x)}

    @classmethod
    def measured(
        cls, subspace: Subspace, numbers: tuple[float, float, float, float], thresholds: AICThresholds | None = None,
        hvp: str = "",
    ) -> Diagnostics:  # fmt: skip
        """The diagnostics of measured (‖g‖, ε, ‖H g‖, γ) against ``subspace``, with the verdict."""
        grad_norm, eps, hg_norm, gamma = (float(x) for x in numbers)
        t = thresholds or AICThresholds()
        verdict = aic_verdict(subspace.eigenvalues.double().cpu().numpy(), subspace.trace, eps, grad_norm, gamma,
                              hg_norm, lam_min=t.lam_min, tail_max=t.tail_max, eps_max=t.eps_max,
                              gamma_min=t.gamma_min)  # fmt: skip
        return cls(grad_norm, eps, hg_norm, gamma, verdict, hvp)

    @property
    def numbers(self) -> tuple[float, float, float, float]:
        """(‖g‖, ε, ‖H g‖, γ): what ``measured`` takes."""
        return self.grad_norm, self.eps, self.hg_norm, self.gamma

    def record(self) -> dict[str, Any]:
        """Plain numbers and text for the run's subspace file."""
        return {"grad_norm": self.grad_norm, "eps": self.eps, "hg_norm": self.hg_norm, "gamma": self.gamma,
                "verdict": self.verdict.line(), "table": self.verdict.table(), "hvp": self.hvp,
                "exponent": self.verdict.exponent}  # fmt: skip


def diagnose(
    subspace: Subspace,
    grad: Tensor,
    hg: Tensor,
    thresholds: AICThresholds | None = None,
    partition: FlatPartition | None = None,
    hvp: str = "",
) -> Diagnostics:
    """The AIC quantities of the fine-tune gradient ``grad`` [P] and its Hessian product ``hg`` = H g [P] against S."""
    if subspace.method == "random":
        raise ConfigError("AIC diagnostics need an estimated subspace (method fisher or hessian), not a random one")
    part = partition or FlatPartition(grad.numel())
    grad_norm, hg_norm = float(part.norm(grad)), float(part.norm(hg))
    if grad_norm == 0.0 or not math.isfinite(grad_norm):
        raise ConfigError(f"the first fine-tune gradient has norm {grad_norm}: the AIC is undefined")
    eps = float(subspace.coords(grad, part).norm())
    gamma = float(subspace.weighted_norm(subspace.coords(hg, part).double()))
    return Diagnostics.measured(subspace, (grad_norm, eps, hg_norm, gamma), thresholds, hvp)
