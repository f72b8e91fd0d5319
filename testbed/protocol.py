"""The probe protocol: the small surface through which the shared layer sees any model.

A ``TestbedModule`` has named layers, runs a forward pass on a probe batch, and pools per-token states to one
vector per input. Every readable activation has a module path (the TransformerLens idea): toys place a
``HookPoint`` (an identity module) at each named site, and the layer name *is* the module path below
``layer_root`` (e.g. ``blocks.1.hidden``), resolved with ``get_submodule``. A model whose layers are not its own
modules (the causal-LM module maps ``blocks.{i}.resid_post`` onto Hugging Face decoder layers) overrides
``layer_names`` and ``layer_module``. From these the base class gives ``representations(batch, layers, pooling)``
-> ``{layer: [B, width]}`` (differentiable, so blockers can take vector-Jacobian products). A
``TestbedDataModule`` supplies a fixed ``probe_batch()``. Metrics and interventions use nothing else.

The curvature account (``testbed.curvature``) adds three model methods and one data method: ``safety_losses(batch)``
-> per-example safety losses ℓ_i(θ) [N] (the safety loss is u(θ) = mean_i ℓ_i), ``fisher_scores(batch)`` -> the
per-example scalars s_i(θ) [N] whose gradients give the safety Fisher F = (1/N) Σ_i ∇s_i ∇s_iᵀ (default: ℓ_i, the
empirical Fisher), ``task_loss(batch)`` -> the fine-tune loss of a training batch, and the datamodule's
``safety_batch()`` (N safety examples in the training-batch format). ``curvature_mode()`` is the context those passes
run in (a module may switch to kernels that support ``torch.func.vmap`` and double backward).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import pytorch_lightning as pl
from torch import Tensor, nn

from testbed.errors import ConfigError
from testbed.step_log import HeldOutLogging
from testbed.weights import load_weights

__all__ = ["Pooling", "HookPoint", "stream_of", "TestbedModule", "TestbedDataModule"]

Pooling = Literal["last", "mean"]


class HookPoint(nn.Identity):
    """An identity module marking a readable activation; its module path is the layer's name."""


def stream_of(output: Any) -> Tensor:
    """The hidden-state tensor in a layer's output (HF v5 layers return a Tensor; older ones a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class TestbedModule(HeldOutLogging, pl.LightningModule):
    """Base LightningModule of the testbed; held-out metrics go through ``log_held_out`` (``testbed.step_log``).

    Args:
        init_from: optional path to weights (Lightning ``.ckpt``, ``state_dict`` ``.pt`` or ``.safetensors``)
            loaded before training; this is how a phase starts from the previous phase's checkpoint.
    """

    layer_root: str = ""  # module path below which layer names are module paths ("" = this module)

    def __init__(self, init_from: str | None = None) -> None:
        super().__init__()
        self.init_from = init_from
        self._initial_weights_loaded = False

    # ---- protocol: named layers -------------------------------------------------------------------------------
    def _hook_root(self) -> nn.Module:
        return self.get_submodule(self.layer_root) if self.layer_root else self

    def layer_names(self) -> list[str]:
        """Names of the layers whose representations can be read: the paths of the ``HookPoint`` modules."""
        return [name for name, mod in self._hook_root().named_modules() if isinstance(mod, HookPoint)]

    def layer_module(self, name: str) -> nn.Module:
        """The submodule whose forward output is the stream at layer ``name``."""
        self.check_layers([name])
        return self._hook_root().get_submodule(name)

    def check_layers(self, layers: Sequence[str]) -> list[str]:
        """Return ``layers`` as a list, or raise a ``ConfigError`` naming the unknown ones and the valid names."""
        valid = self.layer_names()
        unknown = [name for name in layers if name not in valid]
        if unknown:
            raise ConfigError(f"unknown layer name(s) {unknown}; valid layers are: {', '.join(valid)}")
        if not layers:
            raise ConfigError(f"no layers given; valid layers are: {', '.join(valid)}")
        return list(layers)

    # ---- protocol: subclasses implement the probe forward pass ---------------------------------------------------
    def forward_probe(self, batch: Any) -> None:
        """Run the forward pass that produces the layer streams for ``batch`` (the output is ignored)."""
        raise NotImplementedError

    def pool(self, hidden: Tensor, batch: Any, pooling: Pooling) -> Tensor:
        """Reduce ``hidden`` ([B, W] or [B, T, W]) to [B, W]. Token models override to honour masks."""
        if hidden.dim() == 2:
            return hidden
        return hidden[:, -1] if pooling == "last" else hidden.mean(dim=1)

    # ---- protocol: provided -----------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs that training updates (with LoRA: only the adapter weights)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    @contextmanager
    def capture(self, layers: Sequence[str]) -> Iterator[dict[str, Tensor]]:
        """Within the block, forward passes record the raw stream of each layer into the yielded dict."""
        captured: dict[str, Tensor] = {}
        handles = []
        for name in self.check_layers(layers):

            def hook(_mod: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
                captured[name] = stream_of(out)  # returning None keeps the layer's output unchanged

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

    # ---- protocol: the curvature account (testbed.curvature) ---------------------------------------------------
    def safety_losses(self, batch: Any) -> Tensor:
        """Per-example safety losses ℓ_i(θ) [N] of a safety batch; the safety loss is their mean u(θ).

        Must work on a batch of one example too (per-example gradients call it per example, under ``vmap``).
        """
        raise ConfigError(f"{type(self).__name__} has no per-example safety loss (safety_losses), which the "
                          "curvature account needs")

    def fisher_scores(self, batch: Any) -> Tensor:
        """Per-example scalars s_i(θ) [N] whose gradients give the safety Fisher F = (1/N) Σ_i ∇s_i ∇s_iᵀ.

        The default is the per-example safety loss (the empirical Fisher). A model whose safety loss is a squared
        error ½(f_i − y_i)² returns its outputs f_i instead: the Fisher of a unit-variance Gaussian likelihood (the
        Gauss–Newton matrix), which does not vanish where the residuals do.
        """
        return self.safety_losses(batch)

    def task_loss(self, batch: Any) -> Tensor:
        """The fine-tune (training) loss of one training batch, a scalar, without logging anything."""
        raise ConfigError(f"{type(self).__name__} has no task_loss(batch), which the curvature diagnostics need")

    @contextmanager
    def curvature_mode(self) -> Iterator[None]:
        """Context of the curvature passes (per-example gradients, Hessian-vector products); default: no change."""
        yield

    # ---- phase chaining -----------------------------------------------------------------------------------------
    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a foreign state dict onto this module's keys before a strict load (identity here)."""
        return state

    def load_initial_weights(self) -> None:
        """Load ``init_from`` once (idempotent); a mismatch is one clear ``CheckpointError``."""
        if self.init_from is None or self._initial_weights_loaded:
            return
        load_weights(self, self.init_from, what="init_from")
        self._initial_weights_loaded = True

    def setup(self, stage: str) -> None:
        self.load_initial_weights()


class TestbedDataModule(pl.LightningDataModule):
    """Base DataModule: adds ``probe_batch()``, the fixed inputs on which representations are read, and
    ``safety_batch()``, the safety examples of the curvature account."""

    def probe_batch(self) -> Any:
        """A deterministic batch of probe inputs (same across calls, phases and arms for one config)."""
        raise NotImplementedError

    def safety_batch(self) -> Any:
        """A deterministic batch of N safety examples (the skill alignment installed), in the training-batch format
        of the model's ``safety_losses``; the same across calls, phases and arms for one config."""
        raise ConfigError(f"{type(self).__name__} has no safety set (safety_batch), which the curvature account needs")
