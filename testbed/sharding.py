"""Sharded (FSDP2) training, and the reductions that keep flat-vector algebra exact on sharded parameters.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) every trainable parameter is a ``DTensor`` whose local tensor
holds a slice of its rows on each rank. A flat vector over the trainable parameters is then, on each rank, the
concatenation of the local slices a_r, and

    <a, b> = Σ_r <a_r, b_r>        (a local partial sum, then an all-reduce over the mesh dimensions that shard)

while a linear combination of such vectors is computed slice by slice with no communication. For plain tensors
(one process, or DDP where every rank holds the whole vector) no reduction is needed, so the same code is exact
everywhere. A vector-Jacobian product on sharded parameters is an ordinary ``backward`` (FSDP2 all-gathers the
weights for the forward pass and reduce-scatters the gradient, averaging over ranks, into each parameter's local
slice): every rank evaluates the same scalar on the whole probe batch, so the average is that scalar's gradient.

``FSDP2Strategy`` is Lightning's ``ModelParallelStrategy`` made to shard any ``TestbedModule`` as it stands:
after the module's own ``configure_model`` it applies ``fully_shard`` to each unit (by default every element of
every ``nn.ModuleList``: toy blocks, decoder layers) and then to the root, over a one-dimensional data-parallel
mesh of all processes (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from testbed.errors import ConfigError

__all__ = [
    "local",
    "is_sharded",
    "ShardGroups",
    "shard_groups",
    "all_reduce_sum",
    "backward_grads",
    "local_numel",
    "full_flat",
    "local_flat",
    "default_root",
    "shard_module",
    "FSDP2Strategy",
]

ShardGroups = tuple[Any, ...]  # process groups of the mesh dimensions along which the parameters are split


def local(tensor: Tensor) -> Tensor:
    """The local part of ``tensor`` (its shard for a ``DTensor``, the tensor itself otherwise)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def is_sharded(params: Sequence[Tensor]) -> bool:
    """Whether any of ``params`` is split across processes (a ``DTensor`` with a ``Shard`` placement)."""
    return bool(shard_groups(params))


def shard_groups(params: Sequence[Tensor]) -> ShardGroups:
    """Process groups to all-reduce a partial sum over ``params``' local parts (empty for plain tensors/DDP).

    Every sharded parameter must use the same mesh and placements (as ``fully_shard`` does); a mixture would make
    a flat vector's slices live on different process sets, which no single reduction can sum.
    """
    layout = None
    for p in params:
        if not isinstance(p, DTensor):
            continue
        here = (p.device_mesh, tuple(p.placements))
        if layout is None:
            layout = here
        elif here != layout:
            raise ConfigError("trainable parameters are sharded over different meshes or placements; "
                              "shard them all with one fully_shard mesh")  # fmt: skip
    if layout is None:
        return ()
    mesh, placements = layout
    return tuple(mesh.get_group(d) for d, place in enumerate(placements) if isinstance(place, Shard))


def all_reduce_sum(tensor: Tensor, groups: ShardGroups | Sequence[Tensor]) -> Tensor:
    """Sum ``tensor`` (a partial sum over local slices) in place across ``groups`` and return it.

    Args:
        tensor: the local partial sum (any shape).
        groups: ``shard_groups(params)``, or the parameters themselves; no groups means no communication.
    """
    if groups and not isinstance(groups[0], dist.ProcessGroup):
        groups = shard_groups(groups)
    for group in groups:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def backward_grads(scalar: Callable[[], Tensor], params: Sequence[nn.Parameter]) -> list[Tensor | None]:
    """Gradients of ``scalar()`` with respect to ``params`` by an ordinary backward pass (works under FSDP2).

    The parameters' existing ``.grad`` (the training gradient) is set aside and put back afterwards; the returned
    gradients are the local slices for sharded parameters. ``scalar`` builds the graph (a forward pass) itself, so
    under FSDP2 the weights are all-gathered for it and the gradient is reduce-scattered by FSDP's own hooks.
    """
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        with torch.enable_grad():
            scalar().backward()
        return [None if p.grad is None else local(p.grad).detach().clone() for p in params]
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g


def local_numel(params: Sequence[Tensor]) -> int:
    """The number of coordinates this process holds of ``params`` (P itself unless they are sharded)."""
    return sum(local(p).numel() for p in params)


