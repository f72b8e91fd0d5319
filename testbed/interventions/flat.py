"""Flat-vector linear algebra over a model's trainable parameters.

Blockers and curvature estimates treat the trainable parameters θ = (p_1, …, p_m) as one vector of length
P = Σ numel(p_i). These helpers move between the per-parameter tensors and that vector, in a working precision
that is float64 when any parameter is float64 and float32 otherwise (bf16/fp16 parameters are widened), and
orthonormalise small sets of such vectors.

Sharded parameters (FSDP2 ``DTensor``s) contribute their local slice, so on each process a flat vector holds that
process's slices; ``flat_dot``, ``flat_norm``, ``flat_matvec`` and ``orthonormal_rows`` take the parameters the
vectors live ``over`` and then sum their partial inner products across processes (``testbed.sharding``). Linear
combinations need no communication. Without ``over`` (or for plain tensors, one process or DDP) nothing is reduced.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from testbed.errors import ConfigError
from testbed.sharding import all_reduce_sum, local

__all__ = [
    "trainable_parameters",
    "work_dtype",
    "flatten",
    "unflatten",
    "add_to_grads",
    "flat_dot",
    "flat_norm",
    "flat_matvec",
    "orthonormal_rows",
]


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters training updates, through the probe protocol when the module has it; at least one."""
    pairs = module.trainable_parameters() if hasattr(module, "trainable_parameters") else module.named_parameters()
    params = [p for _, p in pairs if p.requires_grad]
    if not params:
        raise ConfigError(f"{type(module).__name__} has no trainable parameters")
    return params


def work_dtype(params: Sequence[Tensor]) -> torch.dtype:
    """float64 if any parameter is float64, else float32."""
    return torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32


def flatten(tensors: Sequence[Tensor | None], like: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """One detached vector ``[P]`` of ``tensors`` (``None`` entries are zeros shaped like ``like``; local slices)."""
    dtype = dtype or work_dtype(like)
    return torch.cat(
        [
            torch.zeros(local(p).numel(), dtype=dtype, device=p.device)
            if t is None
            else local(t).detach().reshape(-1).to(dtype)
            for t, p in zip(tensors, like, strict=True)
        ]
    )


def unflatten(flat: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """Views of ``flat`` shaped like each of ``params``' local parts (the inverse of ``flatten``)."""
    out, start = [], 0
    for p in map(local, params):
        out.append(flat[start : start + p.numel()].view_as(p))
        start += p.numel()
    return out


def add_to_grads(params: Sequence[nn.Parameter], grads: Sequence[Tensor | None]) -> None:
    """``p.grad += g`` for each pair (creating ``p.grad`` where missing); ``None`` gradients are skipped."""
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            if g is None:
                continue
            if p.grad is None:
                p.grad = g.detach().to(p.dtype).clone()
            else:
                local(p.grad).add_(g.detach().to(p.grad.dtype))


def flat_dot(a: Tensor, b: Tensor, over: Sequence[Tensor] = ()) -> Tensor:
    """<a, b> of two flat vectors over the parameters ``over`` (summed across processes where they are sharded)."""
    return all_reduce_sum(torch.dot(a, b), over)


def flat_norm(a: Tensor, over: Sequence[Tensor] = ()) -> Tensor:
    """‖a‖ of a flat vector over the parameters ``over``."""
    return flat_dot(a, a, over).sqrt()


def flat_matvec(rows: Tensor, vec: Tensor, over: Sequence[Tensor] = ()) -> Tensor:
    """``rows @ vec`` (``[k]``) for flat rows ``[k, P]`` and a flat vector ``[P]`` over the parameters ``over``."""
    return all_reduce_sum(rows @ vec, over)


def orthonormal_rows(rows: Sequence[Tensor] | Tensor, eps: float = 1e-12, over: Sequence[Tensor] = ()) -> Tensor:
    """Orthonormal basis ``[k', P]`` of the span of ``rows`` (in their dtype); rows adding no new direction are dropped.

    One row is just normalised; several go through Gram-Schmidt twice in float64 (for stability). ``over``: the
    parameters the rows live over, when they may be sharded.
    """
    rows = list(rows)
    if len(rows) == 1:
        norm = flat_norm(rows[0], over)
        return (rows[0] / norm).unsqueeze(0) if norm > 0 else rows[0].new_zeros(0, rows[0].numel())
    basis: list[Tensor] = []
    for row in rows:
        vec = row.double()
        for _ in range(2):
            for q in basis:
                vec = vec - flat_dot(q, vec, over) * q
        norm = flat_norm(vec, over)
        if norm > eps * max(1.0, float(flat_norm(row.double(), over))):
            basis.append(vec / norm)
    if not basis:
        return rows[0].new_zeros(0, rows[0].numel())
    return torch.stack(basis).to(rows[0].dtype)
