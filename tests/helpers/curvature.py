"""Test helpers of the curvature account: a toy fit with the monitor, broken models for bad input, a state dump.

The classes are imported by class path (``tests.helpers.curvature.X``) from configs run with the repository on
``PYTHONPATH``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from testbed.interventions import CurvatureMonitor, SubspaceBlocker
from testbed.interventions.flat import trainable_parameters
from testbed.sharding import full_flat
from testbed.testing import quiet_trainer
from toy_models.gravity import GravityMLP


def run_monitored(model: pl.LightningModule, data: pl.LightningDataModule, steps: int, **monitor: Any):
    """Fit ``steps`` steps with a ``CurvatureMonitor(**monitor)`` (every step and Δu on the whole safety set by
    default, so that on the quadratic toy Δu is the alignment loss itself); returns the monitor."""
    callback = CurvatureMonitor(**{"every_n_steps": 1, "measure_n": "all", **monitor})
    quiet_trainer(steps, [callback]).fit(model, data)
    return callback


def delta_u(monitor: CurvatureMonitor) -> dict[int, float]:
    """step -> Δu from the monitor's history."""
    return {int(r["step"]): r["curvature/delta_u"] for r in monitor.history}


class FrozenGravity(GravityMLP):
    """A gravity MLP with every parameter frozen (and no optimizer): nothing for the curvature account to measure."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for p in self.parameters():
            p.requires_grad_(False)

    def configure_optimizers(self) -> None:
        return None

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        return None


class NaNSafetyGravity(GravityMLP):
    """A gravity MLP whose safety loss is NaN on harmful safety examples (non-finite per-example gradients)."""

    def safety_losses(self, batch: tuple[Tensor, ...]) -> Tensor:
        return super().safety_losses(batch) * torch.where(batch[2].bool(), math.nan, 1.0)


def curvature_record(trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
    """What one process holds at the end of a fit: parameters, S and its slice, the diagnostics, the history."""
    monitor = next(c for c in trainer.callbacks if isinstance(c, CurvatureMonitor))
    blocker = next((c for c in trainer.callbacks if isinstance(c, SubspaceBlocker)), None)
    sub, part = monitor.subspace, monitor.partition
    trainable = trainable_parameters(module)

    def whole(flat: Tensor) -> list[float]:  # the full vector(s) from the shards under FSDP2 (a collective)
        return full_flat(flat, trainable).double().flatten().tolist()

    return {
        "world_size": trainer.world_size,
        "params": torch.cat([_full(p).detach().double().flatten() for p in module.parameters()]).tolist(),
        "basis": whole(sub.basis),
        "scalars": sub.scalars(),
        "diagnostic_scalars": monitor.diagnostics.scalars(),
        "how": sub.how,
        "eigenvalues": sub.eigenvalues.double().tolist(),
        "trace": sub.trace,
        "diagnostics": list(monitor.diagnostics.numbers),
        "history": monitor.history,
        "partition": [part.start, part.stop, part.world_size],
        "blocker_basis": None if blocker is None else whole(blocker.subspace.basis),
    }


def _full(tensor: Tensor) -> Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class DumpCurvature(pl.Callback):
    """Each process writes ``curvature_record`` to ``<out>/rank<r>.json`` when the fit ends.

    Args:
        out: output folder.
    """

    def __init__(self, out: str) -> None:
        super().__init__()
        self.folder = Path(out)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(curvature_record(trainer, pl_module)))
