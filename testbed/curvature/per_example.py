"""Per-example gradients of a module's per-example scalars, with ``torch.func`` where the model allows it.

For a batch of N examples and per-example scalars s_i(θ) (``fisher_scores`` or ``safety_losses`` of the probe
protocol), G is the [N, P] matrix whose row i is ∇_θ s_i over the P trainable parameters, concatenated in the order
of ``trainable_parameters()`` (as ``testbed.interventions.flat`` does). With ``torch.func``, s_i is computed on a
batch of one inside ``vmap(grad(...))`` over the examples, ``functional_call`` supplying the parameters, a chunk of
examples at a time.
A model whose forward has data-dependent control flow makes ``vmap`` raise; then a plain loop takes one backward pass
per example. Sharded parameters (FSDP2) always take the loop, each pass an ordinary ``backward`` (torch.func does
not run on ``fully_shard``-ed modules): every process runs the same passes over the whole batch and keeps the local
slices of the gradients, so G holds [N, P_local] columns on each process. Which one ran (and why not ``vmap``) is
returned with G. Every pass runs in probe mode (eval mode, RNG isolated, so training is unchanged) inside the module's
``curvature_mode()``.

Memory: G holds N × P numbers in the working precision (4 bytes each for float32 models), e.g. 64 × 0.87 M
parameters = 0.22 GB; it grows linearly in both N and P.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils import parameters_to_vector

from testbed.errors import ConfigError, one_line
from testbed.guards import NonFiniteError
from testbed.probes import batch_size, map_batch, probe_mode
from testbed.protocol import TestbedModule
from testbed.sharding import backward_grads, is_sharded, local_numel

__all__ = ["PerExampleGradients", "chunks", "per_example_gradients", "rows", "trainable", "work_dtype"]

Method = Literal["auto", "vmap", "loop"]


@dataclass
class PerExampleGradients:
    """G and how it was computed.

    Attributes:
        grads: [N, P] per-example gradients (rows), in the parameters' working precision.
        method: ``vmap`` (torch.func) or ``loop``.
        note: why ``vmap`` was not used (empty when it was, or when the loop was asked for).
    """

    grads: Tensor
    method: str
    note: str = ""

    def describe(self) -> str:
        """e.g. ``vmap (torch.func)`` or ``a loop of per-example backward passes (vmap failed: ...)``."""
        if self.method == "vmap":
            return "vmap (torch.func)"
        return "a loop of per-example backward passes" + (f" (not vmap: {self.note})" if self.note else "")


class _Call(nn.Module):
    """``forward(batch)`` = ``module.<name>(batch)``, so ``functional_call`` can swap the module's parameters."""

    def __init__(self, module: nn.Module, name: str) -> None:
        super().__init__()
        self.inner = module
        self.name = name

    def forward(self, batch: Any) -> Tensor:
        return getattr(self.inner, self.name)(batch)


def rows(batch: Any, start: int, stop: int) -> Any:
    """Examples ``start`` to ``stop`` − 1 of a batch, as a batch."""
    return map_batch(batch, lambda t: t[start:stop] if t.dim() > 0 else t)


def chunks(batch: Any, size: int) -> Iterator[tuple[int, Any]]:
    """``(start, rows(batch, start, start + size))`` over the batch, ``size`` examples at a time."""
    for start in range(0, batch_size(batch), size):
        yield start, rows(batch, start, start + size)


def trainable(module: TestbedModule) -> list[tuple[str, nn.Parameter]]:
    """The module's trainable ``(name, parameter)`` pairs (probe protocol); a ``ConfigError`` when there are none."""
    named = [(n, p) for n, p in module.trainable_parameters() if p.requires_grad]
    if not named:
        raise ConfigError(f"{type(module).__name__} has no trainable parameters: the curvature account has nothing "
                          "to measure")
    return named


def work_dtype(params: list[Tensor]) -> torch.dtype:
    """float64 if a parameter is float64, else float32 (low-precision parameters are widened)."""
    return functools.reduce(torch.promote_types, (p.dtype for p in params), torch.float32)


