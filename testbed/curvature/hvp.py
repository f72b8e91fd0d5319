"""Hessian-vector products: of a function of one flat vector (``torch.func``), and of a loss over a module's parameters.

``flat_hvp(fn, at)`` gives v ↦ ∇²fn(at) v by forward-over-reverse differentiation (``jvp`` of ``grad``), for models
written as functions of a flat parameter vector (the neural toy).

``LossHVP`` gives v ↦ ∇²L(θ) v for a scalar loss closure over a module's trainable parameters at the current weights.
By double backward, the gradient is taken once with ``create_graph`` and each product costs one more backward pass.
Where a kernel has no double backward (e.g. fused attention on CPU), a central difference of gradients is used,

    H v ≈ ‖v‖ (∇L(θ + h v̂) − ∇L(θ − h v̂)) / (2h),   v̂ = v/‖v‖,   h = step · max(1, ‖θ‖/√P),

with ``step`` = ε^{1/3} of the working precision by default (the balance of the O(h²) truncation and the O(ε/h)
round-off errors); the weights are restored exactly after each pair. ``method`` and ``note`` say which was used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import grad, jvp
from torch.nn.utils import parameters_to_vector

from testbed.curvature.partition import FlatPartition
from testbed.curvature.per_example import work_dtype
from testbed.errors import ConfigError, one_line

__all__ = ["Operator", "flat_hvp", "HVPMethod", "LossHVP"]

Operator = Callable[[Tensor], Tensor]
HVPMethod = Literal["auto", "double_backward", "finite_difference"]


def flat_hvp(fn: Callable[[Tensor], Tensor], at: Tensor) -> Operator:
    """v ↦ ∇²fn(at) v for a scalar function of a flat vector, by forward-over-reverse differentiation."""
    grad_fn = grad(fn)

    def apply(v: Tensor) -> Tensor:
        return jvp(grad_fn, (at,), (v,))[1]

    return apply


class LossHVP:
    """Gradient and Hessian-vector products of ``loss()`` over ``params`` at their current values.

    Args:
        loss: a closure returning the scalar loss at the current weights (differentiable in ``params``).
        params: the parameters (the flat vector is their concatenation).
        method: ``auto`` (double backward, falling back to finite differences), ``double_backward`` or
            ``finite_difference``.
        fd_step: relative step of the finite difference (default: cube root of the working precision's epsilon).
        partition: how norms over the parameters are reduced; with ``average`` true, every gradient and product is
            also averaged over its processes (each holding part of a batch, as under DDP).
        average: average gradients and products over ``partition``'s processes.
    """

    def __init__(
        self,
        loss: Callable[[], Tensor],
        params: list[nn.Parameter],
        method: HVPMethod = "auto",
        fd_step: float | None = None,
        partition: FlatPartition | None = None,
        average: bool = False,
    ) -> None:
        if method not in ("auto", "double_backward", "finite_difference"):
            raise ConfigError(f"hvp method must be auto, double_backward or finite_difference, got {method!r}")
        self.loss, self.params = loss, params
        self.partition = partition or FlatPartition(sum(p.numel() for p in params))
        self.average = self.partition.average if average else (lambda t: t)
        self.dtype = work_dtype(params)
        self.fd_step = fd_step if fd_step is not None else torch.finfo(self.dtype).eps ** (1 / 3)
        self.method = "finite_difference" if method == "finite_difference" else "double_backward"
        self.note = ""
        self._forced = method != "auto"
        self._graph: list[Tensor] | None = None
        if self.method == "double_backward":
            self._graph = list(torch.autograd.grad(loss(), params, create_graph=True, materialize_grads=True))
            self.grad = self.average(self._flat(self._graph))
        else:
            self.grad = self._gradient()

    def _flat(self, tensors: list[Tensor]) -> Tensor:
        return parameters_to_vector([t.detach() for t in tensors]).to(self.dtype)

    def _gradient(self) -> Tensor:
        with torch.enable_grad():
            grads = torch.autograd.grad(self.loss(), self.params, materialize_grads=True)
        return self.average(self._flat(list(grads)))

    def describe(self) -> str:
        """``double backward`` or ``finite differences of gradients (...why...)``."""
        if self.method == "double_backward":
            return "double backward"
        return "finite differences of gradients" + (f" (double backward unsupported: {self.note})" if self.note else "")

    def __call__(self, v: Tensor) -> Tensor:
        if self.method == "double_backward":
            try:
                return self._double_backward(v)
            except RuntimeError as exc:  # a kernel without a double-backward formula
                if self._forced:
                    raise ConfigError(f"Hessian-vector product by double backward failed: {one_line(exc, 1)}") from exc
                self.method, self.note, self._graph = "finite_difference", one_line(exc, 1)[:160], None
        return self._finite_difference(v)

    def _double_backward(self, v: Tensor) -> Tensor:
        pieces = torch.split(v.to(self.dtype), [p.numel() for p in self.params])
        dot = sum((g * piece.view_as(g).to(g.dtype)).sum() for g, piece in zip(self._graph, pieces, strict=True))
        products = torch.autograd.grad(dot, self.params, retain_graph=True, materialize_grads=True)
        return self.average(self._flat(list(products)))

    @torch.no_grad()
    def _set(self, flat: Tensor) -> None:
        for p, piece in zip(self.params, torch.split(flat, [p.numel() for p in self.params]), strict=True):
            p.copy_(piece.view_as(p))

    def _finite_difference(self, v: Tensor) -> Tensor:
        norm = float(self.partition.norm(v.to(self.dtype)))
        if norm == 0.0:
            return torch.zeros_like(v, dtype=self.dtype)
        original = parameters_to_vector([p.detach() for p in self.params]).clone()
        scale = max(1.0, float(self.partition.norm(original.to(self.dtype))) / math.sqrt(original.numel()))
        h = self.fd_step * scale
        direction = (v.to(self.dtype) / norm).to(original.dtype)
        try:
            self._set(original + h * direction)
            plus = self._gradient()
            self._set(original - h * direction)
            minus = self._gradient()
        finally:
            self._set(original)
        return (plus - minus) * (norm / (2 * h))
