"""The one-sided reversion objective: block (or push) motion of the probe representations toward the witness.

With a_i,l(θ) = <v_l, h_l(x_i; θ) − h_l(x_i; θ_ref)> the motion of probe input x_i along v_rev at layer l since the
reference (the start of fine-tuning), the objective is a hinge on motion toward the witness,

    O(θ) = Σ_l mean_i relu(a_i,l + margin)^power        (per example)
    O(θ) = Σ_l relu(mean_i a_i,l + margin)^power        (on the mean),

optimised with the task's own optimizer: its gradient is added to the task gradient g right before each optimizer
step (after accumulation and unscaling, before clipping), which equals adding ±c·O to the loss. The sign of
``strength`` chooses the arm: > 0 **blocks** (g + c∇O: motion toward the witness is opposed), < 0 **pushes**
(g − c∇O: the same objective favoured), 0 leaves training untouched. The weight c is

    absolute:  c = |strength|
    relative:  c = |strength| · ‖g‖ / ‖∇O‖   (the objective's gradient is |strength| times the task gradient's norm),

so a relative setting transfers across models and learning rates. The logged task loss excludes the objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor

from testbed.errors import ConfigError, as_settings, one_of, positive_number
from testbed.interventions.base import DirectionCallback, DirectionSource
from testbed.interventions.flat import add_to_grads, flatten, trainable_parameters
from testbed.protocol import TestbedModule
from testbed.step_log import log_at_step, logging_due
from testbed.tags import INTERVENTION, tag

__all__ = ["ObjectiveSettings", "ReversionObjective"]


@dataclass
class ObjectiveSettings:
    """How strongly, and on what, the reversion objective acts.

    Args:
        strength: signed weight: > 0 blocks motion toward the witness, < 0 pushes it, 0 is off.
        scale: ``absolute`` (c = |strength|) or ``relative`` (the objective's gradient norm is |strength| times the
            task gradient's).
        per_example: a hinge per probe input (each input's own motion) instead of one on the mean representation.
        power: 1 (hinge) or 2 (squared hinge).
        margin: the hinge acts on a > −margin (≥ 0), so blocking also asks for motion away from the witness.
    """

    strength: float = 1.0
    scale: Literal["absolute", "relative"] = "relative"
    per_example: bool = True
    power: int = 1
    margin: float = 0.0

    def __post_init__(self) -> None:
        ok = isinstance(self.strength, (int, float)) and not isinstance(self.strength, bool)
        if not ok or not math.isfinite(self.strength):
            raise ConfigError(f"objective strength must be a finite number (signed), got {self.strength!r}")
        one_of("objective scale", self.scale, ("absolute", "relative"))
        one_of("objective power", self.power, (1, 2))
        positive_number("objective margin", self.margin, allow_zero=True)
        if not isinstance(self.per_example, bool):
            raise ConfigError(f"objective per_example must be true or false, got {self.per_example!r}")

    @property
    def sign(self) -> float:
        """+1 blocks, −1 pushes, 0 is off."""
        return float((self.strength > 0) - (self.strength < 0))


class ReversionObjective(DirectionCallback):
    """Add the one-sided reversion objective to training: block (strength > 0) or push (strength < 0).

    Logs, when logging is due, ``intervention/<metric>`` (the objective O), ``intervention/<metric>_active`` (share
    of hinge terms that act) and ``intervention/<metric>_grad_ratio`` (‖c∇O‖ / ‖g‖).

    Args:
        direction: the direction (``random: true`` for the random-direction control at the same strength).
        objective: strength, scale, per-example or mean hinge, power and margin (``ObjectiveSettings``).
    """

    metric: ClassVar[str] = "objective"

    def __init__(self, direction: DirectionSource, objective: ObjectiveSettings | None = None) -> None:
        super().__init__(direction)
        self.settings: ObjectiveSettings = as_settings(ObjectiveSettings, objective, "objective") or ObjectiveSettings()
        self.reference_reps: dict[str, Tensor] = {}
        self._logs: dict[str, Tensor] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.settings.per_example and not self.reference_reps:
            self.reference_reps = self.probe.read(pl_module, self.layers, self.pooling)
        self.reference_reps = {k: v.to(pl_module.device) for k, v in self.reference_reps.items()}

    def motion(self, module: TestbedModule) -> dict[str, Tensor]:
        """a per layer, differentiable: ``[B]`` per probe input (per example) or a scalar (on the mean)."""
        if not self.settings.per_example:
            return self.along(module, grad=True)
        reps = self.probe.read(module, self.layers, self.pooling, grad=True)
        return {k: (reps[k] - self.reference_reps[k].to(reps[k].dtype)) @ self.vectors[k].to(reps[k].dtype)
                for k in self.layers}

    def objective(self, module: TestbedModule) -> tuple[Tensor, Tensor]:
        """(O at the current weights, differentiable; share of active hinge terms)."""
        s = self.settings
        hinges = [torch.relu(a.reshape(-1) + s.margin) for a in self.motion(module).values()]
        value = sum(h.pow(s.power).mean() for h in hinges)
        active = torch.cat([h.detach() > 0 for h in hinges]).double().mean()
        return value, active

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        sign = self.settings.sign
        if sign == 0:
            return
        params = trainable_parameters(pl_module)
        with torch.enable_grad():
            value, active = self.objective(pl_module)
            grads = (torch.autograd.grad(value, params, allow_unused=True) if value.requires_grad
                     else [None] * len(params))  # fmt: skip
        flat = flatten(grads, params)
        task_norm = flatten([p.grad for p in params], params).norm()
        norm = flat.norm()
        if self.settings.scale == "absolute":
            weight = torch.as_tensor(abs(self.settings.strength), dtype=flat.dtype, device=flat.device)
        else:
            weight = abs(self.settings.strength) * task_norm / norm.clamp_min(1e-30)
        add_to_grads(params, [None if g is None else sign * weight.to(g.dtype) * g for g in grads])
        self._logs = {
            tag(INTERVENTION, self.metric): value.detach(),
            tag(INTERVENTION, f"{self.metric}_active"): active,
            tag(INTERVENTION, f"{self.metric}_grad_ratio"): weight * norm / task_norm.clamp_min(1e-30),
        }

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._logs and logging_due(trainer):
            log_at_step(trainer, self._logs)
        self._logs = {}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["reference_reps"] = {k: v.detach().cpu() for k, v in self.reference_reps.items()}
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.reference_reps = dict(state.get("reference_reps", {}))
