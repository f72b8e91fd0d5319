"""The probe side of the protocol: a fixed probe batch with a fingerprint, and reading pooled representations.

A ``ProbeSet`` wraps the ``probe_batch()`` of a ``TestbedDataModule`` (a tensor, or a dict/tuple of tensors such
as ``{"input_ids", "attention_mask"}``). Its fingerprint is the sha256 of every tensor's dtype, shape and bytes,
so a direction file can tell whether it was computed on the same probes as the model in hand.

Reading is done through ``TestbedModule.representations`` only, so toys and Hugging Face models (with or
without peft) are handled identically. Reads are side-effect free: the global RNG is isolated, the module is
put in eval mode (no dropout noise) and restored afterwards, and gradients are off unless asked for.
For multi-process runs a probe batch can be sharded; sums and counts of the shards reduce to the same means.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from pytorch_lightning.utilities.seed import isolate_rng
from torch import Tensor, nn

from testbed.errors import ConfigError
from testbed.protocol import Pooling, TestbedModule
from testbed.sharding import is_sharded

POOLINGS = ("last", "mean")


def check_pooling(pooling: str) -> str:
    """Return ``pooling`` or raise a ``ConfigError`` listing the valid choices."""
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}; valid poolings are: {', '.join(POOLINGS)}")
    return pooling


def _tensors(batch: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """Yield ``(key path, tensor)`` for every tensor in a nested batch, in a deterministic order."""
    if isinstance(batch, Tensor):
        yield prefix, batch
    elif isinstance(batch, Mapping):
        for key in sorted(batch):
            yield from _tensors(batch[key], f"{prefix}.{key}")
    elif isinstance(batch, (list, tuple)):
        for i, item in enumerate(batch):
            yield from _tensors(item, f"{prefix}[{i}]")


def batch_size(batch: Any) -> int:
    """Leading dimension shared by the batch's tensors."""
    sizes = {t.shape[0] for _, t in _tensors(batch) if t.dim() > 0}
    if len(sizes) != 1:
        raise ConfigError(f"probe batch tensors must share one leading (batch) dimension, got sizes {sorted(sizes)}")
    return sizes.pop()


def map_batch(batch: Any, fn: Any) -> Any:
    """Apply ``fn`` to every tensor of a nested batch, keeping its structure."""
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: map_batch(v, fn) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(map_batch(v, fn) for v in batch)
    if isinstance(batch, list):
        return [map_batch(v, fn) for v in batch]
    return batch


def fingerprint(batch: Any) -> str:
    """sha256 over every tensor's key path, dtype, shape and bytes (device independent)."""
    digest = hashlib.sha256()
    found = False
    for key, tensor in _tensors(batch):
        found = True
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if not found:
        raise ConfigError("probe batch holds no tensors")
    return digest.hexdigest()


