"""The alignment subspace S as an object: basis, eigenvalues, trace, how it was estimated; principal angles.

S = span(v_1 … v_d) with orthonormal rows V = [v_1; …; v_d] ∈ R^{d×P} over the trainable parameters and the
eigenvalues λ_1 ≥ … ≥ λ_d of the safety Fisher (or Hessian) on them, so that on S

    P_S x = Vᵀ V x,   ‖F^{1/2} P_S x‖² = Σ_i λ_i (v_iᵀ x)²,   tail = trace(F) − Σ_i λ_i.

``Subspace.save`` writes it (with any extra records, e.g. the AIC diagnostics) atomically as one torch file; ``load``
reads it back with ``weights_only``. ``principal_angles(A, B)`` between two row spaces uses both the cosines (singular
values of A Bᵀ) and the sines (singular values of B − B Aᵀ A), so angles near 0 are exact to round-off (arccos of the
cosines alone resolves only ~1e-8 rad).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from testbed.curvature.partition import FlatPartition
from testbed.io import atomic_torch_save, load_torch_file
from testbed.tags import CURVATURE, tag

__all__ = ["Subspace", "principal_angles"]


@dataclass
class Subspace:
    """An estimated alignment subspace.

    Attributes:
        basis: V [d, P], orthonormal rows.
        eigenvalues: λ [d], descending (nan for a random control subspace).
        trace: trace of the curvature matrix (nan when unknown).
        n: number of safety examples it was estimated from (0 for a random subspace).
        method: ``fisher``, ``hessian`` or ``random``.
        how: how the numbers were computed, in words (per-example gradients by vmap or a loop, HVPs, ...).
        spectrum: every eigenvalue the estimate found (the Fisher's N Gram eigenvalues), descending.
    """

    basis: Tensor
    eigenvalues: Tensor
    trace: float
    n: int
    method: str
    how: str = ""
    spectrum: Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def d(self) -> int:
        return int(self.basis.shape[0])

    @property
    def tail(self) -> float:
        """trace − Σ λ_i (round-off below zero clipped), the curvature outside S."""
        return max(self.trace - float(self.eigenvalues.double().sum()), 0.0)

    def coords(self, x: Tensor, partition: FlatPartition | None = None) -> Tensor:
        """V x [d] (or [d, m] for x [m, P] → V xᵀ), inner products reduced over ``partition``."""
        part = partition or FlatPartition(self.basis.shape[1])
        return part.matmul(self.basis, x.to(self.basis.dtype))

    def weighted_norm(self, coords: Tensor) -> Tensor:
        """‖F^{1/2} P_S x‖ = (Σ λ_i c_i²)^{1/2} from the coordinates c = V x."""
        return (self.eigenvalues.to(coords.dtype) * coords**2).sum().clamp_min(0).sqrt()

    def to(self, device: torch.device | str) -> Subspace:
        return Subspace(self.basis.to(device), self.eigenvalues.to(device), self.trace, self.n, self.method, self.how,
                        self.spectrum)  # fmt: skip

    def scalars(self) -> dict[str, float]:
        """The numbers logged at step 0 under ``curvature/``."""
        lam = self.eigenvalues.double()
        out = {tag(CURVATURE, "d"): float(self.d), tag(CURVATURE, "n"): float(self.n)}
        if self.method != "random":
            out.update({
                tag(CURVATURE, "lambda_1"): float(lam[0]),
                tag(CURVATURE, "lambda_d"): float(lam[-1]),
                tag(CURVATURE, "trace"): self.trace,
                tag(CURVATURE, "tail"): self.tail,
                tag(CURVATURE, "tail_fraction"): self.tail / self.trace if self.trace > 0 else 0.0,
            })  # fmt: skip
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def record(self) -> dict[str, Any]:
        """Everything as plain tensors, numbers and strings (what ``save`` writes and ``load`` reads)."""
        return {"basis": self.basis.detach().cpu(), "eigenvalues": self.eigenvalues.detach().cpu(),
                "trace": float(self.trace), "n": int(self.n), "method": self.method, "how": self.how,
                "spectrum": self.spectrum.detach().cpu()}  # fmt: skip

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Subspace:
        return cls(record["basis"], record["eigenvalues"], float(record["trace"]), int(record["n"]), record["method"],
                   record.get("how", ""), record.get("spectrum", torch.zeros(0)))  # fmt: skip

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the subspace and ``extra`` records (numbers, strings, tensors) atomically to ``path``."""
        return atomic_torch_save({"subspace": self.record(), **(extra or {})}, path)

    @classmethod
    def load(cls, path: str | Path) -> tuple[Subspace, dict[str, Any]]:
        """The subspace in a file written by ``save``, and the file's other records."""
        data = load_torch_file(path, what="curvature subspace file")
        return cls.from_record(data.pop("subspace")), data


def principal_angles(a: Tensor, b: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between the row spaces of orthonormal-row matrices a [p, P], b [q, P].

    min(p, q) angles; in float64.
    """
    a, b = a.double(), b.double()
    cos = torch.linalg.svdvals(a @ b.T).clamp(0.0, 1.0)  # descending
    sin = torch.linalg.svdvals(b - (b @ a.T) @ a)  # descending
    k = min(a.shape[0], b.shape[0])
    sin_asc = torch.cat([sin, sin.new_zeros(max(0, k - sin.numel()))]).sort().values[:k]
    return torch.atan2(sin_asc, cos[:k])
