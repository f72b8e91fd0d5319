"""The representation penalty: an added objective against positive drift along v_rev.

P(θ) = strength · Σ_l relu(<v_l, m_l(θ) − m_l^ref>)^power. Its gradient is added to ``.grad`` right before each
optimizer step (after accumulation and unscaling, before clipping), which equals adding P to the training loss with
no change to the module; the logged task loss excludes it.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from testbed.errors import one_of, positive_number
from testbed.interventions.base import DirectionCallback, DirectionSource
from testbed.interventions.flat import add_to_grads, trainable_parameters
from testbed.protocol import TestbedModule
from testbed.step_log import log_at_step, logging_due
from testbed.tags import INTERVENTION, tag

__all__ = ["RepresentationPenalty"]


class RepresentationPenalty(DirectionCallback):
    """Penalise positive drift along v_rev: strength · Σ_l relu(<v_l, m_l − m_l^ref>)^power.

    Args:
        direction: the direction (``random: true`` for the random-direction control).
        strength: weight of the penalty (> 0).
        power: 1 (hinge) or 2 (squared hinge).
    """

    def __init__(self, direction: DirectionSource, strength: float = 1.0, power: int = 2) -> None:
        super().__init__(direction)
        self.strength = positive_number("strength", strength)
        self.power = one_of("power", power, (1, 2))
        self._value: Tensor | None = None

    def penalty(self, module: TestbedModule) -> Tensor:
        """The differentiable penalty at the current weights."""
        along = self.along(module, grad=True)
        return self.strength * sum(torch.relu(a) ** self.power for a in along.values())

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        params = trainable_parameters(pl_module)
        with torch.enable_grad():
            value = self.penalty(pl_module)
            grads = (
                torch.autograd.grad(value, params, allow_unused=True) if value.requires_grad else [None] * len(params)
            )
        add_to_grads(params, grads)
        self._value = value.detach()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._value is not None and logging_due(trainer):
            log_at_step(trainer, {tag(INTERVENTION, "penalty"): self._value})
        self._value = None
