"""The curvature account on the probe protocol's trainable parameters: alignment subspace, HVPs, AIC diagnostics.

The paper's quantities (arXiv:2602.15799) for any ``TestbedModule`` with a safety loss (toys, Hugging Face models,
LoRA adapters), one small module each:

- ``per_example``: per-example gradients G [N, P] (``torch.func`` vmap, else a loop; which one ran is reported);
- ``estimate``: ``SubspaceSettings`` and the subspace S at θ* — the safety Fisher's top-d eigenvectors by the Gram trick
  (K = G Gᵀ/N, v = Gᵀu/√(Nμ), trace F = mean ‖g_i‖²), the Hessian's by Lanczos, or a seeded random control;
- ``subspace``: ``Subspace`` (basis, eigenvalues, trace, d, N, method; saved atomically) and ``principal_angles``;
- ``hvp``: Hessian-vector products (double backward, finite differences of gradients where unsupported);
- ``lanczos``: Lanczos top eigenpairs and Hutchinson's trace;
- ``diagnostics``: the AIC quantities λ_d, tail, ε, γ and the verdict (``theory.aic.aic_verdict``);
- ``partition``: inner products as per-process partial sums plus an all-reduce (DDP, and sharded parameters).

The Lightning callbacks that use them live in ``testbed.interventions`` (``CurvatureMonitor``, ``SubspaceBlocker``).
"""

from testbed.curvature.diagnostics import AICThresholds, Diagnostics, diagnose
from testbed.curvature.estimate import (
    SubspaceSettings,
    estimate_subspace,
    fisher_subspace,
    hessian_subspace,
    random_subspace,
    safety_loss,
    safety_subset,
    spread_subset,
)
from testbed.curvature.hvp import LossHVP, flat_hvp
from testbed.curvature.lanczos import hutchinson_trace, lanczos_top
from testbed.curvature.partition import FlatPartition
from testbed.curvature.per_example import PerExampleGradients, per_example_gradients
from testbed.curvature.subspace import Subspace, principal_angles

__all__ = [
    "AICThresholds",
    "Diagnostics",
    "FlatPartition",
    "LossHVP",
    "PerExampleGradients",
    "Subspace",
    "SubspaceSettings",
    "diagnose",
    "estimate_subspace",
    "fisher_subspace",
    "flat_hvp",
    "hessian_subspace",
    "hutchinson_trace",
    "lanczos_top",
    "per_example_gradients",
    "principal_angles",
    "random_subspace",
    "safety_loss",
    "safety_subset",
    "spread_subset",
]
