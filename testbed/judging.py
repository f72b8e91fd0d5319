"""Judges of behaviour and the one callback that logs them: harmfulness is produced here and nowhere else.

A ``Judge`` is a callable ``judge(module, datamodule) -> {name: value}`` (e.g. ``{"harmfulness": 12.5,
"harmfulness_ci_low": ...}``) that reads the model through its own means (the LLM track generates or scores
continuations; a toy classifies held-out harmful inputs). ``HarmfulnessCallback`` runs its judges side-effect free
(eval mode, isolated RNG, no autograd) before training (step 0), every ``every_n_steps`` steps, at the extra
``steps`` and at the end, and logs every value under ``align/<name>`` at the step convention of
``testbed.step_log``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

from testbed.errors import ConfigError, positive_int
from testbed.probes import probe_mode
from testbed.step_log import log_at_step
from testbed.strategies import ALL_FAMILIES
from testbed.tags import ALIGN, tag

__all__ = ["Judge", "run_judge", "HarmfulnessCallback"]


class Judge(ABC):
    """A behaviour judge; ``name`` is the metric it reports (logged as ``align/<name>``)."""

    name: str = "harmfulness"

    @abstractmethod
    def __call__(self, module: pl.LightningModule, datamodule: Any) -> Mapping[str, float] | float:
        """Judge ``module`` on the prompts/inputs ``datamodule`` holds; a float is reported under ``name``."""


def run_judge(judge: Judge, module: pl.LightningModule, datamodule: Any) -> dict[str, float]:
    """Run ``judge`` side-effect free (eval mode, isolated RNG, no grad) and return named floats."""
    with probe_mode(module, grad=False):
        value = judge(module, datamodule)
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    return {judge.name: float(value)}


class HarmfulnessCallback(pl.Callback):
    """Log one or more judges under ``align/`` before training, at a cadence and at the end.

    Args:
        judges: the judges to run (each a ``Judge``).
        every_n_steps: cadence in optimizer steps (0: only before training and at the end).
        steps: extra steps at which to judge.
    """

    supported_strategies = ALL_FAMILIES

    def __init__(self, judges: list[Judge], every_n_steps: int = 0, steps: list[int] | None = None) -> None:
        super().__init__()
        if not judges:
            raise ConfigError("HarmfulnessCallback needs at least one judge")
        for judge in judges:
            if not isinstance(judge, Judge):
                raise ConfigError(f"judges must be testbed.judging.Judge instances, got {type(judge).__name__}")
        for judge in judges:
            if not isinstance(judge.name, str) or not judge.name or "/" in judge.name:
                raise ConfigError(f"judge name must be a non-empty metric name without '/', got {judge.name!r}")
        names = [judge.name for judge in judges]
        if len(set(names)) != len(names):
            raise ConfigError(f"judge names must be distinct (each is a metric), got {names}")
        self.judges = list(judges)
        self.every_n_steps = positive_int("every_n_steps", every_n_steps, allow_zero=True)
        self.steps = {positive_int("judge steps", s) for s in (steps or [])}
        self.history: list[dict[str, float]] = []
        self._last = -1

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Run every judge now and log the values at the current step."""
        values: dict[str, float] = {}
        for judge in self.judges:
            for name, value in run_judge(judge, pl_module, trainer.datamodule).items():
                values[tag(ALIGN, name)] = value
        log_at_step(trainer, values)
        self.history.append({"step": float(trainer.global_step), **values})
        self._last = trainer.global_step
        return values

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last:
            self.measure(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        due = (self.every_n_steps and step % self.every_n_steps == 0) or step in self.steps
        if due and step != self._last:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last:
            self.measure(trainer, pl_module)
