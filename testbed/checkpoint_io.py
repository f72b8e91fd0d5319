"""Lightning checkpoints written atomically and read safely.

``SafeCheckpointIO`` is the testbed's default ``CheckpointIO`` plugin (``TestbedCLI`` installs it unless the
config names another one). Saving goes through ``testbed.io.atomic_torch_save``: the checkpoint is written to a
temporary sibling, fsynced and renamed over the target, so a run killed mid-write leaves either the previous
file or none, never a truncated file that loads. Weights holding a NaN or inf are never written
(``NonFiniteError``; the ``NonFiniteGuard`` normally stops the run earlier, naming the step). Loading always uses
``torch.load(weights_only=True)``, so a checkpoint whose pickle would execute code is refused (``CheckpointError``),
including for ``--ckpt_path``.

``ResumableRng`` (also on by default) stores the global RNG states (torch, CUDA, numpy, Python) in each checkpoint
and puts them back when a run resumes, so a resumed run shuffles and samples exactly like an uninterrupted one.
Lightning restores loops, optimizers and callbacks but not the RNG; without this a shuffled DataLoader draws a
different order after ``--ckpt_path``. Resumption is exact from checkpoints taken at epoch boundaries (e.g.
``every_n_train_steps`` a multiple of the epoch length); Lightning itself warns that a mid-epoch resume of a
non-resumable DataLoader is not exact.

Sharded checkpoints (FSDP ``state_dict_type: sharded``, DeepSpeed) are written and read by the strategy itself, not
through a ``CheckpointIO`` plugin.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from testbed.errors import CheckpointError
from testbed.io import atomic_torch_save, load_torch_file, looks_like_torch_file
from testbed.strategies import ALL_FAMILIES

LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic ``torch.save`` and ``weights_only=True`` loading for Lightning checkpoints (local paths)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (temporary file + fsync + rename)."""
        from testbed.guards import NonFiniteError, first_non_finite, tensors_in

        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        found = first_non_finite(tensors_in(checkpoint.get("state_dict", {})))
        if found is not None:
            raise NonFiniteError(f"non-finite weight {found[0]} = {found[1]}: not saving {path}")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Callable | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load a Lightning checkpoint with ``weights_only=True``; anything else is a ``CheckpointError``.

        Args:
            path: the checkpoint file.
            map_location: ignored; tensors are loaded on CPU and Lightning moves them.
            weights_only: ``None`` or ``True``; ``False`` (trusting arbitrary pickles) is refused.
        """
        if weights_only is False:
            raise CheckpointError(f"refusing to load {path} with weights_only disabled: the testbed never unpickles")
        if str(path).startswith(("http://", "https://", "s3://", "gs://")):
            raise CheckpointError(f"remote checkpoints are not loaded by the testbed; copy {path} to a local file")
        checkpoint = load_torch_file(path, what="Lightning checkpoint")
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
        return checkpoint

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        """Delete a checkpoint file (missing files are ignored)."""
        Path(path).unlink(missing_ok=True)


def check_ckpt_path(ckpt_path: str | os.PathLike | None) -> None:
    """Fail early (before any run folder is written) if ``--ckpt_path`` is not a safe, loadable Lightning checkpoint.

    Lightning's own keywords (``last``, ``best``, ``hpc``, ``registry``) are left to Lightning. The file is read with
    ``mmap=True`` so the check costs almost nothing even for large checkpoints.
    """
    if ckpt_path is None or str(ckpt_path) in LIGHTNING_CKPT_KEYWORDS:
        return
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"--ckpt_path: Lightning checkpoint not found: {path}")
    if not looks_like_torch_file(path):
        raise CheckpointError(f"--ckpt_path: {path} is not a checkpoint file (not a complete torch.save archive)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        checkpoint = load_torch_file(path, what="Lightning checkpoint")  # raises with the clear message
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"--ckpt_path: {path} is not a Lightning checkpoint (no 'state_dict' entry)")


class ResumableRng(pl.Callback):
    """Save the global RNG states in checkpoints and restore them when training resumes.

    The states are put back as soon as Lightning restores the callbacks, which is before it builds the training
    DataLoader iterator (that draws a base seed, then the sampler draws the shuffle): the same order of draws as at
    the start of the next epoch of an uninterrupted run. Correct under every strategy (each process keeps its own).
    """

    supported_strategies = ALL_FAMILIES

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        version, mt_state, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": {"version": int(version), "state": torch.tensor(mt_state, dtype=torch.int64),
                       "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        np_state = state_dict["numpy"]
        np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                             np_state["has_gauss"], np_state["cached"]))
        py_state = state_dict["python"]
        mt_state = tuple(int(x) for x in py_state["state"].tolist())
        random.setstate((py_state["version"], mt_state, py_state["gauss_next"]))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


__all__ = [
    "LIGHTNING_CKPT_KEYWORDS",
    "SafeCheckpointIO",
    "check_ckpt_path",
    "ResumableRng",
]
