"""The L2 anchor baseline: pull the trainable parameters toward their values at the start of the run.

Adds strength · (θ − θ_start) to the gradient before each step (the gradient of strength/2 · ‖θ − θ_start‖²);
θ_start are the aligned weights the fine-tune starts from.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from testbed.errors import positive_number
from testbed.interventions.base import require_protocol
from testbed.interventions.flat import add_to_grads, trainable_parameters
from testbed.step_log import log_at_step, logging_due
from testbed.strategies import FULL_PARAMETERS
from testbed.tags import INTERVENTION, tag

__all__ = ["L2Anchor"]


class L2Anchor(pl.Callback):
    """Pull the trainable parameters toward their start values (a baseline that needs no direction).

    Args:
        strength: weight of the anchor (> 0).
    """

    supported_strategies = FULL_PARAMETERS

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__()
        self.strength = positive_number("strength", strength)
        self.anchor: list[Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(strength=self.strength)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = trainable_parameters(require_protocol(pl_module))
        if self.anchor is None:
            self.anchor = [p.detach().clone() for p in params]
        self.anchor = [a.to(p.device) for a, p in zip(self.anchor, params, strict=True)]

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        params = trainable_parameters(pl_module)
        with torch.no_grad():
            add_to_grads(params, [self.strength * (p.detach() - a) for p, a in zip(params, self.anchor, strict=True)])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if logging_due(trainer):
            pairs = zip(trainable_parameters(pl_module), self.anchor, strict=True)
            dist = torch.sqrt(sum(((p.detach() - a).double() ** 2).sum() for p, a in pairs))
            log_at_step(trainer, {tag(INTERVENTION, "anchor_distance"): dist})

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": None if self.anchor is None else [a.cpu() for a in self.anchor]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.anchor = state_dict.get("anchor")
