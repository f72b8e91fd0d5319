"""Top eigenpairs of a symmetric operator by Lanczos, and the trace by Hutchinson's estimator.

Lanczos builds an orthonormal basis q_1 … q_m of the Krylov space {q_1, A q_1, A² q_1, …} with full
re-orthogonalisation (twice, which is enough in float64), in which A is the tridiagonal T = Qᵀ A Q; the eigenpairs
(θ_j, y_j) of T give Ritz pairs (θ_j, Q y_j) whose top ones converge first. It stops early when the Krylov space is
exhausted (a low-rank operator), which makes it exact for rank < iterations. Inner products go through a
``FlatPartition`` (partial sums + all-reduce), so every process of a group gets the same pairs.

Hutchinson: trace(A) = E[zᵀ A z] for Rademacher z; the mean over ``samples`` draws (fixed seed) estimates it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from testbed.curvature.partition import FlatPartition
from testbed.errors import ConfigError

__all__ = ["lanczos_top", "hutchinson_trace"]

Operator = Callable[[Tensor], Tensor]


def lanczos_top(
    apply: Operator,
    dim: int,
    k: int,
    iters: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    partition: FlatPartition | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs (by value) of a symmetric operator by Lanczos with full re-orthogonalisation.

    Args:
        apply: v [dim] -> A v [dim].
        dim: dimension of the space.
        k: number of eigenpairs (k <= iters <= dim).
        iters: Lanczos steps (size of the Krylov space).
        seed: seed of the start vector.
        dtype: working precision of the Krylov basis.
        partition: how inner products are summed (default: all coordinates, one process).
        device: device of the vectors.

    Returns:
        (eigenvalues [k] in descending order, eigenvectors [dim, k] with orthonormal columns).
    """
    if not 1 <= k <= min(iters, dim):
        raise ConfigError(f"Lanczos needs 1 <= k <= min(iters, dim), got k={k}, iters={iters}, dim={dim}")
    part = partition or FlatPartition(dim)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(dim, generator=gen, dtype=dtype).to(device)
    basis = [q / part.norm(q)]
    alphas: list[float] = []
    betas: list[float] = []
    for _ in range(min(iters, dim)):
        w = apply(basis[-1]).to(dtype)
        alphas.append(float(part.matmul(w, basis[-1])))
        stacked = torch.stack(basis)  # [m, dim]
        for _ in range(2):
            w = w - part.matmul(stacked, w) @ stacked
        beta = float(part.norm(w))
        if beta < 1e-10 * max(1.0, max(abs(a) for a in alphas)) or len(basis) == dim:
            break
        betas.append(beta)
        basis.append(w / beta)
    m = len(alphas)
    if m < k:
        raise ConfigError(f"the operator has a Krylov space of dimension {m} < k={k}: lower the number of eigenpairs")
    tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        tri += torch.diag(off, 1) + torch.diag(off, -1)
    vals, vecs = torch.linalg.eigh(tri)
    order = torch.argsort(vals, descending=True)[:k]
    ritz = vecs[:, order].to(dtype=dtype, device=device).T @ torch.stack(basis[:m])  # [k, dim]
    return vals[order].to(dtype), part.orthonormalize(ritz).T


def hutchinson_trace(
    apply: Operator, dim: int, samples: int, seed: int = 0, dtype: torch.dtype = torch.float64,
    partition: FlatPartition | None = None, device: torch.device | str = "cpu",
) -> float:  # fmt: skip
    """trace(A) ≈ mean_s z_sᵀ A z_s over ``samples`` Rademacher vectors z_s (seeded)."""
    part = partition or FlatPartition(dim)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(samples):
        z = (torch.randint(0, 2, (dim,), generator=gen) * 2 - 1).to(dtype=dtype, device=device)
        total += float(part.matmul(z, apply(z).to(dtype)))
    return total / samples
