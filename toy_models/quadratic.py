"""A quadratic landscape with exact control over the Alignment Instability Condition (AIC).

Parameters θ ∈ Rᵈ start at the aligned minimum θ0 = 0. In a random orthonormal basis R = [U | V] (U spans the
alignment subspace S, rank k; V its complement):

- alignment loss   A(θ) = ½ λ ‖Uᵀθ‖²                         (sharpness λ on S, flat elsewhere)
- fine-tune loss   F(θ) = g0·θ + ½ θᵀHθ,   H = R [[D_S, c·C], [c·Cᵀ, D_⊥]] Rᵀ

D_S, D_⊥ are diagonal with eigenvalues log-spaced over ``ft_spectrum``; C is a fixed random k×(d−k) block with
spectral norm 1, so ``coupling`` c is the size of the curvature coupling between S and its complement; g0 has norm
``grad_norm`` and a fraction ε = ``orthogonality_violation`` (the sine of its angle to the complement) inside S.
The trainer minimises F with plain SGD on a constant batch, i.e. exact gradient descent δ_{n+1} = δ_n − η(g0 + Hδ_n).

*Safety set, through the probe protocol.* ``QuadraticData.safety_batch()`` gives N ≥ d vectors w_j forming a tight
frame, (1/N) Σ_j w_j w_jᵀ = I. The per-example safety score is s_j(θ) = √λ w_jᵀ U Uᵀ θ and the safety loss
ℓ_j = ½ s_j², so the safety loss u = mean_j ℓ_j equals A exactly and the Fisher of the scores,
(1/N) Σ_j ∇s_j ∇s_jᵀ = λ U Uᵀ, has S as its top-k eigenspace with eigenvalue λ: the shared curvature layer
(``testbed.interventions.CurvatureMonitor``) measures A, S, λ and the quartic fit from the model, and ``U`` and
``sharpness`` are the exact answers to check it against.

AIC regimes: ε = 0 and c ≠ 0 → A ∝ t⁴ with coefficient ∝ λc²; ε > 0 → A ∝ t²; c = 0 and ε = 0 → A stays 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from testbed.errors import ConfigError, seed_value
from testbed.protocol import HookPoint, TestbedDataModule, TestbedModule
from testbed.step_log import log_at_step
from testbed.tags import TASK_TRAIN, TASK_VAL, THEORY, tag
from theory.aic import AICReport, check_aic
from theory.quartic import leading_coefficient

DTYPE = torch.float64


def _orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random d×d orthogonal matrix (QR of a Gaussian, signs fixed so it is unique)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))[None, :]


def build_landscape(
    dim: int,
    rank: int,
    coupling: float,
    orthogonality_violation: float,
    ft_spectrum: tuple[float, float],
    grad_norm: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic (U [d, k], H [d, d], g0 [d]) for the given knobs; see the module docstring."""
    rng = np.random.default_rng(seed)
    rot = _orthogonal(dim, rng)
    lo, hi = ft_spectrum
    d_s = np.geomspace(lo, hi, rank) if rank > 1 else np.array([np.sqrt(lo * hi)])
    d_perp = np.geomspace(lo, hi, dim - rank) if dim - rank > 1 else np.array([np.sqrt(lo * hi)])
    block = rng.standard_normal((rank, dim - rank))
    block /= np.linalg.norm(block, 2)
    inner = np.zeros((dim, dim))
    inner[:rank, :rank] = np.diag(d_s)
    inner[rank:, rank:] = np.diag(d_perp)
    inner[:rank, rank:] = coupling * block
    inner[rank:, :rank] = coupling * block.T
    H = rot @ inner @ rot.T
    H = 0.5 * (H + H.T)
    g_perp = rng.standard_normal(dim - rank)
    g_in = rng.standard_normal(rank)
    eps = orthogonality_violation
    g_in, g_perp = g_in / np.linalg.norm(g_in), g_perp / np.linalg.norm(g_perp)
    coords = np.concatenate([eps * g_in, np.sqrt(1.0 - eps**2) * g_perp])
    return rot[:, :rank], H, grad_norm * (rot @ coords)


