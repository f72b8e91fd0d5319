"""Inner products over the flat parameter vector as partial sums per process plus one all-reduce.

Every number the curvature account takes over the P trainable parameters — the Gram matrix G Gᵀ of per-example
gradients, projections V x onto the subspace, norms — is a sum over coordinates. A ``FlatPartition`` names the slice
[start, stop) of coordinates this process sums over; the partial sums of all processes are added by one all-reduce:

    (A Bᵀ)_{ij} = Σ_r Σ_{c ∈ slice_r} A_{ic} B_{jc}.

Under DDP every process holds all P coordinates and the slices are a fixed split of them, so each process does 1/W
of the arithmetic and all get the same sums. Under FSDP2 (``sharded``) a flat vector on each process is already its
own slice (the concatenated local shards, ``testbed.sharding``): the partition covers all of it and the same
all-reduce adds the shards' partial sums. One process: the slice is everything and nothing is reduced. Vectors that
are not inner products (a gradient averaged over the processes' batches) use ``average``, an all-reduce mean of whole
vectors under DDP; under FSDP2 the backward pass has already averaged them (reduce-scatter), so it is the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from testbed.sharding import ShardGroups, all_reduce_sum, local_numel, shard_groups

__all__ = ["FlatPartition"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass(frozen=True)
class FlatPartition:
    """The coordinates [start, stop) of a length-``size`` flat vector that this process sums over.

    Attributes:
        size: P, the length of the flat parameter vector.
        start: first coordinate summed here.
        stop: one past the last coordinate summed here.
        world_size: number of processes whose partial sums are added (1: no reduction).
        sharded: the flat vectors hold this process's shards only (FSDP2); ``size`` is then the local length.
        total: P over all processes (the global length; ``size`` unless sharded).
        groups: the process groups the shards live on (``testbed.sharding.shard_groups``); a sharded partial sum is
            reduced over these, exactly as the blockers' flat algebra does.
    """

    size: int
    start: int = 0
    stop: int = -1
    world_size: int = 1
    sharded: bool = False
    total: int = -1
    groups: ShardGroups = ()

    def __post_init__(self) -> None:
        if self.stop < 0:
            object.__setattr__(self, "stop", self.size)
        if self.total < 0:
            object.__setattr__(self, "total", self.size)

    @classmethod
    def split(cls, size: int, rank: int, world_size: int) -> FlatPartition:
        """Process ``rank``'s share of a near-equal contiguous split of ``size`` coordinates."""
        bounds = [size * r // world_size for r in range(world_size + 1)]
        return cls(size, bounds[rank], bounds[rank + 1], world_size)

    @classmethod
    def current(cls, params: Sequence[Tensor]) -> FlatPartition:
        """The partition of the trainable parameters ``params`` for the running process group, or one process.

        Sharded parameters (FSDP2) make each process sum over its own shards and reduce over their shard groups;
        otherwise (DDP) every process holds the full vector, which is split.
        """
        size = sum(p.numel() for p in params)
        if not _distributed():
            return cls(size)
        groups = shard_groups(params)
        if groups:
            return cls(local_numel(params), world_size=dist.get_world_size(), sharded=True, total=size, groups=groups)
        return cls.split(size, dist.get_rank(), dist.get_world_size())

    @property
    def part(self) -> slice:
        return slice(self.start, self.stop)

    def reduce(self, partial: Tensor) -> Tensor:
        """The sum of every process's ``partial`` (a new tensor; identity for one process)."""
        if self.world_size <= 1:
            return partial
        total = partial.detach().clone()
        if self.sharded:
            return all_reduce_sum(total, self.groups)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def average(self, vector: Tensor) -> Tensor:
        """The mean of ``vector`` over processes (e.g. a gradient of each process's share of a batch).

        Sharded vectors come from a backward pass that averaged them already: returned as they are.
        """
        return vector if self.sharded else self.reduce(vector) / self.world_size

    def matmul(self, a: Tensor, b: Tensor) -> Tensor:
        """a bᵀ for a [m, P] (or [P]) and b [n, P] (or [P]), summed over this slice and reduced."""
        right = b[..., self.part]
        return self.reduce(a[..., self.part] @ (right.T if right.dim() > 1 else right))

    def norm(self, x: Tensor) -> Tensor:
        """‖x‖ of a flat vector [P]."""
        return self.reduce(x[self.part] @ x[self.part]).clamp_min(0).sqrt()

    def broadcast(self, obj: Any) -> Any:
        """``obj`` from process 0 on every process (a Python object; identity for one process)."""
        if self.world_size <= 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def orthonormalize(self, rows: Tensor) -> Tensor:
        """Orthonormal rows [k, P] spanning the same space as ``rows`` (Cholesky of the reduced k × k Gram matrix).

        Keeps the order of the rows (row i mixes only rows ≤ i), so eigenvectors stay matched to their eigenvalues to
        round-off; the factorisation is done in float64, the rows stay in their precision.
        """
        gram = self.matmul(rows, rows).double()
        chol = torch.linalg.cholesky(0.5 * (gram + gram.T))
        return torch.linalg.solve_triangular(chol.to(rows.dtype), rows, upper=False)
