"""Optimizer settings shared by the trainable modules (the toys' gradient-descent toys fix their own SGD).

``OptimizerSettings`` is a typed, validated block (``--print_config`` shows it field by field) that builds the
optimizer over the parameters a module trains (with LoRA: only the adapters).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from testbed.errors import ConfigError, fraction, one_of, positive_number

__all__ = ["OptimizerSettings"]


@dataclass
class OptimizerSettings:
    """Which optimizer, with what settings.

    Args:
        name: ``adamw`` or ``sgd``.
        lr: learning rate (> 0).
        weight_decay: weight decay (>= 0).
        momentum: SGD momentum in [0, 1).
        betas: AdamW betas, each in [0, 1).
    """

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        one_of("optimizer name", self.name, ("adamw", "sgd"))
        positive_number("optimizer lr", self.lr)
        positive_number("optimizer weight_decay", self.weight_decay, allow_zero=True)
        fraction("optimizer momentum", self.momentum, open_high=True)
        if len(self.betas) != 2:
            raise ConfigError(f"optimizer betas must be two numbers, got {list(self.betas)}")
        self.betas = (fraction("optimizer betas[0]", self.betas[0], open_high=True),
                      fraction("optimizer betas[1]", self.betas[1], open_high=True))  # fmt: skip

    def build(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer over ``params``."""
        params = list(params)
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
