"""Reversion metrics as ``torchmetrics.Metric``s, with states that reduce across processes (sums and counts).

Drift alignment at one layer, for probe representations r(x) of the model now, the reference mean
representation m_ref (the aligned model's) and the unit direction v (v_rev):

    drift = mean_x r(x) - m_ref,   along = <drift, v>,   cos = along / ||drift||,   orth = ||drift - along v||.

cos > 0 means the model drifts back toward the witness. Under DDP each rank updates with its shard of the probe
batch; the synced sums and counts give the same mean (to float round-off) as one process reading everything.

Null exceedance: under the isotropic null a drift direction is uniform on the sphere S^{W-1}, so cos has the
exact law of ``theory.null`` for the layer width W; a run-step exceeds p99 when cos > the 0.99 quantile.

Matched null exceedance: at each measured step the null is empirical, cos(drift, u_k) over null directions u_k
built the way v_rev is (``testbed.nulls``); a run-step exceeds it when cos(drift, v_rev) > the empirical quantile
of those values at that step (``torch.quantile``, linear interpolation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from testbed.errors import ConfigError

NULL_LEVELS = (0.99, 0.999)


def level_name(p: float) -> str:
    """``0.99 -> "p99"``, ``0.999 -> "p999"`` (tag-safe, no dots)."""
    return "p" + f"{p * 100:g}".replace(".", "")


class DriftAlignment(Metric):
    """cos(mean representation now - reference mean, v), the component along v and the orthogonal drift norm.

    Args:
        direction: unit vector v ``[W]``.
        reference_mean: reference mean representation ``[W]``.
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, direction: Tensor, reference_mean: Tensor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if direction.shape != reference_mean.shape or direction.dim() != 1:
            raise ConfigError(
                f"direction {tuple(direction.shape)} and reference mean {tuple(reference_mean.shape)} "
                "must be vectors of the same width"
            )
        self.register_buffer("direction", direction.detach().double() / direction.detach().double().norm())
        self.register_buffer("reference_mean", reference_mean.detach().double())
        width = direction.numel()
        self.add_state("rep_sum", default=torch.zeros(width, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, reps: Tensor) -> None:
        """Add pooled representations ``[B, W]`` (B may be 0 for an empty shard)."""
        if reps.dim() != 2 or reps.shape[1] != self.direction.numel():
            raise ConfigError(f"representations of shape {tuple(reps.shape)} do not fit width {self.direction.numel()}")
        self.rep_sum += reps.detach().double().sum(dim=0).to(self.rep_sum.device)
        self.count += reps.shape[0]

    def compute(self) -> dict[str, Tensor]:
        if self.count <= 0:
            raise ConfigError("drift alignment computed before any probe representations were added")
        drift = self.rep_sum / self.count - self.reference_mean
        along = torch.dot(drift, self.direction)
        norm = drift.norm()
        cos = along / norm if norm > 0 else torch.zeros((), dtype=torch.float64, device=norm.device)
        orth = (drift - along * self.direction).norm()
        return {"cos": cos, "along": along, "orth_norm": orth, "drift_norm": norm, "drift": drift}


class NullExceedance(Metric):
    """Fraction (and count) of measured run-steps whose cos exceeds the isotropic null's p99 / p99.9.

    Args:
        width: representation width W (the sphere's dimension).
        levels: null quantiles, default (0.99, 0.999).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, width: int, levels: Sequence[float] = NULL_LEVELS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from theory.null import cosine_null_threshold

        self.levels = tuple(float(p) for p in levels)
        self.register_buffer(
            "thresholds", torch.tensor([cosine_null_threshold(int(width), p) for p in self.levels], dtype=torch.float64)
        )
        self.add_state("exceed", default=torch.zeros(len(self.levels), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def threshold(self, p: float) -> float:
        return float(self.thresholds[self.levels.index(float(p))])

    def indicators(self, cos: Tensor | float) -> Tensor:
        """0/1 per level for one cos value (no state change)."""
        value = torch.as_tensor(cos, dtype=torch.float64, device=self.thresholds.device)
        return (value > self.thresholds).double()

    def update(self, cos: Tensor | float) -> None:
        """Add one or more run-step cos values."""
        values = torch.as_tensor(cos, dtype=torch.float64, device=self.thresholds.device).reshape(-1, 1)
        self.exceed += (values > self.thresholds).double().sum(dim=0)
        self.total += values.shape[0]

    def compute(self) -> dict[str, Tensor]:
        total = self.total.clamp_min(1)
        out = {f"exceed_frac_{level_name(p)}": self.exceed[i] / total for i, p in enumerate(self.levels)}
        out.update({f"exceed_count_{level_name(p)}": self.exceed[i] for i, p in enumerate(self.levels)})
        out["steps"] = self.total
        return out


class EmpiricalNullExceedance(Metric):
    """Fraction (and count) of measured run-steps whose cos exceeds the empirical quantiles of a matched null.

    Args:
        null_directions: null directions ``[K, W]`` (normalised here).
        levels: quantiles, default (0.99, 0.999).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, null_directions: Tensor, levels: Sequence[float] = NULL_LEVELS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if null_directions.dim() != 2 or null_directions.shape[0] < 1:
            raise ConfigError(f"null directions must be a non-empty [K, W] matrix, got {tuple(null_directions.shape)}")
        rows = null_directions.detach().double()
        self.register_buffer("null_directions", rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-300))
        self.levels = tuple(float(p) for p in levels)
        self.add_state("exceed", default=torch.zeros(len(self.levels), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def quantiles(self, drift: Tensor) -> Tensor:
        """The null's quantiles of cos(drift, u_k) at ``levels`` for one drift vector ``[W]`` (no state change)."""
        drift = drift.detach().double().to(self.null_directions.device)
        norm = drift.norm()
        cos = self.null_directions @ drift / norm if norm > 0 else torch.zeros(len(self.null_directions)).double()
        return torch.quantile(cos, torch.tensor(self.levels, dtype=torch.float64, device=cos.device))

    def exceedance(self, cos: Tensor | float, drift: Tensor) -> tuple[Tensor, Tensor]:
        """(the null's quantiles, 0/1 indicators of cos above each) for one run-step (no state change)."""
        quantiles = self.quantiles(drift)
        return quantiles, (torch.as_tensor(cos, dtype=torch.float64, device=quantiles.device) > quantiles).double()

    def update(self, indicators: Tensor) -> None:
        """Add one run-step's indicators (from ``exceedance``)."""
        self.exceed += indicators.to(self.exceed)
        self.total += 1

    def compute(self) -> dict[str, Tensor]:
        total = self.total.clamp_min(1)
        return {f"exceed_frac_matched_{level_name(p)}": self.exceed[i] / total for i, p in enumerate(self.levels)}


__all__ = [
    "DriftAlignment",
    "EmpiricalNullExceedance",
    "NullExceedance",
    "level_name",
    "NULL_LEVELS",
]
