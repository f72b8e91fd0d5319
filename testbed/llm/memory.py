"""A rough memory estimate of a causal-LM fine-tune, printed before ``fit``.

For P parameters (T of them trained), b bytes per weight at the chosen precision (2 for ``bf16-true``/``16-true``,
4 otherwise: mixed precision keeps fp32 weights), batch B, sequence S, width h, L layers, vocabulary V:

- weights ``P·b``; gradients ``T·b``; optimizer state ``8·T`` (AdamW: two fp32 moments) or ``4·T`` (SGD with
  momentum);
- activations: about ``34·B·S·h·(a/2)`` bytes per layer at a bytes per activation (Korthikanti et al. 2022, with an
  efficient attention kernel so the ``5·a·S/h`` score term is left out), or ``2·B·S·h·(a/2)`` per layer plus one
  layer's worth under gradient checkpointing; plus the fp32 logits and their gradient, ``8·B·S·V``.

The figure is an estimate for planning (CUDA context, allocator fragmentation and the probe passes are not counted).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MemoryEstimate", "estimate_memory", "size", "weight_bytes", "activation_bytes"]

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
    """Bytes of each part of a training step's memory."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    precision: str
    batch_size: int
    seq_len: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        """One line: each part and the total (GiB, or MiB below one GiB)."""
        parts = ", ".join(f"{name} {size(getattr(self, name))}"
                          for name in ("weights", "gradients", "optimizer", "activations"))  # fmt: skip
        return (f"memory estimate ({self.precision}, batch {self.batch_size} x {self.seq_len} tokens): {parts}; "
                f"total {size(self.total)}")  # fmt: skip


def estimate_memory(
    n_params: int, n_trainable: int, width: int, n_layers: int, vocab: int, batch_size: int, seq_len: int,
    precision: str = "32-true", optimizer: str = "adamw", gradient_checkpointing: bool = False,
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
    """
    b, a = weight_bytes(precision), activation_bytes(precision)
    tokens = batch_size * seq_len
    per_layer = 34 * tokens * width * a // 2
    kept = (2 * tokens * width * a // 2) * n_layers + per_layer if gradient_checkpointing else per_layer * n_layers
    return MemoryEstimate(
        weights=n_params * b, gradients=n_trainable * b, optimizer=(8 if optimizer == "adamw" else 4) * n_trainable,
        activations=kept + 8 * tokens * vocab, precision=str(precision), batch_size=batch_size, seq_len=seq_len,
    )  # fmt: skip