@contextmanager
def probe_mode(module: nn.Module, grad: bool = False) -> Iterator[None]:
    """Eval mode, isolated RNG and (unless ``grad``) no autograd; every submodule's mode is restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with isolate_rng(), torch.set_grad_enabled(grad):
            yield
    finally:
        for m, training in modes:
            m.training = training


class _ProbeDone(Exception):
    """Raised from a forward hook once every requested layer has been captured (ends the probe pass early)."""


def representations_until_last(module: TestbedModule, batch: Any, layers: Sequence[str], pooling: Pooling):
    """``module.representations`` that stops the forward pass once every requested layer has produced its output.

    Layers after the deepest requested one (and an LM head) are never run, and a backward pass through the result
    only traverses what was run: this roughly halves the cost of a probe vector-Jacobian product at a middle layer.
    A module that overrides ``representations`` is called as is, and so is a sharded (FSDP2) one: its weights are
    gathered and freed by hooks around each unit's forward, which an early exit would leave half done.
    """
    if type(module).representations is not TestbedModule.representations or is_sharded(list(module.parameters())):
        return module.representations(batch, layers, pooling)
    wanted = set(layers)
    with module.capture(layers) as captured:

        def stop(_mod: nn.Module, _inp: Any, _out: Any) -> None:
            if len(captured) == len(wanted):
                raise _ProbeDone

        handles = [module.layer_module(name).register_forward_hook(stop) for name in wanted]
        try:
            module.forward_probe(batch)
        except _ProbeDone:
            pass
        finally:
            for handle in handles:
                handle.remove()
    return {name: module.pool(captured[name], batch, pooling) for name in layers}


class ProbeSet:
    """A fixed probe batch and its fingerprint.

    Args:
        batch: a tensor or nested dict/tuple/list of tensors with one shared leading (batch) dimension.
    """

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self.size = batch_size(batch)
        if self.size < 1:
            raise ConfigError("probe batch is empty")
        self.fingerprint = fingerprint(batch)

    @classmethod
    def from_datamodule(cls, datamodule: Any) -> ProbeSet:
        """The probe set of a ``TestbedDataModule`` (anything with ``probe_batch()``)."""
        if datamodule is None or not hasattr(datamodule, "probe_batch"):
            raise ConfigError(
                "the reversion layer needs a datamodule with probe_batch() (a TestbedDataModule); "
                f"got {type(datamodule).__name__}"
            )
        return cls(datamodule.probe_batch())

    def to(self, device: torch.device | str) -> ProbeSet:
        """A copy on ``device`` (same fingerprint)."""
        moved = ProbeSet.__new__(ProbeSet)
        moved.batch = map_batch(self.batch, lambda t: t.to(device))
        moved.size, moved.fingerprint = self.size, self.fingerprint
        return moved

    def head(self, n: int) -> ProbeSet:
        """The first ``n`` probe inputs, as a probe set of their own."""
        return ProbeSet(map_batch(self.batch, lambda t: t[:n] if t.dim() > 0 else t))

    def shard(self, rank: int, world_size: int) -> Any:
        """The rows ``rank::world_size`` of the batch (possibly empty), for per-rank reads that are then reduced."""
        if world_size <= 1:
            return self.batch
        index = torch.arange(rank, self.size, world_size)
        return map_batch(self.batch, lambda t: t.index_select(0, index.to(t.device)) if t.dim() > 0 else t)

    def read(
        self,
        module: TestbedModule,
        layers: Sequence[str],
        pooling: Pooling = "mean",
        grad: bool = False,
        batch: Any = None,
    ) -> dict[str, Tensor]:
        """Pooled representations ``{layer: [B, width]}`` on the probe batch (or on ``batch``, e.g. a shard).

        Args:
            module: the model, through the probe protocol.
            layers: layer names; unknown names raise a ``ConfigError`` listing the valid ones.
            pooling: ``"last"`` token or ``"mean"`` over tokens (token models honour their attention mask).
            grad: keep the autograd graph (for vector-Jacobian products and penalties).
            batch: read this batch instead of the full probe batch.
        """
        layers = module.check_layers(layers)
        check_pooling(pooling)
        target = self.batch if batch is None else batch
        with probe_mode(module, grad=grad):
            reps = representations_until_last(module, target, layers, pooling)
        return reps if grad else {k: v.detach() for k, v in reps.items()}

    def mean(self, module: TestbedModule, layers: Sequence[str], pooling: Pooling = "mean", grad: bool = False):
        """Mean pooled representation per layer ``{layer: [width]}`` over the whole probe batch."""
        return {k: v.mean(dim=0) for k, v in self.read(module, layers, pooling, grad=grad).items()}


def probe_set_of(trainer: Any) -> ProbeSet:
    """The probe set of a trainer's datamodule, on the module's device."""
    probe = ProbeSet.from_datamodule(getattr(trainer, "datamodule", None))
    module = getattr(trainer, "lightning_module", None)
    return probe.to(module.device) if module is not None else probe


__all__ = [
    "ProbeSet",
    "POOLINGS",
    "check_pooling",
    "fingerprint",
    "batch_size",
    "map_batch",
    "probe_mode",
    "probe_set_of",
]
