"""What the curvature callbacks share: the safety batch, the subspace S estimated at θ*, and θ* itself.

At the start of training (θ* = the weights fine-tuning starts from) a ``SubspaceCallback`` reads the datamodule's
``safety_batch()``, checks the sizes (d < N for the Fisher, d < P, a non-empty safety set, trainable parameters) and
estimates S as its ``SubspaceSettings`` say (``testbed.curvature.estimate_subspace``). Callbacks of one run with equal
settings estimate S once: a later one takes the earlier one's. Inner products are reduced over a ``FlatPartition``,
so under DDP every process holds the same S. The state (S, θ*) is saved in checkpoints for an exact resume.

Strategies: one device, DDP, and FSDP2 (``testbed.sharding.FSDP2Strategy``). Under FSDP2 each process holds the
slices of S, θ* and every flat vector that match its parameter shards; inner products are partial sums plus an
all-reduce, gradients come from ordinary backward passes that every process runs together, and checkpoints hold the
whole S and θ* (gathered), sliced again on resume.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import Tensor

from testbed.curvature.estimate import SubspaceSettings, estimate_subspace, safety_subset
from testbed.curvature.partition import FlatPartition
from testbed.curvature.per_example import chunks, trainable
from testbed.curvature.subspace import Subspace
from testbed.errors import ConfigError, as_settings
from testbed.interventions.base import require_protocol
from testbed.interventions.flat import flatten, trainable_parameters
from testbed.probes import batch_size, map_batch, probe_mode
from testbed.protocol import TestbedModule
from testbed.sharding import backward_grads, full_flat, is_sharded, local_flat
from testbed.strategies import FULL_PARAMETERS

__all__ = ["SubspaceCallback"]


class SubspaceCallback(pl.Callback):
    """Holds the safety batch, S and θ* (the flat trainable parameters when training starts).

    Args:
        subspace: how S is estimated (``SubspaceSettings``: d, n, method fisher/hessian/random, ...).
    """

    supported_strategies: ClassVar[frozenset[str]] = FULL_PARAMETERS | {"fsdp2"}

    def __init__(self, subspace: SubspaceSettings | None = None) -> None:
        super().__init__()
        self.settings: SubspaceSettings = as_settings(SubspaceSettings, subspace, "subspace") or SubspaceSettings()
        self.subspace: Subspace | None = None
        self.partition: FlatPartition | None = None
        self.safety: Any = None
        self.theta_star: Tensor | None = None
        self.shared_from: str | None = None
        self._params: list[torch.nn.Parameter] = []
        self._restored: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(**asdict(self.settings))

    def needs_safety_batch(self) -> bool:
        return self.settings.method != "random"

    def params(self, module: TestbedModule) -> list[torch.nn.Parameter]:
        return trainable_parameters(module)

    def flat_params(self, module: TestbedModule) -> Tensor:
        params = self.params(module)
        return flatten(params, params)

    def safety_gradient(self, module: TestbedModule, batch: Any = None) -> Tensor:
        """∇u at the current weights on ``batch`` (default: the safety batch), flat [P] (eval mode, RNG isolated).

        One backward pass per ``chunk_size`` examples, summed: the activations of one chunk are alive at a time.
        """
        params = self.params(module)
        batch = self.safety if batch is None else batch
        n = batch_size(batch)
        total: Tensor | None = None
        with probe_mode(module, grad=True):
            for _, chunk in chunks(batch, self.settings.chunk_size):
                part = lambda chunk=chunk: module.safety_losses(chunk).double().sum() / n  # noqa: E731
                if is_sharded(params):  # every process runs it on the whole batch: FSDP's average is the gradient
                    grads = backward_grads(part, params)
                else:
                    grads = torch.autograd.grad(part(), params, allow_unused=True)
                flat = flatten(grads, params)
                total = flat if total is None else total + flat
        return total

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module = require_protocol(pl_module)
        params = [p for _, p in trainable(module)]
        self._params = self.params(module)
        self.partition = FlatPartition.current(params)
        if self.needs_safety_batch():
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "safety_batch"):
                raise ConfigError(f"{type(self).__name__} needs a datamodule with safety_batch() (a TestbedDataModule)")
            batch = safety_subset(datamodule.safety_batch(), self.settings.n)
            self.safety = map_batch(batch, lambda t: t.to(pl_module.device))
        if self._restored is not None:
            self.restore(self._restored, pl_module.device)
            self._restored = None
            return
        self.theta_star = self.flat_params(module).clone()
        sibling = self._sibling(trainer)
        if sibling is not None:
            self.subspace, self.shared_from = sibling.subspace, type(sibling).__name__
        else:
            self.subspace = estimate_subspace(module, self.safety, self.settings, self.partition).to(pl_module.device)

    def _sibling(self, trainer: pl.Trainer) -> SubspaceCallback | None:
        """An earlier callback of this run that already estimated S with the same settings (at the same θ*)."""
        for callback in trainer.callbacks:
            if callback is self:
                return None
            if (isinstance(callback, SubspaceCallback) and callback.subspace is not None
                    and callback.settings == self.settings and torch.equal(callback.theta_star, self.theta_star)):
                return callback
        return None

    # ---- resumable state (Lightning restores it before on_train_start) ------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.subspace is None:
            return {}
        record = self.subspace.record()  # whole vectors (gathered from the shards under FSDP2: every process calls it)
        record["basis"] = full_flat(self.subspace.basis, self._params).detach().cpu()
        return {"subspace": record, "theta_star": full_flat(self.theta_star, self._params).detach().cpu()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict) if state_dict else None

    def restore(self, state: dict[str, Any], device: torch.device) -> None:
        """Put back what ``state_dict`` saved (called at the start of a resumed run)."""
        subspace = Subspace.from_record(state["subspace"])
        subspace.basis = local_flat(subspace.basis.to(device), self._params)
        self.subspace = subspace.to(device)
        self.theta_star = local_flat(state["theta_star"].to(device), self._params)
