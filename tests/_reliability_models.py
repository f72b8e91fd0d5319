"""A tiny probe-protocol model and data used by the reliability tests (guards, checkpoint I/O, loading safety).

``poison_*`` switches inject a non-finite value at a chosen step so the NaN guard can be exercised.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from testbed.protocol import TestbedDataModule, TestbedModule


class TinyRegressor(TestbedModule):
    """A 2-layer MLP regressor; layers ``blocks.0.hidden`` (width ``hidden``) and ``blocks.1.out`` (width 1).

    Args:
        width: input width.
        hidden: hidden width.
        lr: SGD learning rate.
        poison_loss_at_step: make the training loss NaN at this global step (-1: never).
        poison_metric_at_step: log ``train/poison`` = inf at this global step (-1: never).
        poison_rank: poison only on this process rank (-1: every rank).
        init_from: weights to start from.
    """

    def __init__(
        self,
        width: int = 4,
        hidden: int = 8,
        lr: float = 0.1,
        poison_loss_at_step: int = -1,
        poison_metric_at_step: int = -1,
        poison_rank: int = -1,
        init_from: str | None = None,
    ) -> None:
        super().__init__(init_from)
        self.save_hyperparameters()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(width, hidden), nn.Tanh()), nn.Linear(hidden, 1)])

    def layer_names(self) -> list[str]:
        return ["blocks.0.hidden", "blocks.1.out"]

    def layer_module(self, name: str) -> nn.Module:
        return self.blocks[int(name.split(".")[1])]

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks[1](self.blocks[0](x)).squeeze(-1)

    def forward_probe(self, batch: Tensor) -> None:
        self(batch)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = ((self(x) - y) ** 2).mean()
        poisoned_rank = self.hparams.poison_rank in (-1, self.global_rank)
        if self.global_step == self.hparams.poison_loss_at_step and poisoned_rank:
            loss = loss * math.nan
        self.log("train/loss", loss)
        if self.global_step == self.hparams.poison_metric_at_step:
            self.log("train/poison", math.inf)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", ((self(x) - y) ** 2).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TinyData(TestbedDataModule):
    """Synthetic linear-regression data (fixed by ``seed``) and a fixed probe batch.

    Args:
        n: number of training examples (0 is allowed, to exercise empty-data handling).
        width: input width.
        batch_size: training batch size.
        probe_size: number of probe inputs.
        poison_probe: put a NaN into the probe inputs (a representation goes non-finite).
        seed: data seed.
    """

    def __init__(
        self,
        n: int = 32,
        width: int = 4,
        batch_size: int = 8,
        probe_size: int = 4,
        poison_probe: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, width, generator=g)
        self.y = self.x @ torch.randn(width, generator=g)
        self.probe = torch.randn(probe_size, width, generator=g)
        if poison_probe:
            self.probe[0, 0] = math.nan
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[:8], self.y[:8]), batch_size=8)

    def probe_batch(self) -> Tensor:
        return self.probe.clone()
