"""Deterministic synthetic inputs on a controlled low-dimensional manifold, and the two tasks of the neural toy.

Inputs lie on a curved m-dimensional manifold in Rᴰ: with latent z ~ N(0, I_m) and a random orthonormal frame
Q = [Q1 | Q2] (D×m each),

    x = Q1 z + κ Q2 (z ⊙ z − 1)/√2,

so κ = ``curvature`` = 0 gives a flat m-dimensional subspace. Two disjoint samples are drawn: the *alignment* inputs
with targets y_a = tanh(a·z) (the behaviour alignment installs) and the *fine-tune* inputs with targets
y_f = sin(b·z) + ½ (c·z) (a different, benign task). Everything is a function of ``seed`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from testbed.errors import ConfigError, positive_int, seed_value

DTYPE = torch.float64


@dataclass(frozen=True)
class ToyTasks:
    """Tensors of the two tasks (float64): inputs [N, D], targets [N], and probe inputs [B, D]."""

    x_align: Tensor
    y_align: Tensor
    x_finetune: Tensor
    y_finetune: Tensor
    probe: Tensor


def manifold_points(latent: Tensor, frame: Tensor, curvature: float) -> Tensor:
    """Embed latents [N, m] with the frame [D, 2m]: x = Q1 z + κ Q2 (z² − 1)/√2, shape [N, D]."""
    m = latent.shape[1]
    return latent @ frame[:, :m].T + curvature * ((latent**2 - 1.0) / 2**0.5) @ frame[:, m:].T


@dataclass(frozen=True)
class TaskSettings:
    """The manifold and the two tasks of the neural toy.

    Args:
        ambient_dim: input dimension D (>= 2 · manifold_dim).
        manifold_dim: latent dimension m (>= 1).
        curvature: κ, how far the manifold bends out of its tangent plane.
        n_align: number of alignment examples.
        n_finetune: number of fine-tune examples.
        probe_size: number of probe inputs.
        seed: the only source of randomness.
    """

    ambient_dim: int = 8
    manifold_dim: int = 2
    curvature: float = 0.5
    n_align: int = 8
    n_finetune: int = 32
    probe_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("manifold_dim", "n_align", "n_finetune", "probe_size"):
            positive_int(name, getattr(self, name))
        if positive_int("ambient_dim", self.ambient_dim) < 2 * self.manifold_dim:
            raise ConfigError(
                f"need ambient_dim >= 2*manifold_dim, got m={self.manifold_dim}, D={self.ambient_dim}"
            )
        seed_value("seed", self.seed)
        if not math.isfinite(self.curvature):
            raise ConfigError(f"curvature must be finite, got {self.curvature}")


def make_tasks(settings: TaskSettings | None = None) -> ToyTasks:
    """Draw both tasks and the probe inputs on one manifold, as ``settings`` (default ``TaskSettings()``) say."""
    s = settings or TaskSettings()
    gen = torch.Generator().manual_seed(s.seed)
    frame, _ = torch.linalg.qr(torch.randn(s.ambient_dim, 2 * s.manifold_dim, generator=gen, dtype=DTYPE))
    a, b, c = (torch.randn(s.manifold_dim, generator=gen, dtype=DTYPE) for _ in range(3))
    z_align, z_ft, z_probe = (
        torch.randn(n, s.manifold_dim, generator=gen, dtype=DTYPE) for n in (s.n_align, s.n_finetune, s.probe_size)
    )
    return ToyTasks(
        x_align=manifold_points(z_align, frame, s.curvature),
        y_align=torch.tanh(z_align @ a),
        x_finetune=manifold_points(z_ft, frame, s.curvature),
        y_finetune=torch.sin(z_ft @ b) + 0.5 * (z_ft @ c),
        probe=manifold_points(z_probe, frame, s.curvature),
    )


__all__ = [
    "DTYPE",
    "ToyTasks",
    "TaskSettings",
    "manifold_points",
    "make_tasks",
]
