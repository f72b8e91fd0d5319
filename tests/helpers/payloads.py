"""Hostile and broken files for the loading-safety, atomic-write and bad-input tests."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import torch


class CodeOnUnpickle:
    """Unpickling this object creates ``marker`` (a stand-in for arbitrary code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return builtins.open, (self.marker, "w")


def write_pickle_bomb(path: Path, marker: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """A file that looks like a Lightning checkpoint but whose pickle runs code when loaded unsafely."""
    payload = {
        "state_dict": dict(state_dict or {"w": torch.zeros(2)}),
        "global_step": 3,
        "epoch": 0,
        "pytorch-lightning_version": "2.6.6",
        "loops": {},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
        "hook": CodeOnUnpickle(marker),
    }
    torch.save(payload, path)
    return path