def full_flat(flat: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The whole flat vector(s) ``[..., P]`` from this process's slices ``[..., P_local]`` (a collective if sharded).

    Every process must call it (it all-gathers each sharded parameter's piece); plain parameters return ``flat``.
    """
    if not is_sharded(params):
        return flat
    out, start = [], 0
    for p in params:
        n = local(p).numel()
        piece = flat[..., start : start + n]
        start += n
        if not isinstance(p, DTensor):
            out.append(piece)
            continue
        lead = piece.shape[:-1]
        shaped = piece.reshape(*lead, *local(p).shape).movedim(tuple(range(len(lead))), tuple(range(-len(lead), 0)))
        shape = (*p.shape, *lead)
        whole = DTensor.from_local(shaped.contiguous(), p.device_mesh, p.placements, run_check=False, shape=shape,
                                   stride=torch.empty(shape, device="meta").stride()).full_tensor()  # fmt: skip
        out.append(whole.movedim(tuple(range(-len(lead), 0)), tuple(range(len(lead)))).reshape(*lead, -1))
    return torch.cat(out, dim=-1)


def local_flat(flat: Tensor, params: Sequence[Tensor]) -> Tensor:
    """This process's slices ``[..., P_local]`` of whole flat vector(s) ``[..., P]`` (no communication)."""
    if not is_sharded(params):
        return flat
    out, start = [], 0
    for p in params:
        piece = flat[..., start : start + p.numel()]
        start += p.numel()
        if isinstance(p, DTensor):
            lead = piece.shape[:-1]
            whole = piece.reshape(*lead, *p.shape).movedim(tuple(range(len(lead))), tuple(range(-len(lead), 0)))
            part = distribute_tensor(whole.contiguous(), p.device_mesh, p.placements, src_data_rank=None).to_local()
            piece = part.movedim(tuple(range(-len(lead), 0)), tuple(range(len(lead)))).reshape(*lead, -1)
        out.append(piece)
    return torch.cat(out, dim=-1)


def _module_lists(module: nn.Module) -> list[nn.Module]:
    return [child for m in module.modules() if isinstance(m, nn.ModuleList) for child in m]


def _submodule(module: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return module.get_submodule(path) if path else module
    except AttributeError:
        raise ConfigError(f"FSDP2 {what} {path!r} is not a submodule of {type(module).__name__}") from None


def default_root(module: nn.Module) -> str:
    """``model`` when ``module`` wraps its network there (``testbed.llm.CausalLMModule``), else ``""`` (itself)."""
    inner = getattr(module, "model", None)
    if isinstance(inner, nn.Module) and sum(1 for _ in inner.parameters()) == sum(1 for _ in module.parameters()):
        return "model"
    return ""


def shard_module(module: nn.Module, mesh: Any, units: Sequence[str] | None = None, root: str | None = None,
                 reshard_after_forward: bool = True) -> nn.Module:  # fmt: skip
    """Apply ``fully_shard`` to each unit of ``module`` (innermost first) and then to its root; idempotent.

    Args:
        module: the model (a ``TestbedModule``).
        mesh: the data-parallel device mesh.
        units: module paths to shard as units (default: every element of every ``nn.ModuleList`` under the root).
        root: module path of the root to shard last (default ``default_root``; ``""``: ``module`` itself). It must
            be the module whose ``forward`` the training and probe passes call, so FSDP's root hooks run.
        reshard_after_forward: free the gathered weights after each forward (less memory, one more gather).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    root = default_root(module) if root is None else root
    top = _submodule(module, root, "root")
    if isinstance(top, FSDPModule):
        return module
    chosen = [_submodule(module, u, "unit") for u in units] if units is not None else _module_lists(top)
    depth = {id(m): len(name.split(".")) for name, m in module.named_modules()}
    for unit in sorted(chosen, key=lambda m: -depth.get(id(m), 0)):
        if any(True for _ in unit.parameters()):
            fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(top, mesh=mesh, reshard_after_forward=reshard_after_forward)
    left = [name for name, p in module.named_parameters() if not isinstance(p, DTensor)]
    if left:
        raise ConfigError(f"FSDP2: parameters outside the sharded root {root or '(the module)'!r}: "
                          f"{', '.join(left[:5])}; set root to a module that holds every parameter")  # fmt: skip
    return module


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 (``fully_shard``) over all processes, applied to any ``TestbedModule`` after its ``configure_model``.

    Args:
        units: module paths sharded as units (default: every element of every ``nn.ModuleList`` under the root:
            toy blocks, decoder layers).
        root: module path of the root the forward passes run through (default: ``model`` when the module keeps its
            whole network there, as ``testbed.llm.CausalLMModule`` does, else the LightningModule itself).
        reshard_after_forward: free gathered weights after each unit's forward.
        process_group_backend: ``gloo`` (CPU) or ``nccl`` (GPU); default by device.

    Checkpoints hold the full weights, gathered on rank 0 into one file (as with the other strategies), so the
    testbed's safe checkpoint loading, resuming and ``vrev`` from checkpoints work unchanged.
    """

    def __init__(
        self,
        units: list[str] | None = None,
        root: str | None = None,
        reshard_after_forward: bool = True,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=False,
                         process_group_backend=process_group_backend)  # fmt: skip
        if units is not None and not all(isinstance(u, str) and u for u in units):
            raise ConfigError(f"FSDP2 units must be non-empty module paths, got {units!r}")
        if root is not None and not isinstance(root, str):
            raise ConfigError(f"FSDP2 root must be a module path, got {root!r}")
        self.units = None if units is None else list(units)
        self.root = root
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        # every process is one data-parallel rank (the parent's "auto" means one per node)
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()
        module = self.lightning_module
        module.configure_model = partial(self._configure_and_shard, module, module.configure_model)

    def _configure_and_shard(self, module: pl.LightningModule, configure: Callable[[], None]) -> None:
        """The module's own ``configure_model``, then ``fully_shard`` over the data-parallel mesh."""
        configure()
        shard_module(module, self.device_mesh["data_parallel"], self.units, self.root, self.reshard_after_forward)
