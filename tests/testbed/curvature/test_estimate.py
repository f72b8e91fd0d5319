"""Subspace estimation against dense linear algebra: the Gram trick on tiny GPT-2 (full fine-tuning and LoRA), γ by
Hessian-vector products against finite differences, Lanczos against a dense Hessian, the random control."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from experiments.llm_safety.curvature_checks import CASES, gamma_check, gram_check, safety_batch, tiny_gpt2
from testbed.curvature import (
    LossHVP,
    SubspaceSettings,
    estimate_subspace,
    fisher_subspace,
    lanczos_top,
    per_example_gradients,
    principal_angles,
    safety_loss,
    spread_subset,
)
from testbed.curvature.partition import FlatPartition
from testbed.errors import ConfigError
from testbed.probes import probe_mode
from toy_models.data import TaskSettings, make_tasks
from toy_models.neural import FlatMLP, hvp_operator, mse


@pytest.fixture(scope="module")
def safety() -> dict[str, torch.Tensor]:
    return safety_batch()


def _gpt2(lora: dict | None):
    return tiny_gpt2(lora)


@pytest.mark.parametrize("lora", list(CASES.values()), ids=["full", "lora"])
def test_gram_trick_matches_dense_fisher(safety, lora):
    """Top-d eigenpairs of K = GGᵀ/N mapped by Gᵀu/√(Nμ) equal those of the dense GᵀG/N."""
    module = _gpt2(lora)
    assert per_example_gradients(module, safety).method == "vmap"
    check = gram_check(module, safety)
    assert check["parameters"] < 2000
    assert check["max_angle"] < 1e-4 and check["max_eigenvalue_rel_error"] < 1e-5 and check["trace_rel_error"] < 1e-10
    s = fisher_subspace(module, safety, SubspaceSettings(d=6))
    torch.testing.assert_close(s.basis @ s.basis.T, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("lora", list(CASES.values()), ids=["full", "lora"])
def test_gamma_by_hvp_matches_finite_differences(safety, lora):
    """γ = ‖F^{1/2} P_S H g‖ from a double-backward HVP equals the one from a central difference of gradients."""
    check = gamma_check(_gpt2(lora), safety)
    assert check["double_backward"] > 0 and check["rel_difference"] < 1e-3


def test_auto_hvp_falls_back_to_finite_differences_and_says_why(safety):
    """Fused CPU attention has no double backward: outside curvature_mode the product is a difference of gradients."""
    module = _gpt2(None)
    params = [p for _, p in module.trainable_parameters()]
    before = [p.detach().clone() for p in params]
    with probe_mode(module, grad=True):
        hvp = LossHVP(lambda: module.task_loss(safety), params)
        product = hvp(hvp.grad)
    assert hvp.method == "finite_difference" and "double backward unsupported" in hvp.describe()
    assert all(torch.equal(a, p) for a, p in zip(before, params, strict=True))  # weights restored exactly
    with probe_mode(module, grad=True), module.curvature_mode():
        exact = LossHVP(lambda: module.task_loss(safety), params)
        reference = exact(exact.grad)
    assert float((product - reference).norm() / reference.norm()) < 1e-4


def test_lanczos_matches_dense_hessian_on_tiny_net():
    tasks = make_tasks(TaskSettings(ambient_dim=4, manifold_dim=2, n_align=4, n_finetune=6, seed=3))
    net = FlatMLP(4, 3, 1, seed=1)  # 19 parameters
    theta = net.flat()
    dense = torch.func.hessian(lambda t: mse(net, t, tasks.x_align, tasks.y_align))(theta)
    vals_dense, vecs_dense = torch.linalg.eigh(dense)
    vals, vecs = lanczos_top(hvp_operator(net, theta, tasks.x_align, tasks.y_align), theta.numel(), 3, 19)
    torch.testing.assert_close(vals, vals_dense.flip(0)[:3], rtol=1e-9, atol=1e-12)
    top = vecs_dense[:, -3:]
    torch.testing.assert_close(vecs @ vecs.T, top @ top.T, rtol=0, atol=1e-8)  # same subspace
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_partial_sums_over_slices_add_up_to_the_full_products():
    """The reduction design: per-slice partial Gram matrices and projections sum to the single-process ones."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(5, 103, generator=gen, dtype=torch.float64)
    x = torch.randn(103, generator=gen, dtype=torch.float64)
    parts = [FlatPartition.split(103, r, 3) for r in range(3)]
    assert [(p.start, p.stop) for p in parts] == [(0, 34), (34, 68), (68, 103)]
    local = [FlatPartition(103, p.start, p.stop) for p in parts]  # one process each: no all-reduce, partial sums
    torch.testing.assert_close(sum(p.matmul(g, g) for p in local), g @ g.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sum(p.matmul(g, x) for p in local), g @ x, rtol=1e-12, atol=1e-12)


def test_principal_angles_resolve_tiny_angles():
    for angle in (1e-9, 1e-3, 0.7):
        a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
        b = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(angle), math.sin(angle)]], dtype=torch.float64)
        angles = principal_angles(a, b)
        assert float(angles[0]) == pytest.approx(0.0, abs=1e-15)
        assert float(angles[1]) == pytest.approx(angle, rel=1e-9)


def test_random_subspace_is_seeded_orthonormal_and_sized(safety):
    module = _gpt2(None)
    a, b, c = (estimate_subspace(module, None, SubspaceSettings(d=5, method="random", seed=s)) for s in (3, 3, 4))
    assert torch.equal(a.basis, b.basis) and not torch.equal(a.basis, c.basis)
    torch.testing.assert_close(a.basis @ a.basis.T, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-10)
    assert a.method == "random" and a.d == 5


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"d": 24}, "d=24 must be below the number of safety examples N=24"),
        ({"d": 4, "n": 30}, "n=30 exceeds the safety set"),
        ({"d": 5000, "method": "hessian"}, "below the number of trainable parameters"),
        ({"d": 0}, "subspace d must be a positive integer"),
        ({"method": "svd"}, "subspace method must be one of"),
    ],
)
def test_bad_sizes_are_config_errors(safety, settings, message):
    with pytest.raises(ConfigError, match=message):
        estimate_subspace(_gpt2(None), safety, SubspaceSettings(**settings))


@given(n=st.integers(1, 200), m=st.integers(1, 250))
def test_spread_subset_takes_m_distinct_rows_evenly_over_the_batch(n, m):
    batch = {"ids": torch.arange(n), "scalar": torch.tensor(7)}
    picked = spread_subset(batch, m)["ids"].tolist()
    assert len(picked) == min(m, n) and picked == sorted(set(picked)) and picked[0] == 0
    gaps = [b - a for a, b in zip(picked, [*picked[1:], picked[0] + n], strict=True)]  # wrapping round once
    assert max(gaps) - min(gaps) <= 1  # as even as whole rows allow


def test_chunked_safety_loss_equals_the_whole_batch_forward(safety):
    model = _gpt2(None)
    with probe_mode(model):
        whole = safety_loss(model, safety)
        assert float(safety_loss(model, safety, chunk_size=3)) == pytest.approx(float(whole), rel=1e-6)
