"""The one way to log a value at a step.

**Step convention.** A metric logged at TensorBoard step *n* describes the model after *n* optimizer updates:
a callback that measures in ``on_train_batch_end`` (after the update) logs at ``trainer.global_step``, a value
measured before training logs at step 0. Values are written straight to the trainer's loggers (no epoch
aggregation, and much cheaper than ``LightningModule.log`` for per-step scalars) by rank zero only; every rank
may call these functions, so callers never test the rank themselves. A non-finite value is never written: it
raises the ``NonFiniteGuard``'s ``NonFiniteError`` naming the tag and the step (the CLI's one-line error).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

from testbed.guards import NonFiniteError

__all__ = ["HeldOutLogging", "log_at_step", "logging_due"]


def logging_due(trainer: pl.Trainer, every_n_steps: int | None = None) -> bool:
    """Whether a cadence-bound value is due now: step 1 and every ``every_n_steps`` steps (default: the trainer's
    ``log_every_n_steps``), on a run with a logger."""
    every = max(1, int(every_n_steps or getattr(trainer, "log_every_n_steps", 50) or 50))
    step = trainer.global_step
    return bool(trainer.loggers) and (step == 1 or step % every == 0)


def log_at_step(trainer: pl.Trainer, values: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
    """Write scalar ``values`` (numbers or 0-d tensors) to every logger at ``step`` (default: updates done so far).

    Returns the values as floats (on every rank, so callers can keep a history).

    Raises:
        NonFiniteError: a value is NaN or infinite (checked on every rank, before anything is written).
    """
    scalars = {key: float(value) for key, value in values.items()}
    at = trainer.global_step if step is None else int(step)
    bad = next((key for key, value in scalars.items() if not math.isfinite(value)), None)
    if bad is not None:
        raise NonFiniteError(f"non-finite logged metric at step {at}: {bad} = {scalars[bad]} (stopping the run)")
    if scalars and trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=at)
    return scalars


class HeldOutLogging:
    """Mixin for LightningModules: held-out (validation/test) metrics logged at the step convention.

    Lightning itself files epoch-level validation metrics under the step *before* the last update (a validation
    run after n updates is logged at n − 1). A module calls ``log_held_out(values, batch_size)`` in its
    validation/test step instead of ``self.log``; the batch-size-weighted means (``torchmetrics.MeanMetric``,
    reduced across processes) are written at ``trainer.global_step`` by ``log_at_step`` when the loop ends, and
    put into ``trainer.callback_metrics`` for checkpointing and the guards. Outside a fit (the ``validate`` and
    ``test`` verbs) they are logged, returned and printed by Lightning as usual.
    """

    def log_held_out(self, values: Mapping[str, Any], batch_size: int) -> None:
        """Add one batch's held-out metrics (tag -> scalar) with weight ``batch_size``."""
        from torchmetrics import MeanMetric

        means = self.__dict__.setdefault("_held_out_means", {})
        for key, value in values.items():
            if key not in means:
                means[key] = MeanMetric(nan_strategy="disable").to(self.device)
            means[key].update(value.detach() if hasattr(value, "detach") else value, batch_size)

    def _flush_held_out(self) -> None:
        means = self.__dict__.pop("_held_out_means", {})
        if not means:
            return
        values = {key: metric.compute() for key, metric in means.items()}
        in_fit = self.trainer.state.fn == "fit"
        # Inside a fit the logger write goes through log_at_step; the validate/test verbs log and print as usual.
        self.log_dict(values, logger=not in_fit)
        if in_fit and not self.trainer.sanity_checking:
            log_at_step(self.trainer, values)

    def on_validation_epoch_end(self) -> None:
        self._flush_held_out()

    def on_test_epoch_end(self) -> None:
        self._flush_held_out()
