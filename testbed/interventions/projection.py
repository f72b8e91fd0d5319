"""Projection blockers: remove the first-order motion of the probe representations along v_rev.

With J_l = ∂<v_l, m_l(θ)>/∂θ over the trainable parameters (one vector-Jacobian product on the probe batch) and
{q_l} an orthonormal basis of {J_l}:

- ``UpdateProjectionBlocker``: after each optimizer step, Δθ ← Δθ − Σ_l (q_l·Δθ) q_l, with J taken at the pre-step
  weights, so the first-order change of <v_l, m_l> is zero whatever the optimizer (Adam included).
- ``GradientProjectionBlocker``: the same projection applied to the gradient before the step. Under plain SGD this
  blocks the first-order motion; under Adam/AdamW it does not (the moment estimates carry the removed component
  back), which is why it is kept as a named variant.

One-sided: only the components that move toward the witness (J_l·Δθ > 0, or J_l·g < 0 for a gradient step) are
removed, by a small active-set loop (exact for one layer or mutually orthogonal J's).

A J_l that is zero (the constraint degenerated: the probe representation no longer moves along v_l to first order)
leaves nothing to remove along that layer. The blocker then says so: a warning naming the layer and step (once per
layer) and the count ``intervention/jacobian_zero_layers`` logged with its other values, so an arm whose blocker
stopped acting is never mistaken for a blocked one.

Under FSDP2 the vectors hold each process's parameter slices: J is taken by an ordinary backward pass
(``testbed.sharding.backward_grads``) and inner products are summed across processes (``testbed.interventions.flat``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from testbed.errors import ConfigError, positive_int
from testbed.interventions.base import DirectionCallback, DirectionSource
from testbed.interventions.flat import (
    flat_matvec,
    flat_norm,
    flatten,
    orthonormal_rows,
    trainable_parameters,
    unflatten,
)
from testbed.probes import ProbeSet
from testbed.protocol import TestbedModule
from testbed.sharding import backward_grads, is_sharded, local
from testbed.step_log import log_at_step, logging_due
from testbed.strategies import FULL_PARAMETERS
from testbed.tags import INTERVENTION, tag

__all__ = ["ProjectionSettings", "UpdateProjectionBlocker", "GradientProjectionBlocker"]


@dataclass
class ProjectionSettings:
    """How a projection blocker takes and applies J.

    Args:
        one_sided: remove only motion toward the witness; motion away is kept.
        every_n_steps: recompute J every n steps (1 = every step; in between the last J is reused).
        jacobian_probe_size: take J on the first n probe inputs only (default: all). J costs one forward and
            backward pass on its probe batch, so this trades exactness on the full probe set for speed (the
            first-order change is zero on the subset; ``experiments/bench`` prints what leaks on the full set).
    """

    one_sided: bool = False
    every_n_steps: int = 1
    jacobian_probe_size: int | None = None

    def __post_init__(self) -> None:
        positive_int("every_n_steps", self.every_n_steps)
        positive_int("jacobian_probe_size", self.jacobian_probe_size, allow_none=True)


class _JacobianProjection(DirectionCallback):
    """J_l rows, their orthonormal basis and the (one- or two-sided) projection; the subclasses say when to apply it.

    Vectors over the parameters are kept in the parameters' working precision (float32 for float32/bf16 models):
    the projection itself costs a few vector passes per step.
    """

    def __init__(self, direction: DirectionSource, projection: ProjectionSettings | None = None) -> None:
        super().__init__(direction)
        self.settings = projection or ProjectionSettings()
        self.jacobian_probe: ProbeSet | None = None
        self.jacobians: Tensor | None = None  # [k, P] raw J_l rows
        self.basis: Tensor | None = None  # [k', P] orthonormal
        self._sharded = False  # J holds this process's parameter slices (FSDP2)
        self._logs: dict[str, Any] = {}
        self._zero_rows: Tensor | None = None  # [k] bool: J_l == 0 at the last refresh
        self._warned: set[str] = set()

    def refresh(self, module: TestbedModule, step: int) -> None:
        """Recompute J at the current weights when due (every ``every_n_steps`` steps, or when none is held)."""
        if self.basis is not None and step % self.settings.every_n_steps != 0:
            return
        params = trainable_parameters(module)
        self._sharded = is_sharded(params)
        if self._sharded:  # one forward and ordinary backward per layer (FSDP2 gathers and reduce-scatters)
            rows = [flatten(backward_grads(lambda k=layer: self.along(module, True, self.jacobian_probe)[k], params),
                            params) for layer in self.layers]  # fmt: skip
        else:
            along = self.along(module, grad=True, probe=self.jacobian_probe)
            rows = []
            for i, layer in enumerate(self.layers):
                grads = torch.autograd.grad(along[layer], params, retain_graph=i < len(self.layers) - 1,
                                            allow_unused=True)  # fmt: skip
                rows.append(flatten(grads, params))
        self.jacobians = torch.stack(rows)
        self.basis = orthonormal_rows(rows, over=params)
        # J_l == 0 (over all shards), kept as a tensor: read (one sync) only when logging
        self._zero_rows = torch.stack([flat_norm(row, params) for row in rows]) == 0

    def _zero_count(self) -> dict[str, Any]:
        zero = self._zero_rows
        return {} if zero is None else {tag(INTERVENTION, "jacobian_zero_layers"): zero.sum().float()}

    def _warn_degenerate(self, step: int) -> None:
        """Warn once per layer whose J was zero at the last refresh."""
        if self._zero_rows is None:
            return
        for layer, zero in zip(self.layers, self._zero_rows.tolist(), strict=True):
            if zero and layer not in self._warned:
                self._warned.add(layer)
                rank_zero_warn(f"{type(self).__name__}: the Jacobian of <v, m> for layer {layer!r} is zero at step "
                               f"{step} (the constraint degenerated): nothing is removed along it while it stays zero")

    def project(self, delta: Tensor, sign: float, over: Sequence[Tensor] = ()) -> tuple[Tensor, Tensor]:
        """(kept, removed) parts of ``delta``; removed lies in span{J_l} (one-sided: J_l with sign·J_l·delta > 0).

        ``over``: the parameters the vectors live over (their inner products are summed across shards).
        """
        if not self.settings.one_sided:
            removed = flat_matvec(self.basis, delta, over) @ self.basis
            return delta - removed, removed
        original = delta
        active = torch.zeros(self.jacobians.shape[0], dtype=torch.bool, device=delta.device)
        for _ in range(self.jacobians.shape[0]):
            scale = max(1.0, float(flat_norm(delta, over)))
            newly = (sign * flat_matvec(self.jacobians, delta, over) > 1e-12 * scale) & ~active
            if not bool(newly.any()):
                break
            active |= newly
            q = orthonormal_rows(self.jacobians[active], over=over)
            delta = original - flat_matvec(q, original, over) @ q
        return delta, original - delta

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        size = self.settings.jacobian_probe_size
        if size is not None:
            if size > self.probe.size:
                raise ConfigError(f"jacobian_probe_size={size} exceeds the probe set ({self.probe.size} inputs)")
            self.jacobian_probe = self.probe.head(size)
        if self.basis is not None:
            self.basis, self.jacobians = self.basis.to(pl_module.device), self.jacobians.to(pl_module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._logs and logging_due(trainer):
            log_at_step(trainer, self._logs)
            self._warn_degenerate(trainer.global_step)
        self._logs = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._warn_degenerate(trainer.global_step)  # also when logging was never due

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._sharded:  # one process's slices: a resumed run takes J afresh
            return {**state, "jacobians": None, "basis": None}
        state["jacobians"] = None if self.jacobians is None else self.jacobians.cpu()
        state["basis"] = None if self.basis is None else self.basis.cpu()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.jacobians, self.basis = state.get("jacobians"), state.get("basis")


class UpdateProjectionBlocker(_JacobianProjection):
    """Remove from each actual parameter update its first-order effect along v_rev (correct under Adam/AdamW too).

    The weights are snapshotted in a step pre-hook of every optimizer, J is taken there (at the pre-step weights),
    and in the step post-hook the update Δθ is replaced by its projection orthogonal to span{J_l}.

    Args:
        direction: the direction to block (``random: true`` for the random-direction control).
        projection: one-sided blocking and the cost knobs for J.
    """

    supported_strategies = FULL_PARAMETERS | {"fsdp2"}

    def __init__(self, direction: DirectionSource, projection: ProjectionSettings | None = None) -> None:
        super().__init__(direction, projection)
        self._handles: list[Any] = []
        self._snapshot: Tensor | None = None
        self._step_params: list[nn.Parameter] = []
        self._module: TestbedModule | None = None
        self._trainer: pl.Trainer | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._module, self._trainer = pl_module, trainer
        self._remove_hooks()
        for opt in trainer.optimizers:
            self._handles.append(opt.register_step_pre_hook(self._pre_step))
            self._handles.append(opt.register_step_post_hook(self._post_step))

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.refresh(self._module, self._trainer.global_step)
        self._step_params = trainable_parameters(self._module)
        self._snapshot = flatten(self._step_params, self._step_params)  # θ_old, flat (one copy)

    @torch.no_grad()
    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._snapshot is None:
            return
        params = self._step_params
        delta = flatten(params, params, self._snapshot.dtype).sub_(self._snapshot)  # Δθ [P]
        along_before = flat_matvec(self.jacobians, delta, params)
        _, removed = self.project(delta, sign=1.0, over=params)
        for p, part in zip(params, unflatten(removed, params), strict=True):
            local(p).sub_(part.to(p.dtype))  # θ ← θ_old + Δθ − removed
        self._snapshot = None
        removed_norm = flat_norm(removed, params)
        # kept as tensors (no device sync); written in on_train_batch_end when logging is due
        self._logs = {
            tag(INTERVENTION, "update_removed_norm"): removed_norm,
            tag(INTERVENTION, "update_removed_frac"): removed_norm / flat_norm(delta, params).clamp_min(1e-30),
            tag(INTERVENTION, "update_along_vrev_before"): along_before.sum(),
            **self._zero_count(),
        }

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._remove_hooks()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()


class GradientProjectionBlocker(_JacobianProjection):
    """Project the *gradient* orthogonal to span{J_l} before the optimizer step (blocks under SGD, not under Adam).

    One-sided removes only components that would move toward the witness under a gradient-descent step (J·g < 0).

    Args:
        direction: the direction to block (``random: true`` for the random-direction control).
        projection: one-sided blocking and the cost knobs for J.
    """

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        with torch.enable_grad():
            self.refresh(pl_module, trainer.global_step)
        params = trainable_parameters(pl_module)
        grad = flatten([p.grad for p in params], params)
        kept, removed = self.project(grad, sign=-1.0)
        for p, new in zip(params, unflatten(kept, params), strict=True):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(new.to(p.grad.dtype))
        self._logs = {tag(INTERVENTION, "grad_removed_norm"): removed.norm(), **self._zero_count()}
