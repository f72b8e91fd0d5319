"""Per-example gradients: torch.func against a plain loop, the fall-back (stated), non-finite rows, and training left
untouched (eval mode, isolated RNG)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from testbed.curvature import per_example_gradients
from testbed.errors import ConfigError
from testbed.guards import NonFiniteError
from testbed.llm.data import SafetyWorldDataModule
from testbed.testing import TinyRegressor
from tests.helpers.curvature import NaNSafetyGravity
from toy_models.gravity import GravityData, GravityMLP


class BranchyRegressor(TinyRegressor):
    """A safety loss with data-dependent control flow (a Python ``if`` on a tensor): vmap cannot batch it."""

    def safety_losses(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        residual = self(x) - y
        return residual**2 if float(x.sum()) > -1e9 else residual.abs()


def _regression_batch() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(6, 4, generator=gen), torch.randn(6, generator=gen)


def test_vmap_and_loop_agree_on_the_gravity_toy():
    model, data = GravityMLP(), GravityData(safety_size=12)
    batch = data.safety_batch()
    fast = per_example_gradients(model, batch, "safety_losses")
    slow = per_example_gradients(model, batch, "safety_losses", "loop")
    assert (fast.method, slow.method) == ("vmap", "loop")
    torch.testing.assert_close(fast.grads, slow.grads, rtol=1e-5, atol=1e-6)
    full = torch.autograd.grad(model.safety_losses(batch).mean(), list(model.parameters()))
    torch.testing.assert_close(fast.grads.mean(0), torch.cat([g.flatten() for g in full]), rtol=1e-5, atol=1e-6)


def test_vmap_and_loop_agree_on_gpt2_and_llama(tiny_gpt2, tiny_llama):
    batch = SafetyWorldDataModule(phase="finetune", safety_size=6).safety_batch()
    for factory in (tiny_gpt2, tiny_llama):
        module, _ = factory()
        fast, slow = per_example_gradients(module, batch), per_example_gradients(module, batch, method="loop")
        assert fast.method == "vmap"
        torch.testing.assert_close(fast.grads, slow.grads, rtol=1e-4, atol=1e-6)
        with torch.no_grad():  # the 4-D mask makes a row's loss independent of the other rows (padding)
            alone = [module.safety_losses({k: v[i : i + 1] for k, v in batch.items()})[0] for i in range(6)]
            torch.testing.assert_close(module.safety_losses(batch), torch.stack(alone), rtol=1e-5, atol=1e-6)


def test_fallback_to_a_loop_is_stated():
    model = BranchyRegressor()
    batch = _regression_batch()
    result = per_example_gradients(model, batch, "safety_losses")
    assert result.method == "loop" and "vmap" in result.describe() and result.note
    x, y = batch
    first = torch.autograd.grad(((model(x[:1]) - y[:1]) ** 2).sum(), list(model.parameters()))
    torch.testing.assert_close(result.grads[0], torch.cat([g.flatten() for g in first]))
    with pytest.raises(ConfigError, match="per-example gradients by vmap failed"):
        per_example_gradients(model, batch, "safety_losses", method="vmap")


def test_non_finite_gradients_name_the_example():
    model, data = NaNSafetyGravity(), GravityData(safety_size=8)
    batch = data.safety_batch()
    first_harmful = int(batch[2].nonzero()[0])
    with pytest.raises(NonFiniteError, match=f"safety example {first_harmful} .* is not finite"):
        per_example_gradients(model, batch, "safety_losses")


def test_passes_leave_mode_rng_and_weights_alone():
    model = GravityMLP().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    per_example_gradients(model, GravityData(safety_size=4).safety_batch(), "safety_losses")
    assert model.training and torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())


def test_no_trainable_parameters_is_a_config_error():
    model = GravityMLP()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        per_example_gradients(model, GravityData(safety_size=4).safety_batch(), "safety_losses")
