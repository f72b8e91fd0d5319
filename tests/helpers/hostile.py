"""Test-only callbacks for the hostile-input, containment and locking tests (class paths
``tests.helpers.hostile.X``, with the repository on ``PYTHONPATH``)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from testbed.step_log import log_at_step

__all__ = ["quadratic_fit", "PoisonWeight", "LogValue", "WriteDuringSetup", "HoldAtStart"]


def quadratic_fit(max_steps: int) -> dict[str, Any]:
    """A fit config of the quadratic toy that trains ``max_steps`` steps in well under a second."""
    return {
        "seed_everything": 0,
        "model": {"class_path": "toy_models.quadratic.QuadraticToy",
                  "init_args": {"dim": 6, "rank": 2, "sharpness": 4.0, "lr": 0.01}},
        "data": {"class_path": "toy_models.quadratic.QuadraticData", "init_args": {"dim": 6, "epoch_length": 20}},
        "trainer": {"max_steps": max_steps, "log_every_n_steps": 1, "num_sanity_val_steps": 0, "limit_val_batches": 0,
                    "enable_progress_bar": False},
    }


class PoisonWeight(pl.Callback):
    """Set the first weight entry to ``value`` right after optimizer step ``step`` (as an overflowing update would).

    Args:
        step: the global step after which the weight is poisoned.
        value: the value written (``inf`` by default).
    """

    def __init__(self, step: int, value: float = math.inf) -> None:
        self.step, self.value = step, value

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = self.value


class LogValue(pl.Callback):
    """Write ``tag = value`` straight to the logger (``log_at_step``) after optimizer step ``step``.

    Args:
        step: the global step.
        tag: the tag.
        value: the value (e.g. ``nan``).
    """

    def __init__(self, step: int, tag: str = "probe/value", value: float = math.nan) -> None:
        self.step, self.tag, self.value = step, tag, value

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            log_at_step(trainer, {self.tag: self.value})


class WriteDuringSetup(pl.Callback):
    """While the run sets up, create ``path`` (a folder with a file), as a concurrent run would.

    Args:
        path: the folder to create.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        Path(self.path).mkdir(parents=True, exist_ok=True)
        (Path(self.path) / "events.other").write_text("another run's file\n")


class HoldAtStart(pl.Callback):
    """When training starts, write ``signal`` and wait (up to ``seconds``) until it is deleted: a run that is busy.

    Args:
        signal: the file written once the run holds its folder.
        seconds: the longest wait.
    """

    def __init__(self, signal: str, seconds: float = 120.0) -> None:
        self.signal, self.seconds = signal, seconds

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        Path(self.signal).write_text("holding\n")
        deadline = time.monotonic() + self.seconds
        while Path(self.signal).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
