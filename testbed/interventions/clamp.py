"""The activation clamp: hold the v_rev component of the stream at a layer at its reference value.

With c_l = <v_l, m_l^ref>, a forward hook on the layer replaces the stream h by h + (c_l − <v_l, h>) v_l (mode
``each``: every position of every input), or shifts only the batch-mean component to c_l (mode ``shift``:
per-input variation kept). It acts in the forward pass only, so it is correct under any strategy in mode ``each``;
mode ``shift`` holds a per-batch mean, which under data parallelism would depend on the number of processes.
"""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import nn

from testbed.errors import one_of
from testbed.interventions.base import DirectionCallback, DirectionSource
from testbed.protocol import TestbedModule, stream_of
from testbed.step_log import log_at_step, logging_due
from testbed.strategies import ALL_FAMILIES, SINGLE
from testbed.tags import INTERVENTION, tag

__all__ = ["ActivationClamp"]


class ActivationClamp(DirectionCallback):
    """Hold <v_l, h> of the stream at each layer at its reference value c_l = <v_l, m_l^ref>.

    Args:
        direction: the direction (``random: true`` for the random-direction control).
        mode: ``each`` (every position of every input) or ``shift`` (the batch mean only).
        apply_in: ``train`` (only while the module is in training mode) or ``always`` (probe reads too).
    """

    def __init__(
        self,
        direction: DirectionSource,
        mode: Literal["each", "shift"] = "each",
        apply_in: Literal["train", "always"] = "train",
    ) -> None:
        super().__init__(direction)
        self.mode = one_of("clamp mode", mode, ("each", "shift"))
        self.apply_in = one_of("apply_in", apply_in, ("train", "always"))
        self._handles: list[Any] = []
        self._shift_sum: Any = 0.0
        self._shift_n = 0

    @property
    def supported_strategies(self) -> frozenset[str]:  # type: ignore[override]
        return SINGLE if self.mode == "shift" else ALL_FAMILIES

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.attach(pl_module)

    def attach(self, module: TestbedModule) -> None:
        """Register the clamping hooks (idempotent)."""
        self.detach()
        for layer in self.layers:
            target = float(torch.dot(self.reference_mean[layer].float(), self.vectors[layer].float()))
            self._handles.append(module.layer_module(layer).register_forward_hook(self._hook(module, layer, target)))

    def _hook(self, module: TestbedModule, layer: str, target: float) -> Any:
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> Any:
            if self.apply_in == "train" and not module.training:
                return None
            h = stream_of(out)
            v = self.vectors[layer].to(device=h.device, dtype=h.dtype)
            comp = h @ v
            shift = (target - comp) if self.mode == "each" else (target - comp.mean()).expand_as(comp)
            self._shift_sum = self._shift_sum + shift.detach().abs().mean()
            self._shift_n += 1
            new = h + shift.unsqueeze(-1) * v
            return (new, *out[1:]) if isinstance(out, tuple) else new

        return hook

    def detach(self) -> None:
        """Remove the clamping hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._shift_n and logging_due(trainer):
            log_at_step(trainer, {tag(INTERVENTION, "clamp_mean_abs_shift"): self._shift_sum / self._shift_n})
        self._shift_sum, self._shift_n = 0.0, 0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.detach()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.detach()
