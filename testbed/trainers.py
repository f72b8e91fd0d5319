"""A bare ``pl.Trainer`` for programmatic runs (tests, benchmarks): no logger, checkpoints, bars or validation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl


def quiet_trainer(max_steps: int, callbacks: Sequence[pl.Callback] = (), **kwargs: Any) -> pl.Trainer:
    """A trainer that only trains for ``max_steps`` steps with ``callbacks``.

    Args:
        max_steps: optimizer steps to run.
        callbacks: the callbacks of the run.
        **kwargs: further ``pl.Trainer`` arguments; they override the quiet defaults (e.g. ``logger=...``).
    """
    options: dict[str, Any] = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    options.update(kwargs)
    return pl.Trainer(max_steps=max_steps, callbacks=list(callbacks), **options)
