"""A rough memory estimate of a causal-LM fine-tune, printed before ``fit``.

For P parameters (T of them trained), b bytes per weight at the chosen precision (2 for ``bf16-true``/``16-true``,
4 otherwise: mixed precision keeps fp32 weights), batch B, sequence S, width h, L layers, vocabulary V:

- weights ``P·b``; gradients ``T·b``; optimizer state ``8·T`` (AdamW: two fp32 moments) or ``4·T`` (SGD with
  momentum);
- activations: about ``34·B·S·h·(a/2)`` bytes per layer at a bytes per activation (Korthikanti et al. 2022, with an
  efficient attention kernel so the ``5·a·S/h`` score term is left out), or ``2·B·S·h·(a/2)`` per layer plus one
  layer's worth under gradient checkpointing; plus the fp32 logits and their gradient, ``8·B·S·V``;
- with a ``CurvatureMonitor``/``SubspaceBlocker`` estimating a Fisher subspace: the per-example gradients G of its N
  safety examples, ``N·T·4`` bytes (8 for float64 weights), held while S is estimated at the start (the largest N of
  such callbacks: each frees its G before the next; under FSDP2 each process holds its shards' columns only).

The figure is an estimate for planning (CUDA context, allocator fragmentation and the probe passes are not counted).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["MemoryEstimate", "estimate_memory", "size", "weight_bytes", "activation_bytes", "fisher_examples",
           "per_example_gradient_bytes"]  # fmt: skip

GIB = 2**30


def size(n_bytes: int) -> str:
    """``n_bytes`` in GiB, or in MiB below one GiB."""
    return f"{n_bytes / GIB:.2f} GiB" if n_bytes >= GIB else f"{n_bytes / 2**20:.1f} MiB"


def weight_bytes(precision: str) -> int:
    """Bytes per stored weight under a Lightning precision string."""
    return 2 if str(precision) in ("bf16-true", "16-true", "bf16", "16") else 4


def activation_bytes(precision: str) -> int:
    """Bytes per activation: 2 under any 16-bit precision (mixed or true), else 4."""
    return 2 if str(precision).startswith(("bf16", "16")) else 4


@dataclass
class MemoryEstimate:
    """Bytes of each part of a training step's memory (``per_example_gradients``: the curvature account's G)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    precision: str
    batch_size: int
    seq_len: int
    per_example_gradients: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.per_example_gradients

    def describe(self) -> str:
        """One line: each part and the total (GiB, or MiB below one GiB)."""
        names = ("weights", "gradients", "optimizer", "activations")
        names += ("per_example_gradients",) if self.per_example_gradients else ()
        parts = ", ".join(f"{name.replace('_', ' ').replace('per example', 'per-example')} {size(getattr(self, name))}"
                          for name in names)  # fmt: skip
        return (f"memory estimate ({self.precision}, batch {self.batch_size} x {self.seq_len} tokens): {parts}; "
                f"total {size(self.total)}")  # fmt: skip


def estimate_memory(
    n_params: int, n_trainable: int, width: int, n_layers: int, vocab: int, batch_size: int, seq_len: int,
    precision: str = "32-true", optimizer: str = "adamw", gradient_checkpointing: bool = False,
    per_example_gradients: int = 0,
) -> MemoryEstimate:
    """The estimate of the module docstring.

    Args:
        n_params: all parameters.
        n_trainable: trained parameters (with LoRA: the adapters).
        width: hidden size h.
        n_layers: decoder layers L.
        vocab: vocabulary size V.
        batch_size: sequences per step B.
        seq_len: tokens per sequence S.
        precision: Lightning precision string.
        optimizer: ``adamw`` or ``sgd``.
        gradient_checkpointing: whether layer activations are recomputed in the backward pass.
        per_example_gradients: bytes of the curvature account's per-example gradients (``per_example_gradient_bytes``).
    """
    b, a = weight_bytes(precision), activation_bytes(precision)
    tokens = batch_size * seq_len
    per_layer = 34 * tokens * width * a // 2
    kept = (2 * tokens * width * a // 2) * n_layers + per_layer if gradient_checkpointing else per_layer * n_layers
    return MemoryEstimate(
        weights=n_params * b, gradients=n_trainable * b, optimizer=(8 if optimizer == "adamw" else 4) * n_trainable,
        activations=kept + 8 * tokens * vocab, precision=str(precision), batch_size=batch_size, seq_len=seq_len,
        per_example_gradients=per_example_gradients,
    )  # fmt: skip


def fisher_examples(callbacks: Iterable[Any], datamodule: Any = None) -> int:
    """The largest N of the callbacks that estimate a Fisher subspace (``SubspaceSettings.n``, else the size of the
    datamodule's ``safety_batch()``); 0 when none does."""
    from testbed.interventions.subspace_base import SubspaceCallback  # the callbacks import torch and Lightning

    fisher = [cb.settings for cb in callbacks if isinstance(cb, SubspaceCallback) and cb.settings.method == "fisher"]
    if not fisher:
        return 0
    whole = 0
    if any(s.n is None for s in fisher) and hasattr(datamodule, "safety_batch"):
        from testbed.probes import batch_size

        whole = batch_size(datamodule.safety_batch())
    return max(whole if s.n is None else s.n for s in fisher)


def per_example_gradient_bytes(callbacks: Iterable[Any], n_trainable: int, datamodule: Any = None,
                               float64: bool = False) -> int:  # fmt: skip
    """``N·T·4`` bytes (8 with ``float64`` weights) of the per-example gradients of ``fisher_examples``.

    Args:
        callbacks: the trainer's callbacks.
        n_trainable: trained parameters T.
        datamodule: gives N through ``safety_batch()`` when a callback's ``subspace.n`` is unset.
        float64: the trained weights are float64 (the working precision of G).
    """
    return fisher_examples(callbacks, datamodule) * n_trainable * (8 if float64 else 4)
