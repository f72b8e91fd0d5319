"""The one loader of saved weights into a model: phase chaining (``init_from``), ``vrev`` and the study runner.

A weights path is a Lightning ``.ckpt``, a ``state_dict`` file, a ``.safetensors`` file, or a Hugging Face model
folder (its ``*.safetensors`` shards, else its ``*.bin`` files loaded with ``weights_only``). A model may map
foreign keys onto its own through ``adapt_state_dict`` (the causal-LM module loads bare Hugging Face state dicts
and plain checkpoints through transformers' own key mapping, into LoRA-wrapped models too); the load itself is
strict, and a mismatch is one ``CheckpointError`` naming every kind of problem (missing, unexpected and wrong-shape
keys).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from testbed.errors import CheckpointError
from testbed.io import load_state_dict

__all__ = ["load_weights", "read_weights", "state_mismatch"]


def state_mismatch(own: dict[str, Tensor], state: dict[str, Tensor]) -> str:
    """What keeps ``state`` from loading strictly into a model whose state dict is ``own`` ('' when it fits)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    return "; ".join(
        f"{label}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if keys
    )


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The state dict in ``path``: a weights file, or every weights file of a Hugging Face model folder."""
    path = Path(path)
    if not path.is_dir():
        return load_state_dict(path)
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        raise CheckpointError(f"{path} is a folder without weights (*.safetensors or *.bin)")
    state: dict[str, Tensor] = {}
    for file in files:
        state.update(load_state_dict(file))
    return state


def load_weights(module: nn.Module, path: str | Path, what: str = "checkpoint") -> None:
    """Load the weights in ``path`` (Lightning ``.ckpt``, ``state_dict`` file or ``.safetensors``) into ``module``.

    Args:
        module: the model; its ``adapt_state_dict(state)``, when present, maps foreign keys first.
        path: the weights file or Hugging Face model folder.
        what: how the file is named in error messages (e.g. ``init_from``).

    Raises:
        CheckpointError: the file is missing, unsafe or not weights, or does not fit ``module``.
    """
    state: dict[str, Any] = read_weights(path)
    adapt = getattr(module, "adapt_state_dict", None)
    if callable(adapt):
        state = adapt(state)
    problem = state_mismatch(module.state_dict(), state)
    if problem:
        raise CheckpointError(f"{what}={path} does not fit {type(module).__name__} ({problem})")
    with torch.no_grad():
        module.load_state_dict(state, strict=True)
