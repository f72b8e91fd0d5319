"""Test-only callbacks for the resume and DDP tests (imported by class path ``tests.helpers.callbacks.X`` with the
repository on ``PYTHONPATH``)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.distributed.tensor import DTensor


class KillAtStep(pl.Callback):
    """SIGKILL the own process right after optimizer step ``step`` (no cleanup, as a crash or a pre-emption).

    Args:
        step: the global step after which the process dies.
    """

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class DumpState(pl.Callback):
    """At the end of fit, each rank writes ``<out>/rank<r>.json``: parameters, monitor history, blocker state.

    Args:
        out: output folder.
    """

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        record: dict[str, Any] = {
            "world_size": trainer.world_size,
            "params": {k: _jsonable(v) for k, v in pl_module.state_dict().items()},
            "callbacks": {},
        }
        for cb in trainer.callbacks:
            name = type(cb).__name__
            if hasattr(cb, "history"):
                record["callbacks"][name] = {"history": cb.history}
            elif name.endswith("Blocker") or name in ("RepresentationPenalty", "ActivationClamp", "L2Anchor"):
                state = cb.state_dict()
                record["callbacks"][name] = {k: _jsonable(v) for k, v in state.items()}
        Path(self.out).mkdir(parents=True, exist_ok=True)
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def _jsonable(value: Any) -> Any:
    if isinstance(value, DTensor):  # a sharded (FSDP2) parameter: gathered, so every rank writes the whole tensor
        value = value.full_tensor()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().flatten().tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
