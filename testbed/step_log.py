"""The one way to log a value at a step.

**Step convention.** A metric logged at TensorBoard step *n* describes the model after *n* optimizer updates:
a callback that measures in ``on_train_batch_end`` (after the update) logs at ``trainer.global_step``, a value
measured before training logs at step 0. Values are written straight to the trainer's loggers (no epoch
aggregation, and much cheaper than ``LightningModule.log`` for per-step scalars) by rank zero only; every rank
may call these functions, so callers never test the rank themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

__all__ = ["log_at_step", "logging_due"]


def logging_due(trainer: pl.Trainer, every_n_steps: int | None = None) -> bool:
    """Whether a cadence-bound value is due now: step 1 and every ``every_n_steps`` steps (default: the trainer's
    ``log_every_n_steps``), on a run with a logger."""
    every = max(1, int(every_n_steps or getattr(trainer, "log_every_n_steps", 50) or 50))
    step = trainer.global_step
    return bool(trainer.loggers) and (step == 1 or step % every == 0)


def log_at_step(trainer: pl.Trainer, values: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
    """Write scalar ``values`` (numbers or 0-d tensors) to every logger at ``step`` (default: updates done so far).

    Returns the values as floats (on every rank, so callers can keep a history).
    """
    scalars = {key: float(value) for key, value in values.items()}
    if scalars and trainer.is_global_zero:
        at = trainer.global_step if step is None else int(step)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=at)
    return scalars