def _scalar(out: Tensor, name: str) -> Tensor:
    if out.numel() != 1:
        raise ConfigError(f"{name} must return one value per example, got shape {list(out.shape)} for one example")
    return out.reshape(())


def _by_vmap(call: _Call, named: list[tuple[str, nn.Parameter]], batch: Any, out: Tensor, chunk: int) -> None:
    params = {f"inner.{n}": p.detach() for n, p in named}

    def one(p: dict[str, Tensor], single: Any) -> Tensor:
        return _scalar(functional_call(call, p, (map_batch(single, lambda t: t.unsqueeze(0)),), strict=False),
                       call.name)  # fmt: skip

    per_example = vmap(grad(one), in_dims=(None, 0))
    for start, examples in chunks(batch, chunk):
        grads = per_example(params, examples)
        offset = 0
        for name, p in named:  # written in place: no concatenated copy of the chunk
            out[start : start + chunk, offset : offset + p.numel()] = grads.pop(f"inner.{name}").flatten(1)
            offset += p.numel()


def _by_loop(module: TestbedModule, name: str, params: list[nn.Parameter], batch: Any, out: Tensor) -> None:
    sharded = is_sharded(params)
    for i in range(out.shape[0]):
        one = rows(batch, i, i + 1)
        if sharded:
            grads = backward_grads(lambda one=one: _scalar(getattr(module, name)(one), name), params)
            grads = [torch.zeros_like(g) if g is None else g for g in grads]
        else:
            value = _scalar(getattr(module, name)(one), name)
            grads = torch.autograd.grad(value, params, materialize_grads=True)
        out[i] = parameters_to_vector(grads).to(out.dtype)


def per_example_gradients(
    module: TestbedModule, batch: Any, scores: str = "fisher_scores", method: Method = "auto", chunk_size: int = 16
) -> PerExampleGradients:
    """G [N, P]: row i is ∇_θ s_i for the module's per-example scalars ``scores`` on ``batch``.

    Args:
        module: the model (probe protocol); P counts its ``trainable_parameters``.
        batch: N examples (a tensor or nested dict/tuple of tensors with one leading dimension).
        scores: the protocol method giving the per-example scalars (``fisher_scores`` or ``safety_losses``).
        method: ``auto`` (vmap, falling back to a loop), ``vmap`` or ``loop``.
        chunk_size: examples per vmap call (bounds the activation memory).

    Returns:
        G with the method used (columns: this process's slices when sharded); a non-finite row raises
        ``NonFiniteError`` naming the example.
    """
    named = trainable(module)
    params = [p for _, p in named]
    n = batch_size(batch)
    if n < 1:
        raise ConfigError("the safety batch is empty")
    out = torch.empty(n, local_numel(params), dtype=work_dtype(params), device=params[0].device)
    used, note = method, ""
    if is_sharded(params):
        if method == "vmap":
            raise ConfigError("per-example gradients by vmap do not run on FSDP2-sharded parameters: use per_example: "
                              "loop or auto")
        used, note = "loop", "torch.func does not run on FSDP2-sharded parameters"
    with probe_mode(module, grad=True), module.curvature_mode():
        if used in ("auto", "vmap"):
            try:
                _by_vmap(_Call(module, scores), named, batch, out, chunk_size)
                used = "vmap"
            except ConfigError:
                raise
            except Exception as exc:  # data-dependent control flow, an op without a batching rule, ...
                if method == "vmap":
                    raise ConfigError(f"per-example gradients by vmap failed: {one_line(exc, 1)}") from exc
                used, note = "loop", one_line(exc, 1)[:160]
        if used == "loop":
            _by_loop(module, scores, params, batch, out)
    finite = torch.isfinite(out.sum(1))  # a row with a nan or inf sums to one (far cheaper than isfinite of all of G)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        raise NonFiniteError(f"the per-example gradient of safety example {bad} ({scores}) is not finite")
    return PerExampleGradients(out, used, note)
