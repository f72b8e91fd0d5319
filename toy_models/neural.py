"""The neural toy: the quartic law beyond the quadratic case, with every AIC quantity measured from the model.

A tanh MLP f(x; θ) → R (float64) sees inputs on a curved low-dimensional manifold (:mod:`toy_models.data`).

1. **Alignment.** θ0 is fitted to the alignment task, A(θ) = ½ mean_a (f(x_a; θ) − y_a)², by damped Gauss–Newton
   steps until the residual is at round-off (an interpolating minimum), unless ``init_from`` supplies θ0.
2. **Measured AIC quantities**, by the shared curvature layer (``testbed.interventions.CurvatureMonitor``): the safety
   set is the alignment task (``NeuralToyData.safety_batch``), the per-example safety loss ½(f(x_a) − y_a)² and the
   Fisher scores f(x_a) (the Gauss–Newton matrix, which at an interpolating minimum is the alignment Hessian), so S
   and λ are the Fisher's top eigenpairs (Gram trick) or the Hessian's (Lanczos); g0 = ∇F(θ0) and H g0 come from
   the first training batch (the whole fine-tune task).
3. **Fine-tune.** F(θ) = ½ mean_f (f(x_f; θ) − y_f)², minimised by full-batch SGD (exact GD) with step η.

*Benign task design.* At an interpolating minimum S is (numerically) the span of the alignment outputs' gradients,
so g0 ⊥ S exactly when the fine-tune residual r_f lies in the null space of the cross kernel K = J_a J_fᵀ. The
fine-tune targets are the raw task's targets with the part of the residual that would move the alignment outputs at
first order removed: r_f = r_null + ε (r_raw − r_null), with ε = ``orthogonality_violation``.

*Where it departs from the quadratic case.* (a) A is not quadratic in θ: along the fine-tune direction the alignment
outputs curve, f_a(θ0 + δ) ≈ J_a δ + ½ ∇²f_a[δ, δ], and with δ ≈ −tg0 the second term is also O(t²), so it changes the
t⁴ coefficient (:meth:`NeuralToy.output_curvature_coefficient` is the leading coefficient with this term). (b) The
fine-tune Hessian drifts as θ moves (higher orders in t). (c) λ, S are estimates, and with ε > 0 the t² term dominates.
:meth:`NeuralToy.quadratic_model_run` separates (a) from (b) by running GD on the quadratic model of F.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp
from torch.utils.data import DataLoader, Dataset

from testbed.curvature.hvp import Operator, flat_hvp
from testbed.errors import ConfigError, positive_int, seed_value
from testbed.protocol import HookPoint, TestbedDataModule, TestbedModule
from testbed.tags import TASK_TRAIN, TASK_VAL, tag
from toy_models.data import DTYPE, TaskSettings, ToyTasks, make_tasks


class FlatMLP(nn.Module):
    """tanh MLP D → width ×depth → 1 in float64, with functional access through one flat parameter vector.

    Hook points: ``blocks.{i}.hidden`` after each hidden layer's tanh, ``blocks.{depth}.out`` on the output.
    """

    def __init__(self, in_dim: int, width: int, depth: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        dims = [in_dim] + [width] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b, dtype=DTYPE) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.acts = nn.ModuleList(nn.Tanh() for _ in range(depth))
        self.head = nn.Linear(width, 1, dtype=DTYPE)
        self.blocks = nn.ModuleList(
            [nn.ModuleDict({"hidden": HookPoint()}) for _ in range(depth)] + [nn.ModuleDict({"out": HookPoint()})]
        )
        with torch.no_grad():  # initialise from the model seed only (independent of the global RNG)
            for lin in [*self.hidden, self.head]:
                bound = 1.0 / math.sqrt(lin.in_features)
                lin.weight.copy_((torch.rand(lin.weight.shape, generator=gen, dtype=DTYPE) * 2 - 1) * bound)
                lin.bias.copy_((torch.rand(lin.bias.shape, generator=gen, dtype=DTYPE) * 2 - 1) * bound)
        self.names = [n for n, _ in self.named_parameters()]
        self.shapes = [p.shape for _, p in self.named_parameters()]

    def forward(self, x: Tensor) -> Tensor:
        for i, (lin, act) in enumerate(zip(self.hidden, self.acts, strict=True)):
            x = self.blocks[i]["hidden"](act(lin(x)))
        return self.blocks[-1]["out"](self.head(x)).squeeze(-1)

    def flat(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.parameters()])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        sizes = [math.prod(s) for s in self.shapes]
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(flat, sizes), self.shapes, strict=True)}

    def load_flat(self, flat: Tensor) -> None:
        with torch.no_grad():
            for p, t in zip(self.parameters(), self.unflatten(flat).values(), strict=True):
                p.copy_(t)

    def call(self, flat: Tensor, x: Tensor) -> Tensor:
        """f(x; θ) for a flat θ (differentiable in θ through torch.func)."""
        return functional_call(self, self.unflatten(flat), (x,))


def mse(net: FlatMLP, flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """½ mean (f(x; θ) − y)²."""
    return 0.5 * torch.mean((net.call(flat, x) - y) ** 2)


def hvp_operator(net: FlatMLP, at: Tensor, x: Tensor, y: Tensor) -> Operator:
    """v -> ∇²L(at) v for L = ½ mean (f − y)², by forward-over-reverse differentiation."""
    return flat_hvp(lambda t: mse(net, t, x, y), at)


def fit_to_minimum(net: FlatMLP, x: Tensor, y: Tensor, iters: int, damping: float = 1e-8) -> float:
    """Damped Gauss–Newton on ½ mean (f − y)² from the current weights; returns the final alignment loss.

    With more parameters than examples the minimum interpolates, and GN converges quadratically to round-off.
    """
    theta = net.flat()
    for _ in range(iters):
        residual = net.call(theta, x) - y
        if float(residual.abs().max()) < 1e-15:  # converged to round-off
            break
        jac = torch.func.jacrev(lambda t: net.call(t, x))(theta)  # [N, P]
        gram = jac @ jac.T
        step = jac.T @ torch.linalg.solve(gram + damping * torch.eye(len(y), dtype=DTYPE), residual)
        theta = theta - step
    net.load_flat(theta)
    return float(mse(net, theta, x, y))


class NeuralToy(TestbedModule):
    """tanh MLP aligned on one task and fine-tuned on another; the AIC quantities are measured, not set.

    Args:
        width: hidden width.
        depth: number of hidden layers.
        lr: step size η of full-batch gradient descent on the fine-tune task.
        orthogonality_violation: ε in [0, 1]: 0 keeps only the fine-tune residual that leaves the alignment outputs
            unchanged at first order (g0 ⊥ S); 1 is the raw task.
        model_seed: seed of the initial weights (before alignment).
        align_iters: Gauss–Newton iterations of the alignment fit.
        init_from: optional weights to use as θ0 instead of the built-in alignment fit (theory assumes they sit at
            an alignment minimum; from elsewhere the alignment loss has a linear term and the t² law appears).
    """

    layer_root = "net"

    def __init__(
        self,
        width: int = 16,
        depth: int = 2,
        lr: float = 0.002,
        orthogonality_violation: float = 0.0,
        model_seed: int = 0,
        align_iters: int = 30,
        init_from: str | None = None,
    ) -> None:
        super().__init__(init_from)
        if width < 1 or depth < 1:
            raise ConfigError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        if not lr > 0:
            raise ConfigError(f"lr must be positive, got {lr}")
        if not 0.0 <= orthogonality_violation <= 1.0:
            raise ConfigError(f"orthogonality_violation must lie in [0, 1], got {orthogonality_violation}")
        self.save_hyperparameters()
        self.width, self.depth, self.lr = width, depth, float(lr)
        self.violation, self.align_iters = float(orthogonality_violation), align_iters
        self.model_seed = seed_value("model_seed", model_seed)
        self.net: FlatMLP | None = None
        self.tasks: ToyTasks | None = None

    # ---- construction (needs the data, so it happens in configure_model/setup) --------------------
    def _data(self) -> NeuralToyData:
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if not isinstance(data, NeuralToyData):
            raise ConfigError("NeuralToy needs data: toy_models.neural.NeuralToyData")
        return data

    def configure_model(self) -> None:
        if self.net is None:
            self._build(self._data())

    def _build(self, data: NeuralToyData) -> None:
        self.net = FlatMLP(data.settings.ambient_dim, self.width, self.depth, self.model_seed)

    def setup(self, stage: str) -> None:
        self.prepare(self._data())

    def prepare(self, data: NeuralToyData) -> None:
        """Build the net, reach θ0 (alignment fit, or ``init_from``) and fix the fine-tune targets; idempotent."""
        if self.net is None:
            self._build(data)
        self.tasks = data.tasks()
        if self.init_from is not None:
            self.load_initial_weights()
        elif not self._initial_weights_loaded:
            fit_to_minimum(self.net, self.tasks.x_align, self.tasks.y_align, self.align_iters)
            self._initial_weights_loaded = True  # θ0 is fixed once per run
        self.register_buffer("theta0", self.net.flat().clone(), persistent=False)
        self.register_buffer(
            "align0", mse(self.net, self.theta0, self.tasks.x_align, self.tasks.y_align), persistent=False
        )
        self.register_buffer("ft_targets", self._benign_targets(), persistent=False)

    def _benign_targets(self) -> Tensor:
        """y_f = f(x_f; θ0) − r_f with r_f = r_null + ε (r_raw − r_null), r_null ⊥ rows of K = J_a J_fᵀ."""
        t = self.tasks
        jac_a = torch.func.jacrev(lambda p: self.net.call(p, t.x_align))(self.theta0)
        jac_f = torch.func.jacrev(lambda p: self.net.call(p, t.x_finetune))(self.theta0)
        out_f = self.net.call(self.theta0, t.x_finetune).detach()
        r_raw = out_f - t.y_finetune
        kernel = jac_a @ jac_f.T  # [Na, Nf]
        r_null = r_raw - torch.linalg.pinv(kernel) @ (kernel @ r_raw)
        return out_f - (r_null + self.violation * (r_raw - r_null))

    # ---- probe protocol: layer names are the hook points of ``self.net`` -----------------------------------
    def forward_probe(self, batch: Tensor) -> Tensor:
        return self.net(batch.to(DTYPE))

    # ---- losses and steps -------------------------------------------------------------------------
    def finetune_loss(self, index: Tensor | None = None) -> Tensor:
        x, y = self.tasks.x_finetune, self.ft_targets
        if index is not None:
            x, y = x[index], y[index]
        return 0.5 * torch.mean((self.net(x) - y) ** 2)

    def alignment_excess(self) -> Tensor:
        """A(θ) − A(θ0) on the alignment task."""
        return 0.5 * torch.mean((self.net(self.tasks.x_align) - self.tasks.y_align) ** 2) - self.align0

    # ---- the curvature account's protocol: the alignment task is the safety set ----------------------------------
    def fisher_scores(self, batch: dict[str, Tensor]) -> Tensor:
        """f(x_a; θ): the Fisher of a unit-variance Gaussian likelihood (Gauss–Newton) on the alignment task."""
        return self.net(batch["x"].to(DTYPE))

    def safety_losses(self, batch: dict[str, Tensor]) -> Tensor:
        """½ (f(x_a; θ) − y_a)² per alignment example (their mean is A(θ))."""
        return 0.5 * (self.fisher_scores(batch) - batch["y"].to(DTYPE)) ** 2

    def task_loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self.finetune_loss(batch["index"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.finetune_loss(batch["index"])
        self.log(tag(TASK_TRAIN, "loss"), loss, on_step=True, on_epoch=False, batch_size=1)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._log_eval(TASK_VAL)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._log_eval("test")

    def _log_eval(self, group: str) -> None:
        values = {tag(group, "ft_loss"): self.finetune_loss(), tag(group, "align_loss"): self.alignment_excess()}
        self.log_held_out(values, batch_size=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net.parameters(), lr=self.lr)

    # ---- analysis at θ0 (for experiments.neural_toy.decompose) ------------------------------------------------------
    def finetune_gradient(self) -> Tensor:
        """g0 = ∇F(θ0) [P] (the whole fine-tune task)."""
        t = self.tasks
        return grad(lambda p: mse(self.net, p, t.x_finetune, self.ft_targets))(self.theta0)

    def finetune_hvp(self) -> Operator:
        """v -> H v with H = ∇²F(θ0)."""
        return hvp_operator(self.net, self.theta0, self.tasks.x_finetune, self.ft_targets)

    def output_curvature_coefficient(self) -> float:
        """The t⁴ coefficient of A including the alignment outputs' curvature ½∇²f_a[g0, g0] (module docstring).

        f_a(θ0 − s g0 + ½ s² H g0) = f_a(θ0) + ½ s² (J_a H g0 + ∇²f_a[g0, g0]) + O(s³).
        """
        net, theta0, x = self.net, self.theta0, self.tasks.x_align
        g0 = self.finetune_gradient()
        one, zero = torch.ones((), dtype=DTYPE), torch.zeros((), dtype=DTYPE)

        def along(s: Tensor) -> Tensor:
            return net.call(theta0 - s * g0, x)

        curv = jvp(lambda s: jvp(along, (s,), (one,))[1], (zero,), (one,))[1]
        lin = jvp(lambda p: net.call(p, x), (theta0,), (self.finetune_hvp()(g0),))[1]
        return float(0.5 * torch.mean((0.5 * (lin + curv)) ** 2))

    def quadratic_model_run(self, basis: Tensor, lam: Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """GD on the quadratic model of F at θ0 (δ_{n+1} = δ_n − η(g0 + Hδ_n), H by HVPs), for steps 0..``steps``.

        Args:
            basis: orthonormal rows [k, P] spanning S.
            lam: the eigenvalues [k] on S.
            steps: number of steps.

        Returns (quadratic-model alignment loss ½ Σ λ_i (v_iᵀδ_n)², true alignment excess A(θ0 + δ_n) − A(θ0)):
        the first is what theory's series approximates; the second isolates the non-quadratic alignment loss,
        and its gap to the measured run is the drift of the fine-tune Hessian along the real trajectory.
        """
        t, ft_hvp, g0 = self.tasks, self.finetune_hvp(), self.finetune_gradient()
        basis, lam = basis.to(DTYPE), lam.to(DTYPE)
        delta = torch.zeros_like(g0)
        quad, true = [0.0], [0.0]
        with torch.no_grad():
            for _ in range(steps):
                delta = delta - self.lr * (g0 + ft_hvp(delta))
                coords = basis @ delta
                quad.append(float(0.5 * torch.sum(lam * coords**2)))
                true.append(float(mse(self.net, self.theta0 + delta, t.x_align, t.y_align) - self.align0))
        return np.array(quad), np.array(true)


class _FullBatch(Dataset):
    """Every item is the index set of the whole fine-tune task (full-batch gradient descent)."""

    def __init__(self, n: int, length: int) -> None:
        self.index, self.length = torch.arange(n), length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"index": self.index}


class NeuralToyData(TestbedDataModule):
    """Synthetic manifold data for :class:`NeuralToy` (see :mod:`toy_models.data`).

    Args:
        tasks: the manifold and the two tasks (``TaskSettings``).
        epoch_length: steps per epoch.
    """

    def __init__(self, tasks: TaskSettings | None = None, epoch_length: int = 10_000) -> None:
        super().__init__()
        self.settings = tasks or TaskSettings()
        self.epoch_length = positive_int("epoch_length", epoch_length)
        self._tasks = make_tasks(self.settings)  # built now so a bad config fails before training

    def tasks(self) -> ToyTasks:
        return self._tasks

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_FullBatch(self.settings.n_finetune, self.epoch_length), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_FullBatch(self.settings.n_finetune, 1), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def probe_batch(self) -> Tensor:
        return self.tasks().probe

    def safety_batch(self) -> dict[str, Tensor]:
        """The alignment task {x [n_align, D], y [n_align]}: the safety set of the curvature account."""
        return {"x": self._tasks.x_align, "y": self._tasks.y_align}


__all__ = [
    "FlatMLP",
    "mse",
    "hvp_operator",
    "fit_to_minimum",
    "NeuralToy",
    "NeuralToyData",
]
