"""The curvature layer's estimates against dense linear algebra on a tiny GPT-2, full fine-tuning and LoRA (float64).

    python -m experiments.llm_safety.curvature_checks

For each case, on 24 safety examples of the safety world:

- Gram trick: the top-6 Fisher eigenpairs from K = G Gᵀ/N (v = Gᵀu/√(Nμ)) against a dense eigendecomposition of
  GᵀG/N (the largest principal angle between the two subspaces; the largest relative eigenvalue error);
- γ = ‖F^{1/2} P_S H g‖ with H g from a double-backward Hessian-vector product against a central difference of
  gradients (the relative difference).

Full fine-tuning uses a GPT-2 of width 4 (1.6k parameters) so that GᵀG/N fits a dense eigendecomposition; LoRA uses
r = 2 adapters on the test GPT-2 of width 32 (1408 adapter parameters).
"""

from __future__ import annotations

import torch

from testbed.curvature import LossHVP, SubspaceSettings, fisher_subspace, per_example_gradients, principal_angles
from testbed.llm.data import SafetyWorldDataModule, world_tokenizer
from testbed.llm.module import CausalLMModule
from testbed.probes import probe_mode
from testbed.testing import TEST_LM_CONFIGS

DENSE_GPT2 = {"n_layer": 1, "n_head": 2, "n_embd": 4, "n_positions": 48}
CASES = {"full fine-tuning": None, "LoRA r=2": {"r": 2}}


def tiny_gpt2(lora: dict | None) -> CausalLMModule:
    """The case's GPT-2 in float64 (randomly initialised, seeded by the caller)."""
    config = TEST_LM_CONFIGS["gpt2"] if lora else DENSE_GPT2
    return CausalLMModule(model="gpt2", model_config=config, vocab_size=len(world_tokenizer()), lora=lora).double()


def safety_batch(n: int = 24) -> dict[str, torch.Tensor]:
    return SafetyWorldDataModule(phase="finetune", safety_size=n).safety_batch()


def gram_check(module: CausalLMModule, batch: dict[str, torch.Tensor], d: int = 6) -> dict[str, float]:
    """Gram trick against the dense eigendecomposition of GᵀG/N."""
    g = per_example_gradients(module, batch).grads
    s = fisher_subspace(module, batch, SubspaceSettings(d=d))
    vals, vecs = torch.linalg.eigh(g.T @ g / g.shape[0])
    dense_vals, dense_vecs = vals.flip(0)[:d], vecs.flip(1)[:, :d].T
    return {
        "parameters": float(g.shape[1]),
        "max_angle": float(principal_angles(s.basis, dense_vecs).max()),
        "max_eigenvalue_rel_error": float(((s.eigenvalues - dense_vals).abs() / dense_vals).max()),
        "trace_rel_error": abs(s.trace - float((g**2).sum(1).mean())) / s.trace,
    }


def gamma_check(module: CausalLMModule, batch: dict[str, torch.Tensor], d: int = 6) -> dict[str, float]:
    """γ by a double-backward HVP and by finite differences of gradients (the fine-tune loss on ``batch``)."""
    s = fisher_subspace(module, batch, SubspaceSettings(d=d))
    params = [p for _, p in module.trainable_parameters()]
    gammas = {}
    for method in ("double_backward", "finite_difference"):
        with probe_mode(module, grad=True), module.curvature_mode():
            hvp = LossHVP(lambda: module.task_loss(batch), params, method)
            gammas[method] = float(s.weighted_norm(s.coords(hvp(hvp.grad))))
    exact = gammas["double_backward"]
    return {**gammas, "rel_difference": abs(gammas["finite_difference"] - exact) / exact}


def main() -> None:
    from testbed.__main__ import quiet_third_party

    quiet_third_party()
    batch = safety_batch()
    print("| case | P | max principal angle | max rel. eigenvalue error | γ (HVP) | γ (finite differences) "
          "| rel. difference |")
    print("|---|---|---|---|---|---|---|")
    for name, lora in CASES.items():
        torch.manual_seed(0)
        module = tiny_gpt2(lora)
        g, c = gram_check(module, batch), gamma_check(module, batch)
        print(f"| {name} | {int(g['parameters'])} | {g['max_angle']:.2e} rad | {g['max_eigenvalue_rel_error']:.2e} "
              f"| {c['double_backward']:.6g} | {c['finite_difference']:.6g} | {c['rel_difference']:.2e} |")


if __name__ == "__main__":
    main()
