"""Estimating the alignment subspace S at the current weights θ* from a safety batch, three ways.

- ``fisher``: the safety Fisher F = (1/N) Σ_i g_i g_iᵀ of the per-example gradients g_i = ∇s_i (rows of G [N, P],
  ``fisher_scores``), never formed: the Gram matrix K = G Gᵀ / N [N, N] has the same non-zero eigenvalues μ_j, and
  for K u_j = μ_j u_j the vector v_j = Gᵀ u_j / √(N μ_j) is F's unit eigenvector (F v_j = μ_j v_j), so S is spanned by
  the top d of them, λ_j = μ_j and trace(F) = trace(K) = mean_i ‖g_i‖². K needs d < N (at most N non-zero
  eigenvalues, and d = N would leave no tail to measure).
- ``hessian``: the top d eigenpairs of the safety loss's Hessian ∇²u (u = mean_i ℓ_i, ``safety_losses``) by Lanczos on
  Hessian-vector products; its trace by Hutchinson's estimator.
- ``random``: a seeded random d-dimensional subspace (the blocker's control), no eigenvalues.

Inner products are reduced through a ``FlatPartition`` (one process, DDP's split of the coordinates, or FSDP2's
shards), so every process gets the same subspace; on sharded parameters each process holds the slices of it that
match its shards, random vectors are drawn whole and sliced, and every process runs every forward and backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from testbed.curvature.hvp import HVPMethod, LossHVP
from testbed.curvature.lanczos import hutchinson_trace, lanczos_top
from testbed.curvature.partition import FlatPartition
from testbed.curvature.per_example import chunks, per_example_gradients, rows, trainable, work_dtype
from testbed.curvature.subspace import Subspace
from testbed.errors import ConfigError, one_of, positive_int, seed_value
from testbed.probes import batch_size, map_batch, probe_mode
from testbed.protocol import TestbedModule
from testbed.sharding import local_flat, local_numel

__all__ = ["SubspaceSettings", "fisher_subspace", "hessian_subspace", "random_subspace", "estimate_subspace",
           "safety_subset", "safety_loss", "spread_subset"]  # fmt: skip


@dataclass
class SubspaceSettings:
    """How the alignment subspace S is estimated at the start of fine-tuning.

    Args:
        d: dimension of S (1 <= d < N for the Fisher; d < the number of trainable parameters).
        n: use the first n safety examples (default: the whole safety batch).
        method: ``fisher`` (Gram trick on per-example gradients), ``hessian`` (Lanczos on Hessian-vector products)
            or ``random`` (a seeded random d-dimensional subspace: the blocker's control).
        per_example: per-example gradients by ``auto`` (torch.func vmap, else a loop), ``vmap`` or ``loop``.
        chunk_size: examples per vmap call.
        hvp: Hessian-vector products by ``auto`` (double backward, else finite differences), ``double_backward`` or
            ``finite_difference``.
        lanczos_iters: Lanczos steps of the ``hessian`` method (default 2d + 20).
        trace_samples: Hutchinson probes for the Hessian's trace (``hessian`` method).
        seed: seed of the random subspace, the Lanczos start vector and the Hutchinson probes.
    """

    d: int = 16
    n: int | None = None
    method: Literal["fisher", "hessian", "random"] = "fisher"
    per_example: Literal["auto", "vmap", "loop"] = "auto"
    chunk_size: int = 16
    hvp: HVPMethod = "auto"
    lanczos_iters: int | None = None
    trace_samples: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        positive_int("subspace d", self.d)
        positive_int("subspace n", self.n, allow_none=True)
        one_of("subspace method", self.method, ("fisher", "hessian", "random"))
        one_of("subspace per_example", self.per_example, ("auto", "vmap", "loop"))
        one_of("subspace hvp", self.hvp, ("auto", "double_backward", "finite_difference"))
        positive_int("subspace chunk_size", self.chunk_size)
        positive_int("subspace lanczos_iters", self.lanczos_iters, allow_none=True)
        positive_int("subspace trace_samples", self.trace_samples)
        seed_value("subspace seed", self.seed)


def safety_subset(batch: Any, n: int | None) -> Any:
    """The first ``n`` examples of the safety batch (all when ``n`` is None); refuses an empty or too small batch."""
    size = batch_size(batch) if batch is not None else 0
    if size < 1:
        raise ConfigError("the safety set is empty: the curvature account needs at least one safety example")
    if n is not None and n > size:
        raise ConfigError(f"subspace n={n} exceeds the safety set ({size} examples)")
    return rows(batch, 0, n) if n is not None else batch


def safety_loss(module: TestbedModule, batch: Any, chunk_size: int | None = None) -> Tensor:
    """u(θ) = mean_i ℓ_i on the safety batch (float64; differentiable when grad is enabled).

    With ``chunk_size`` the per-example losses are computed that many examples at a time, which bounds the memory of
    the activations and logits of a forward pass without autograd (each ℓ_i is still computed on its own row).
    """
    if chunk_size is None:
        return module.safety_losses(batch).double().mean()
    size = positive_int("chunk_size", chunk_size)
    return torch.cat([module.safety_losses(part) for _, part in chunks(batch, size)]).double().mean()


def spread_subset(batch: Any, m: int) -> Any:
    """``m`` examples spread evenly over the batch (rows ⌊i·N/m⌋, i < m), so an ordered safety set (harmful requests
    first, say) keeps its mix; the whole batch when ``m`` >= N."""
    n = batch_size(batch)
    if m >= n:
        return batch
    index = torch.arange(m) * n // m
    return map_batch(batch, lambda t: t[index.to(t.device)] if t.dim() > 0 else t)


def _check_d(d: int, n: int | None, p: int, method: str) -> None:
    if d >= p:
        raise ConfigError(f"subspace d={d} must be below the number of trainable parameters ({p})")
    if method == "fisher" and n is not None and d >= n:
        raise ConfigError(f"subspace d={d} must be below the number of safety examples N={n}: the Fisher of N "
                          "examples has at most N non-zero eigenvalues (and d = N leaves no tail to measure)")


def fisher_subspace(
    module: TestbedModule, batch: Any, settings: SubspaceSettings, partition: FlatPartition | None = None
) -> Subspace:
    """S from the safety Fisher by the Gram trick (see the module docstring)."""
    grads = per_example_gradients(module, batch, "fisher_scores", settings.per_example, settings.chunk_size)
    g = grads.grads  # [N, P] (this process's columns when sharded)
    n = g.shape[0]
    part = partition or FlatPartition(g.shape[1])
    _check_d(settings.d, n, part.total, "fisher")
    gram = part.matmul(g.double(), g.double()) / n if g.dtype == torch.float64 else part.matmul(g, g).double() / n
    mu, u = torch.linalg.eigh(0.5 * (gram + gram.T))
    mu, u = mu.flip(0), u.flip(1)
    u = u * torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True)))  # a fixed sign: largest entry positive
    top = mu[: settings.d]
    if not bool(top[-1] > 1e-12 * max(float(mu[0]), 1e-300)):
        rank = int((mu > 1e-12 * max(float(mu[0]), 1e-300)).sum())
        raise ConfigError(f"the safety Fisher has rank {rank} < d={settings.d} on these {n} examples: lower d")
    coef = u[:, : settings.d] / torch.sqrt(n * top)  # [N, d]: v_j = Gᵀ u_j / √(N μ_j)
    # V Vᵀ = N Cᵀ K C is I up to round-off: re-orthonormalise C with its Cholesky factor (rows keep their order),
    # so the basis needs one pass over G and no further inner products over the parameters
    chol = torch.linalg.cholesky(n * coef.T @ gram @ coef)
    coef = torch.linalg.solve_triangular(chol, coef.T, upper=False).T
    basis = coef.T.to(g.dtype) @ g
    how = f"Fisher by the Gram trick; per-example gradients by {grads.describe()}"
    return Subspace(basis, top.to(g.dtype), float(torch.trace(gram)), n, "fisher", how, mu.to(g.dtype))


def hessian_subspace(
    module: TestbedModule, batch: Any, settings: SubspaceSettings, partition: FlatPartition | None = None
) -> Subspace:
    """S from the top-d eigenpairs of the safety loss's Hessian (Lanczos), trace by Hutchinson."""
    params = [p for _, p in trainable(module)]
    dim = sum(p.numel() for p in params)
    _check_d(settings.d, None, dim, "hessian")
    part = partition or FlatPartition(local_numel(params))
    with probe_mode(module, grad=True), module.curvature_mode():
        hvp = LossHVP(lambda: safety_loss(module, batch), params, settings.hvp, partition=part)
        iters = min(dim, settings.lanczos_iters or 2 * settings.d + 20)
        dtype, device = work_dtype(params), params[0].device
        localize = lambda v: local_flat(v, params)  # noqa: E731
        lam, vecs = lanczos_top(hvp, dim, settings.d, iters, settings.seed, dtype, part, device, localize)
        trace = hutchinson_trace(hvp, dim, settings.trace_samples, settings.seed + 1, dtype, part, device, localize)
    how = f"Hessian by Lanczos ({iters} steps, products by {hvp.describe()}); trace by Hutchinson " \
          f"({settings.trace_samples} probes)"  # fmt: skip
    return Subspace(vecs.T.contiguous(), lam, trace, batch_size(batch), "hessian", how, lam)


def random_subspace(module: TestbedModule, settings: SubspaceSettings, partition: FlatPartition | None = None):
    """A seeded random d-dimensional subspace of the trainable parameters (orthonormal Gaussian rows)."""
    params = [p for _, p in trainable(module)]
    dim = sum(p.numel() for p in params)
    _check_d(settings.d, None, dim, "random")
    gen = torch.Generator().manual_seed(settings.seed)
    rows_ = torch.randn(settings.d, dim, generator=gen, dtype=work_dtype(params)).to(params[0].device)
    basis = (partition or FlatPartition(dim)).orthonormalize(local_flat(rows_, params))
    nan = torch.full((settings.d,), math.nan, dtype=basis.dtype)
    return Subspace(basis, nan, math.nan, 0, "random", f"random Gaussian subspace (seed {settings.seed})")


def estimate_subspace(
    module: TestbedModule, batch: Any, settings: SubspaceSettings, partition: FlatPartition | None = None
) -> Subspace:
    """S at the module's current weights as ``settings`` say (``batch`` is unused by the random control)."""
    if settings.method == "random":
        return random_subspace(module, settings, partition)
    batch = safety_subset(batch, settings.n)
    _check_d(settings.d, batch_size(batch), sum(p.numel() for _, p in trainable(module)), settings.method)
    estimate = fisher_subspace if settings.method == "fisher" else hessian_subspace
    return estimate(module, batch, settings, partition)