class QuadraticToy(TestbedModule):
    """Quadratic fine-tune landscape with a sharp low-rank alignment subspace (knobs for every AIC condition).

    Args:
        dim: parameter dimension d.
        rank: rank k of the alignment subspace S (1 <= k < d).
        sharpness: alignment curvature λ on S (> 0).
        coupling: coupling strength c of the fine-tune Hessian block between S and its complement (>= 0).
        orthogonality_violation: ε in [0, 1], the fraction of the initial fine-tune gradient g0 inside S.
        ft_spectrum: [low, high] eigenvalue range of the fine-tune Hessian's diagonal blocks (0 < low <= high).
        grad_norm: ‖g0‖ (> 0).
        lr: step size η of gradient descent (> 0 and η·max|eig H| < 2 so GD is stable).
        landscape_seed: seed of the random basis, coupling block and g0 (independent of ``seed_everything``).
        init_from: optional weights to start from; the exact AIC check assumes the start θ0 = 0.
    """

    def __init__(
        self,
        dim: int = 32,
        rank: int = 4,
        sharpness: float = 10.0,
        coupling: float = 0.5,
        orthogonality_violation: float = 0.0,
        ft_spectrum: tuple[float, float] = (0.5, 2.0),
        grad_norm: float = 1.0,
        lr: float = 1e-3,
        landscape_seed: int = 0,
        init_from: str | None = None,
    ) -> None:
        super().__init__(init_from)
        _check_knobs(dim, rank, sharpness, coupling, orthogonality_violation, ft_spectrum, grad_norm, lr)
        seed_value("landscape_seed", landscape_seed)
        self.save_hyperparameters()
        U, H, g0 = build_landscape(
            dim, rank, coupling, orthogonality_violation, tuple(ft_spectrum), grad_norm, landscape_seed
        )
        top = float(np.max(np.abs(np.linalg.eigvalsh(H))))
        if lr * top >= 2.0:
            raise ConfigError(
                f"lr={lr:g} is too large: lr * max|eig(H)| = {lr * top:.3g} >= 2, gradient descent diverges"
            )
        self.dim, self.rank, self.sharpness, self.lr = dim, rank, float(sharpness), float(lr)
        self.aic: AICReport | None = None
        self.register_buffer("U", torch.tensor(U, dtype=DTYPE), persistent=False)
        self.register_buffer("H", torch.tensor(H, dtype=DTYPE), persistent=False)
        self.register_buffer("g0", torch.tensor(g0, dtype=DTYPE), persistent=False)
        self.theta = nn.Parameter(torch.zeros(dim, dtype=DTYPE))
        # Probe layers: the parameter vector itself, and a per-input linear read-out x ⊙ θ.
        self.blocks = nn.ModuleList([nn.ModuleDict({"theta": HookPoint(), "readout": HookPoint()})])

    # ---- losses -----------------------------------------------------------------------------------
    def finetune_loss(self, theta: Tensor | None = None) -> Tensor:
        """F(θ) = g0·θ + ½ θᵀHθ."""
        theta = self.theta if theta is None else theta
        return self.g0 @ theta + 0.5 * theta @ (self.H @ theta)

    def alignment_loss(self, theta: Tensor | None = None) -> Tensor:
        """A(θ) = ½ λ ‖Uᵀθ‖²."""
        theta = self.theta if theta is None else theta
        coords = self.U.T @ theta
        return 0.5 * self.sharpness * coords @ coords

    # ---- the curvature account's protocol: safety examples w_j (a tight frame), s_j = √λ w_jᵀ U Uᵀ θ ---------------
    def fisher_scores(self, batch: Tensor) -> Tensor:
        """s_j = √λ w_jᵀ P_S θ for the frame vectors ``batch`` [N, d] (gradients √λ P_S w_j: Fisher λ U Uᵀ)."""
        w = batch.to(DTYPE)
        return math.sqrt(self.sharpness) * (w @ self.U) @ (self.U.T @ self.theta)

    def safety_losses(self, batch: Tensor) -> Tensor:
        """ℓ_j = ½ s_j²; their mean is A(θ) exactly when the frame is tight."""
        return 0.5 * self.fisher_scores(batch) ** 2

    def task_loss(self, batch: object) -> Tensor:
        """F(θ) (the batch carries no data)."""
        return self.finetune_loss()

    # ---- probe protocol ---------------------------------------------------------------------------
    def forward_probe(self, batch: Tensor) -> Tensor:
        """``batch`` [B, d] probe inputs: the stream is θ (broadcast to [B, d]) and then the read-out x ⊙ θ."""
        x = batch.to(DTYPE)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ConfigError(f"probe batch must have shape [B, {self.dim}], got {list(x.shape)}")
        state = self.blocks[0]["theta"](self.theta.expand(x.shape[0], -1))
        return self.blocks[0]["readout"](x * state)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_dim = getattr(data, "dim", self.dim)
        if data_dim != self.dim:
            raise ConfigError(f"data.init_args.dim={data_dim} differs from model.init_args.dim={self.dim}")

    # ---- training ---------------------------------------------------------------------------------
    def training_step(self, batch: object, batch_idx: int) -> Tensor:
        loss = self.finetune_loss()
        self.log(tag(TASK_TRAIN, "loss"), loss, on_step=True, on_epoch=False, batch_size=1)
        return loss

    def validation_step(self, batch: object, batch_idx: int) -> None:
        self._log_eval(TASK_VAL)

    def test_step(self, batch: object, batch_idx: int) -> None:
        self._log_eval("test")

    def _log_eval(self, group: str) -> None:
        values = {tag(group, "ft_loss"): self.finetune_loss(), tag(group, "align_loss"): self.alignment_loss()}
        self.log_held_out(values, batch_size=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def on_fit_start(self) -> None:
        lam, U, H, g0 = self.sharpness, self.U.numpy(), self.H.numpy(), self.g0.numpy()
        self.aic = check_aic(lam, U, H, g0, eta=self.lr)
        constants = {tag(THEORY, "c4"): leading_coefficient(lam, U, H, g0)}
        if self.aic.exponent is not None:
            constants[tag(THEORY, "exponent")] = float(self.aic.exponent)
        log_at_step(self.trainer, constants, step=0)  # constant theory numbers
        if self.trainer.is_global_zero:
            held = ", ".join(f"{name}={'yes' if ok else 'no'}" for name, ok in self.aic.conditions.items())
            exponent = "none (A ≡ 0)" if self.aic.exponent is None else self.aic.exponent
            print(f"QuadraticToy: AIC conditions {held}; theory's leading exponent {exponent}", flush=True)


def _check_knobs(
    dim: int,
    rank: int,
    sharpness: float,
    coupling: float,
    violation: float,
    ft_spectrum: tuple[float, float],
    grad_norm: float,
    lr: float,
) -> None:
    """Raise one ConfigError naming the first impossible knob."""
    if dim < 2:
        raise ConfigError(f"dim must be >= 2, got dim={dim}")
    if not 1 <= rank < dim:
        raise ConfigError(f"rank k must satisfy 1 <= k < dim (S must leave a complement), got k={rank}, dim={dim}")
    if not sharpness > 0:
        raise ConfigError(f"sharpness must be positive (it is the alignment curvature λ on S), got {sharpness}")
    if coupling < 0:
        raise ConfigError(f"coupling must be >= 0, got {coupling}")
    if not 0.0 <= violation <= 1.0:
        raise ConfigError(f"orthogonality_violation must lie in [0, 1] (a fraction of g0), got {violation}")
    if len(ft_spectrum) != 2 or not 0 < ft_spectrum[0] <= ft_spectrum[1]:
        raise ConfigError(f"ft_spectrum must be [low, high] with 0 < low <= high, got {list(ft_spectrum)}")
    if not grad_norm > 0:
        raise ConfigError(f"grad_norm must be positive, got {grad_norm}")
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr}")


