"""The curvature-aware blocker: remove from every parameter update its component in the alignment subspace S.

With S = span(V) estimated at θ* (orthonormal rows V [d, P], ``SubspaceCallback``), each optimizer step's update Δθ
is replaced by Δθ − Vᵀ V Δθ: the weights are snapshotted in a step pre-hook of every optimizer and corrected in the
post-hook, so the motion in S is zero whatever the optimizer (Adam included, where projecting the gradient would not
do it), and ‖P_S δ‖ stays at round-off. Its control is the same blocker on a seeded random d-dimensional subspace
(``subspace: {method: random, d: <the same d>, seed: ...}``).

One-sided (estimated S only): only the components a_i = v_iᵀΔθ that raise the safety loss's quadratic model on S,
u* + Σ_i (b_i c_i + ½ λ_i c_i²) with c = V δ and b = V ∇u(θ*), are removed: a_i is removed when
(b_i + λ_i c_i) a_i + ½ λ_i a_i² > 0, and kept when it lowers the model (exact per coordinate: the model is separable
in the eigenbasis). Under DDP every process holds the same S and the same update, so all apply the same projection.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from testbed.curvature.estimate import SubspaceSettings
from testbed.errors import ConfigError
from testbed.interventions.flat import flatten, unflatten
from testbed.interventions.subspace_base import SubspaceCallback
from testbed.protocol import TestbedModule
from testbed.step_log import log_at_step, logging_due
from testbed.tags import CURVATURE, tag

__all__ = ["SubspaceBlocker"]


class SubspaceBlocker(SubspaceCallback):
    """Project each parameter update out of span(S) (Adam-correct); ``method: random`` for the control.

    Args:
        subspace: how S is estimated (``SubspaceSettings``); ``method: random`` gives the random-subspace control.
        one_sided: remove only the update components in S that raise the safety loss's quadratic model on S.
    """

    def __init__(self, subspace: SubspaceSettings | None = None, one_sided: bool = False) -> None:
        super().__init__(subspace)
        if one_sided and self.settings.method == "random":
            raise ConfigError("one-sided blocking needs the safety loss's curvature on S: use it with method fisher or "
                              "hessian (the random control is two-sided)")
        self.one_sided = bool(one_sided)
        self.slope_at_start: Tensor | None = None  # b = V ∇u(θ*) [d]
        self._handles: list[Any] = []
        self._snapshot: Tensor | None = None
        self._module: TestbedModule | None = None
        self._logs: dict[str, Tensor] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._module = pl_module
        if self.one_sided and self.slope_at_start is None:
            self.slope_at_start = self.subspace.coords(self.safety_gradient(pl_module), self.partition)
        self._unhook()
        self._handles = [handle for opt in trainer.optimizers
                         for handle in (opt.register_step_pre_hook(self._pre_step),
                                        opt.register_step_post_hook(self._post_step))]  # fmt: skip

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._snapshot = self.flat_params(self._module)

    def removed_coords(self, theta_old: Tensor, coords: Tensor) -> Tensor:
        """The coordinates in S (of the update's a = V Δθ) to remove; all of them unless one-sided."""
        if not self.one_sided:
            return coords
        s = self.subspace
        lam = s.eigenvalues.to(coords.dtype)
        c = s.coords(theta_old - self.theta_star, self.partition)
        change = (self.slope_at_start.to(coords.dtype) + lam * c) * coords + 0.5 * lam * coords**2
        return torch.where(change > 0, coords, torch.zeros_like(coords))

    @torch.no_grad()
    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._snapshot is None:
            return
        params: list[nn.Parameter] = self.params(self._module)
        delta = flatten(params, params, self._snapshot.dtype).sub_(self._snapshot)  # Δθ [P]
        coords = self.subspace.coords(delta, self.partition)
        removed = self.removed_coords(self._snapshot, coords) @ self.subspace.basis.to(delta.dtype)
        for p, part in zip(params, unflatten(removed, params), strict=True):
            p.sub_(part.to(p.dtype))
        self._snapshot = None
        size, total = self.partition.norm(removed), self.partition.norm(delta).clamp_min(1e-30)
        self._logs = {tag(CURVATURE, "update_removed_norm"): size, tag(CURVATURE, "update_removed_frac"): size / total}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._logs and logging_due(trainer):
            log_at_step(trainer, self._logs)
        self._logs = {}

    def _unhook(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unhook()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._unhook()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if state and self.slope_at_start is not None:
            state["slope_at_start"] = self.slope_at_start.detach().cpu()
        return state

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        super().restore(state, device)
        slope = state.get("slope_at_start")
        self.slope_at_start = None if slope is None else slope.to(device)
