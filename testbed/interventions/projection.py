"""Projection blockers: remove the first-order motion of the probe representations along v_rev.

A *constraint* is one scalar c_g,l(θ) = <v_l, mean_{i∈g} h_l(x_i; θ)>: the mean over a group g of probe inputs of
the representation along v_l at layer l. Its row of the Jacobian, J_g,l = ∂c_g,l/∂θ over the trainable parameters,
is one vector-Jacobian product. The groups are the whole probe set (``constraints: mean``, one row per layer), every
probe input (``examples``), or ``rank`` clusters of probe inputs (``clusters``: k-means on the inputs' reference
representations), so a blocker can hold each input (or cluster) in place and not only their mean. With J the
rows [k, P], G = J Jᵀ and G⁺ its pseudo-inverse, the part of a vector δ that moves the constraints is

    removed(δ) = Jᵀ G⁺ J δ     (the projection onto span{J_g,l}; rank = rank G)

- ``UpdateProjectionBlocker``: after each optimizer step, Δθ ← Δθ − removed(Δθ), with J taken at the pre-step
  weights, so the first-order change of every constraint is zero whatever the optimizer (Adam included).
- ``GradientProjectionBlocker``: the same projection applied to the gradient before the step. Under plain SGD this
  blocks the first-order motion; under Adam/AdamW it does not (the moment estimates carry the removed component
  back), which is why it is kept as a named variant.

One-sided: only the constraints that δ moves toward the witness (J·Δθ > 0, or J·g < 0 for a gradient step) are
held, by a small active-set loop (exact for one row or mutually orthogonal rows). A constraint set whose rank drops
to zero (a zero Jacobian: the probed layers do not depend on the trainable parameters) removes nothing; the blocker
then warns once and logs ``intervention/constraint_rank`` = 0 instead of silently acting as a plain arm.

Under FSDP2 the vectors hold each process's parameter slices: J is taken by an ordinary backward pass
(``testbed.sharding.backward_grads``) and inner products (J δ, G = J Jᵀ, norms) are summed across processes
(``testbed.interventions.flat``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from testbed.errors import ConfigError, one_of, positive_int
from testbed.interventions.base import DirectionCallback, DirectionSource
from testbed.interventions.flat import flat_matvec, flat_norm, flatten, trainable_parameters, unflatten
from testbed.probes import ProbeSet, map_batch
from testbed.protocol import TestbedModule
from testbed.sharding import all_reduce_sum, backward_grads, is_sharded, local
from testbed.step_log import log_at_step, logging_due
from testbed.strategies import FULL_PARAMETERS
from testbed.tags import INTERVENTION, tag

__all__ = ["ProjectionSettings", "UpdateProjectionBlocker", "GradientProjectionBlocker", "probe_groups"]

RANK_TOLERANCE = 1e-10  # eigenvalues of G below this times the largest are dropped (rank deficiency)


@dataclass
class ProjectionSettings:
    """How a projection blocker takes and applies J.

    Args:
        one_sided: remove only motion toward the witness; motion away is kept.
        every_n_steps: recompute J every n steps (1 = every step; in between the last J is reused).
        jacobian_probe_size: take J on the first n probe inputs only (default: all). J costs one forward and
            backward pass on its probe batch, so this trades exactness on the full probe set for speed (the
            first-order change is zero on the subset; ``experiments/bench`` prints what leaks on the full set).
        constraints: what is held: ``mean`` (the mean probe representation, one constraint per layer),
            ``examples`` (every probe input) or ``clusters`` (``rank`` clusters of probe inputs).
        rank: the number of clusters per layer (``clusters`` only): the rank budget of the constraint set.
    """

    one_sided: bool = False
    every_n_steps: int = 1
    jacobian_probe_size: int | None = None
    constraints: Literal["mean", "examples", "clusters"] = "mean"
    rank: int = 8

    def __post_init__(self) -> None:
        positive_int("every_n_steps", self.every_n_steps)
        positive_int("jacobian_probe_size", self.jacobian_probe_size, allow_none=True)
        one_of("constraints", self.constraints, ("mean", "examples", "clusters"))
        positive_int("rank", self.rank)


def probe_groups(probe: ProbeSet, constraints: str, rank: int, features: Tensor | None = None) -> list[ProbeSet]:
    """The probe inputs grouped per constraint: all of them, one per input, or ``rank`` k-means clusters of
    ``features`` ``[B, F]`` (seeded, so the same inputs give the same clusters; empty clusters are dropped)."""
    if constraints == "mean":
        return [probe]
    if constraints == "examples":
        labels = torch.arange(probe.size)
    else:
        from scipy.cluster.vq import kmeans2

        data = features.detach().double().cpu().numpy()
        _, found = kmeans2(data, min(rank, probe.size), seed=0, minit="++")
        labels = torch.as_tensor(found)
    groups = []
    for label in labels.unique(sorted=True).tolist():
        index = (labels == label).nonzero().flatten()
        groups.append(ProbeSet(map_batch(probe.batch, lambda t, i=index: t.index_select(0, i.to(t.device))
                                         if t.dim() > 0 else t)))  # fmt: skip
    return groups


class _JacobianProjection(DirectionCallback):
    """J rows, their Gram matrix and the (one- or two-sided) projection; the subclasses say when to apply it.

    Vectors over the parameters are kept in the parameters' working precision (float32 for float32/bf16 models);
    the small k × k Gram matrix is inverted in float64.
    """

    def __init__(self, direction: DirectionSource, projection: ProjectionSettings | None = None) -> None:
        super().__init__(direction)
        self.settings = projection or ProjectionSettings()
        self.groups: list[ProbeSet] = []
        self.jacobians: Tensor | None = None  # [k, P] raw rows, group-major then layer
        self._gram_pinv: Tensor | None = None  # [k, k] float64
        self._rank = 0
        self._warned = False
        self._over: list[Tensor] = []  # the parameters when J holds this process's slices (FSDP2), else none
        self._logs: dict[str, Any] = {}

    def refresh(self, module: TestbedModule, step: int) -> None:
        """Recompute J at the current weights when due (every ``every_n_steps`` steps, or when none is held)."""
        if self.jacobians is not None and step % self.settings.every_n_steps != 0:
            return
        params = trainable_parameters(module)
        self._over = list(params) if is_sharded(params) else []
        rows = []
        for group in self.groups:
            if self._over:  # one forward and ordinary backward per row (FSDP2 gathers and reduce-scatters)
                rows.extend(flatten(backward_grads(lambda g=group, k=layer: self.along(module, True, g)[k], params),
                                    params) for layer in self.layers)  # fmt: skip
                continue
            along = self.along(module, grad=True, probe=group)
            for i, layer in enumerate(self.layers):
                if not along[layer].requires_grad:  # the layer does not depend on what trains: a zero row
                    rows.append(flatten([None] * len(params), params))
                    continue
                grads = torch.autograd.grad(along[layer], params, retain_graph=i < len(self.layers) - 1,
                                            allow_unused=True)  # fmt: skip
                rows.append(flatten(grads, params))
        self.jacobians = torch.stack(rows)
        self._factor(step)

    def _factor(self, step: int) -> None:
        """G⁺ and the rank of the held rows; a rank of zero is said once."""
        jac = self.jacobians.double()
        gram = all_reduce_sum(jac @ jac.T, self._over)
        self._gram_pinv = torch.linalg.pinv(gram, hermitian=True, rtol=RANK_TOLERANCE)
        top = float(torch.linalg.eigvalsh(gram).max()) if gram.numel() else 0.0
        self._rank = int(torch.linalg.matrix_rank(gram, hermitian=True, rtol=RANK_TOLERANCE)) if top > 0 else 0
        if self._rank == 0 and not self._warned:
            self._warned = True
            rank_zero_warn(f"{type(self).__name__}: the constraint degenerated at step {step}: the Jacobian of the "
                           f"probe representations along the direction is zero (layers {self.layers} do not depend "
                           "on the trainable parameters), so nothing is removed; the arm trains as a plain one")

    def _removed(self, delta: Tensor, rows: Tensor | None = None) -> Tensor:
        """Jᵀ G⁺ J δ over all rows, or over the rows selected by the boolean mask ``rows``."""
        jac = self.jacobians if rows is None else self.jacobians[rows]
        pinv = self._gram_pinv if rows is None else torch.linalg.pinv(
            all_reduce_sum(jac.double() @ jac.double().T, self._over), hermitian=True, rtol=RANK_TOLERANCE)
        coeffs = pinv @ flat_matvec(jac.double(), delta.double(), self._over)
        return (coeffs.to(jac.dtype) @ jac).to(delta.dtype)

    def project(self, delta: Tensor, sign: float) -> tuple[Tensor, Tensor]:
        """(kept, removed) parts of ``delta``; removed lies in span{J} (one-sided: rows with sign·J·delta > 0)."""
        if self._rank == 0:
            return delta, torch.zeros_like(delta)
        if not self.settings.one_sided:
            removed = self._removed(delta)
            return delta - removed, removed
        original, kept = delta, delta
        active = torch.zeros(self.jacobians.shape[0], dtype=torch.bool, device=delta.device)
        for _ in range(self.jacobians.shape[0]):
            scale = max(1.0, float(flat_norm(kept, self._over)))
            newly = (sign * flat_matvec(self.jacobians, kept, self._over) > 1e-12 * scale) & ~active
            if not bool(newly.any()):
                break
            active |= newly
            kept = original - self._removed(original, active)
        return kept, original - kept

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        s = self.settings
        if s.jacobian_probe_size is not None and s.jacobian_probe_size > self.probe.size:
            raise ConfigError(f"jacobian_probe_size={s.jacobian_probe_size} exceeds the probe set "
                              f"({self.probe.size} inputs)")
        probe = self.probe if s.jacobian_probe_size is None else self.probe.head(s.jacobian_probe_size)
        features = None
        if s.constraints == "clusters":  # cluster on the reference representations (the start of this run)
            reps = probe.read(pl_module, self.layers, self.pooling)
            features = torch.cat([reps[k] for k in self.layers], dim=1)
        self.groups = probe_groups(probe, s.constraints, s.rank, features)
        if self.jacobians is not None:
            self.jacobians = self.jacobians.to(pl_module.device)
            self._factor(trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._logs and logging_due(trainer):
            log_at_step(trainer, {**self._logs, tag(INTERVENTION, "constraint_rank"): self._rank})
        self._logs = {}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._over:  # one process's slices: a resumed run takes J afresh
            return {**state, "jacobians": None}
        state["jacobians"] = None if self.jacobians is None else self.jacobians.cpu()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.jacobians = state.get("jacobians")


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
        along_before = flat_matvec(self.jacobians, delta, self._over)
        _, removed = self.project(delta, sign=1.0)
        for p, part in zip(params, unflatten(removed, params), strict=True):
            local(p).sub_(part.to(p.dtype))  # θ ← θ_old + Δθ − removed
        self._snapshot = None
        removed_norm = flat_norm(removed, self._over)
        # kept as tensors (no device sync); written in on_train_batch_end when logging is due
        self._logs = {
            tag(INTERVENTION, "update_removed_norm"): removed_norm,
            tag(INTERVENTION, "update_removed_frac"): removed_norm / flat_norm(delta, self._over).clamp_min(1e-30),
            tag(INTERVENTION, "update_along_vrev_before"): along_before.sum(),
        }

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
        self._logs = {tag(INTERVENTION, "grad_removed_norm"): removed.norm()}