class QuadraticData(TestbedDataModule):
    """Trivial data for the quadratic toy: a constant batch per step, fixed Gaussian probe inputs, and the safety set.

    Args:
        dim: width of the probe inputs (must equal the model's ``dim``).
        probe_size: number of probe inputs.
        probe_seed: seed of the probe inputs (and of the safety frame).
        epoch_length: steps per epoch (the batch carries no data; a long epoch avoids per-epoch overhead).
        safety_size: N, the number of safety examples: a tight frame of N >= dim vectors (see the module docstring).
    """

    def __init__(self, dim: int = 32, probe_size: int = 8, probe_seed: int = 0, epoch_length: int = 10_000,
                 safety_size: int = 64) -> None:  # fmt: skip
        super().__init__()
        if dim < 2 or probe_size < 1 or epoch_length < 1:
            raise ConfigError(
                f"QuadraticData needs dim >= 2, probe_size >= 1, epoch_length >= 1 (got {dim}, "
                f"{probe_size}, {epoch_length})"
            )
        if safety_size < dim:
            raise ConfigError(f"safety_size={safety_size} must be >= dim={dim} (the safety vectors form a tight frame)")
        self.dim, self.probe_size, self.epoch_length = dim, probe_size, epoch_length
        self.probe_seed = seed_value("probe_seed", probe_seed)
        self.safety_size = safety_size

    def _loader(self, length: int) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(length, 1)), batch_size=1)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.epoch_length)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(1)

    def probe_batch(self) -> Tensor:
        gen = torch.Generator().manual_seed(self.probe_seed)
        return torch.randn(self.probe_size, self.dim, generator=gen, dtype=DTYPE)

    def safety_batch(self) -> Tensor:
        """N frame vectors w_j [N, dim]: √N times ``dim`` orthonormal columns, so (1/N) Σ_j w_j w_jᵀ = I."""
        gen = torch.Generator().manual_seed(self.probe_seed + 1)
        q, _ = torch.linalg.qr(torch.randn(self.safety_size, self.dim, generator=gen, dtype=DTYPE))
        return math.sqrt(self.safety_size) * q


__all__ = [
    "DTYPE",
    "build_landscape",
    "QuadraticToy",
    "QuadraticData",
]
