"""The probe protocol: the small surface through which the shared layer sees any model.

A ``TestbedModule`` names its layers, returns the module whose output is the residual stream at a layer,
runs a forward pass on a probe batch, and pools per-token states to one vector per input. From these the
base class gives ``representations(batch, layers, pooling)`` -> ``{layer: [B, width]}`` (differentiable,
so blockers can take vector-Jacobian products). A ``TestbedDataModule`` supplies a fixed ``probe_batch()``.
Toys and Hugging Face causal LMs both implement this; metrics and interventions use nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from testbed.errors import ConfigError
from testbed.io import load_state_dict

Pooling = Literal["last", "mean"]


def _stream(output: Any) -> Tensor:
    """The hidden-state tensor in a layer's output (HF v5 layers return a Tensor; older ones a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class TestbedModule(pl.LightningModule):
    """Base LightningModule of the testbed.

    Args:
        init_from: optional path to weights (Lightning ``.ckpt``, ``state_dict`` ``.pt`` or ``.safetensors``)
            loaded before training; this is how a phase starts from the previous phase's checkpoint.
    """

    def __init__(self, init_from: str | None = None) -> None:
        super().__init__()
        self.init_from = init_from
        self._initial_weights_loaded = False

    # ---- protocol: subclasses implement these -------------------------------------------------
    def layer_names(self) -> list[str]:
        """Names of the layers whose representations can be read, e.g. ``blocks.1.resid_post``."""
        raise NotImplementedError

    def layer_module(self, name: str) -> nn.Module:
        """The submodule whose forward output is the stream at layer ``name``."""
        raise NotImplementedError

    def forward_probe(self, batch: Any) -> None:
        """Run the forward pass that produces the layer streams for ``batch`` (the output is ignored)."""
        raise NotImplementedError

    def pool(self, hidden: Tensor, batch: Any, pooling: Pooling) -> Tensor:
        """Reduce ``hidden`` ([B, W] or [B, T, W]) to [B, W]. Token models override to honour masks."""
        if hidden.dim() == 2:
            return hidden
        return hidden[:, -1] if pooling == "last" else hidden.mean(dim=1)

    # ---- protocol: provided -------------------------------------------------------------------
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs that training updates (with LoRA: only the adapter weights)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def check_layers(self, layers: Sequence[str]) -> list[str]:
        """Return ``layers`` as a list, or raise a ``ConfigError`` naming the unknown ones and the valid names."""
        valid = self.layer_names()
        unknown = [name for name in layers if name not in valid]
        if unknown:
            raise ConfigError(f"unknown layer name(s) {unknown}; valid layers are: {', '.join(valid)}")
        if not layers:
            raise ConfigError(f"no layers given; valid layers are: {', '.join(valid)}")
        return list(layers)

    @contextmanager
    def capture(self, layers: Sequence[str]) -> Iterator[dict[str, Tensor]]:
        """Within the block, forward passes record the raw stream of each layer into the yielded dict."""
        captured: dict[str, Tensor] = {}
        handles = []
        for name in self.check_layers(layers):

            def hook(_mod: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
                captured[name] = _stream(out)  # returning None keeps the layer's output unchanged

            handles.append(self.layer_module(name).register_forward_hook(hook))
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def representations(self, batch: Any, layers: Sequence[str], pooling: Pooling = "mean") -> dict[str, Tensor]:
        """Pooled representations ``{layer: [B, width]}`` of ``batch``; differentiable w.r.t. the parameters."""
        with self.capture(layers) as captured:
            self.forward_probe(batch)
        return {name: self.pool(captured[name], batch, pooling) for name in layers}

    # ---- phase chaining -----------------------------------------------------------------------
    def load_initial_weights(self) -> None:
        """Load ``init_from`` once (idempotent); a shape or key mismatch is a clear ``ConfigError``."""
        if self.init_from is None or self._initial_weights_loaded:
            return
        state = load_state_dict(self.init_from)
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            detail = "; ".join(
                f"{label}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                if keys
            )
            raise ConfigError(f"init_from={self.init_from} does not fit {type(self).__name__} ({detail})")
        with torch.no_grad():
            self.load_state_dict(state, strict=True)
        self._initial_weights_loaded = True

    def setup(self, stage: str) -> None:
        self.load_initial_weights()


class TestbedDataModule(pl.LightningDataModule):
    """Base DataModule: adds ``probe_batch()``, the fixed inputs on which representations are read."""

    def probe_batch(self) -> Any:
        """A deterministic batch of probe inputs (same across calls, phases and arms for one config)."""
        raise NotImplementedError
