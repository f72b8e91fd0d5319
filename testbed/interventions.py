"""Lightning callbacks of the reversion layer: a monitor, v_rev blockers and their baselines.

All of them see the model only through the probe protocol (``representations``, ``layer_module``,
``trainable_parameters``) and the datamodule's ``probe_batch()``, so the same YAML works for toys, Hugging Face
models and LoRA adapters. Select them under ``trainer.callbacks`` with ``class_path: testbed.interventions.X``.

Notation: v_l is the unit direction at layer l (pointing from the aligned model to the witness), m_l(θ) the mean
pooled probe representation, m_l^ref its value at the start of the run (the aligned model), and
J_l = ∂<v_l, m_l(θ)>/∂θ over the trainable parameters (one vector-Jacobian product on the probe batch).

- ``ReversionMonitor``: logs cos(m - m^ref, v), the component along v, the orthogonal drift and null exceedance.
- ``UpdateProjectionBlocker``: after each optimizer step, Δθ ← Δθ - Σ_l (q_l·Δθ) q_l with {q_l} an orthonormal basis
  of {J_l} taken at the pre-step weights, so the first-order change of <v_l, m_l> is zero whatever the optimizer
  (Adam included). One-sided: only components that move toward the witness (J_l·Δθ > 0) are removed.
- ``GradientProjectionBlocker``: the same projection applied to the gradient before the step. Under SGD this blocks
  the first-order motion; under Adam/AdamW it does NOT (the moment estimates re-introduce the removed component).
- ``RepresentationPenalty``: adds ∇θ of strength · Σ_l relu(<v_l, m_l - m_l^ref>)^power to the gradient right before
  the step (gradients are linear, so this equals adding the penalty to the loss, with no change to the module).
- ``ActivationClamp``: a forward hook holding <v_l, h> of the stream at layer l at its reference value
  c_l = <v_l, m_l^ref>.
- Baselines: every direction blocker takes ``random_direction: true`` (a seeded random unit vector of the same width,
  same strength: the control), and ``L2Anchor`` pulls the trainable parameters toward their start values.

Blocker state (directions, reference means, anchors, cached bases) is saved in checkpoints via ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from testbed.directions import DirectionSet, load_direction
from testbed.errors import ConfigError, positive_int
from testbed.metrics import NULL_LEVELS, DriftAlignment, HarmfulnessHook, NullExceedance, evaluate_hook, level_name
from testbed.probes import ProbeSet
from testbed.protocol import TestbedModule, _stream
from testbed.tags import ALIGN, INTERVENTION, REVERSION, tag


def _check_module(pl_module: Any) -> TestbedModule:
    if not isinstance(pl_module, TestbedModule):
        raise ConfigError(
            f"the reversion layer needs a TestbedModule (the probe protocol), got {type(pl_module).__name__}"
        )
    return pl_module


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not (value >= 0 if allow_zero else value > 0):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def random_unit(width: int, seed: int, salt: int = 0) -> Tensor:
    """A seeded Gaussian unit vector (independent of the global RNG)."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + salt)
    vec = torch.randn(width, generator=gen, dtype=torch.float64)
    return (vec / vec.norm()).float()


class DirectionCallback(pl.Callback):
    """Shared plumbing: load and check the direction, hold the probe set, measure reference means at the start.

    Args:
        direction_path: a direction file (``python -m testbed vrev`` or the study's ``{directions.<name>}``).
        layers: layers to use (default: all layers in the file).
        random_direction: replace each direction by a seeded random unit vector of the same width (the control).
        random_seed: seed of the random directions.
        allow_other_probe: accept a direction computed on a different probe set.
    """

    def __init__(
        self,
        direction_path: str,
        layers: list[str] | None = None,
        random_direction: bool = False,
        random_seed: int = 0,
        allow_other_probe: bool = False,
    ) -> None:
        super().__init__()
        self.direction_path = direction_path
        self.layers = None if layers is None else list(layers)
        self.requested_layers = self.layers  # the state key must not change once setup resolves the layers
        self.random_direction = bool(random_direction)
        self.random_seed = int(random_seed)
        self.allow_other_probe = allow_other_probe
        self.directions: DirectionSet | None = None
        self.vectors: dict[str, Tensor] = {}
        self.reference_mean: dict[str, Tensor] = {}
        self.probe: ProbeSet | None = None
        self._restored: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            direction_path=self.direction_path, layers=self.requested_layers, random_direction=self.random_direction
        )

    @property
    def pooling(self) -> str:
        return self.directions.pooling

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        module = _check_module(pl_module)
        self.probe = ProbeSet.from_datamodule(getattr(trainer, "datamodule", None))
        self.directions = load_direction(
            self.direction_path,
            module=module,
            probe=self.probe,
            layers=self.layers,
            allow_other_probe=self.allow_other_probe,
        )
        self.layers = self.directions.layers
        if self.random_direction:
            self.vectors = {
                k: random_unit(self.directions.width(k), self.random_seed, i) for i, k in enumerate(self.layers)
            }
        else:
            self.vectors = {k: v.float() / v.float().norm() for k, v in self.directions.vectors.items()}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        self.probe = self.probe.to(device)
        if self._restored is not None:
            self._apply_restored(self._restored)
            self._restored = None
        else:
            self.reference_mean = self.probe.mean(pl_module, self.layers, self.pooling)
        self.vectors = {k: v.to(device) for k, v in self.vectors.items()}
        self.reference_mean = {k: v.to(device) for k, v in self.reference_mean.items()}

    # ---- resumable state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "vectors": {k: v.detach().cpu() for k, v in self.vectors.items()},
            "reference_mean": {k: v.detach().cpu() for k, v in self.reference_mean.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)

    def _apply_restored(self, state: dict[str, Any]) -> None:
        self.vectors = dict(state["vectors"])
        self.reference_mean = dict(state["reference_mean"])

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _along(self, module: TestbedModule, grad: bool, probe: ProbeSet | None = None) -> dict[str, Tensor]:
        """<v_l, m_l(θ) - m_l^ref> per layer on the probe batch, or on ``probe`` (differentiable when ``grad``)."""
        means = (probe or self.probe).mean(module, self.layers, self.pooling, grad=grad)
        return {
            k: torch.dot(means[k] - self.reference_mean[k].to(means[k].dtype), self.vectors[k].to(means[k].dtype))
            for k in self.layers
        }

    @staticmethod
    def _log(trainer: pl.Trainer, values: dict[str, Any]) -> None:
        log_values(trainer, values)


def logging_due(trainer: pl.Trainer) -> bool:
    """True on rank zero, with a logger, at step 1 and every ``trainer.log_every_n_steps`` steps."""
    every = max(1, int(getattr(trainer, "log_every_n_steps", 50) or 50))
    step = trainer.global_step
    return bool(trainer.loggers) and trainer.is_global_zero and (step == 1 or step % every == 0)


def log_values(trainer: pl.Trainer, values: dict[str, Any]) -> None:
    """Write scalars straight to the trainer's loggers at the current step when ``logging_due``.

    Intervention values are logged this way rather than through ``LightningModule.log``: they are per-step scalars
    that need no epoch aggregation, and ``log`` costs milliseconds per call, which dominated the overhead of cheap
    blockers on small models.
    """
    if not values or not logging_due(trainer):
        return
    scalars = {k: float(v) for k, v in values.items()}
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=trainer.global_step)


def _params(module: TestbedModule) -> list[nn.Parameter]:
    params = [p for _, p in module.trainable_parameters()]
    if not params:
        raise ConfigError(f"{type(module).__name__} has no trainable parameters to block")
    return params


def work_dtype(params: Sequence[Tensor]) -> torch.dtype:
    """Precision of the projection: float64 if any parameter is float64, else float32 (bf16/fp16 are widened)."""
    return torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32


def _flat(tensors: Sequence[Tensor | None], like: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    dtype = dtype or work_dtype(like)
    return torch.cat(
        [
            (torch.zeros(p.numel(), dtype=dtype, device=p.device) if t is None else t.detach().reshape(-1).to(dtype))
            for t, p in zip(tensors, like, strict=False)
        ]
    )


def _unflat_into(flat: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    out, start = [], 0
    for p in params:
        out.append(flat[start : start + p.numel()].view_as(p))
        start += p.numel()
    return out


def orthonormal_rows(rows: Sequence[Tensor] | Tensor, eps: float = 1e-12) -> Tensor:
    """Orthonormal basis ``[k', P]`` of the span of ``rows`` (in their dtype); rows with no new direction are dropped.

    One row is just normalised; several go through Gram-Schmidt twice in float64 (for stability).
    """
    rows = list(rows)
    dtype = rows[0].dtype
    if len(rows) == 1:
        norm = rows[0].norm()
        if norm > 0:
            return (rows[0] / norm).unsqueeze(0)
        return rows[0].new_zeros(0, rows[0].numel())
    basis: list[Tensor] = []
    for row in rows:
        vec = row.double()
        for _ in range(2):
            for q in basis:
                vec = vec - torch.dot(q, vec) * q
        norm = vec.norm()
        if norm > eps * max(1.0, float(row.double().norm())):
            basis.append(vec / norm)
    if not basis:
        return rows[0].new_zeros(0, rows[0].numel())
    return torch.stack(basis).to(dtype)


class _JacobianBlocker(DirectionCallback):
    """Computes J_l = ∂<v_l, m_l>/∂θ for the trainable parameters (refreshed every ``every_n_steps`` steps).

    Vectors over the parameters are kept in ``work_dtype`` (float32 for float32/bf16 models): one P-sized pass per
    operation, no float64 copies, so the projection itself costs a few vector passes per step.

    Args: as ``UpdateProjectionBlocker`` (both blockers share this signature).
    """

    def __init__(
        self,
        direction_path: str,
        layers: list[str] | None = None,
        one_sided: bool = False,
        every_n_steps: int = 1,
        jacobian_probe_size: int | None = None,
        random_direction: bool = False,
        random_seed: int = 0,
        allow_other_probe: bool = False,
    ) -> None:
        super().__init__(direction_path, layers, random_direction, random_seed, allow_other_probe)
        self.one_sided = bool(one_sided)
        self.every_n_steps = positive_int("every_n_steps", every_n_steps)
        self.jacobian_probe_size = positive_int("jacobian_probe_size", jacobian_probe_size, allow_none=True)
        self.jacobian_probe: ProbeSet | None = None
        self.jacobians: Tensor | None = None  # [k, P] raw J_l rows
        self.basis: Tensor | None = None  # [k', P] orthonormal
        self._logs: dict[str, Any] = {}

    def _refresh(self, module: TestbedModule, step: int) -> None:
        if self.basis is not None and step % self.every_n_steps != 0:
            return
        params = _params(module)
        along = self._along(module, grad=True, probe=self.jacobian_probe)
        rows = []
        for i, layer in enumerate(self.layers):
            grads = torch.autograd.grad(along[layer], params, retain_graph=i < len(self.layers) - 1, allow_unused=True)
            rows.append(_flat([None if g is None else g.detach() for g in grads], params))
        self.jacobians = torch.stack(rows) if len(rows) > 1 else rows[0].unsqueeze(0)
        self.basis = orthonormal_rows(rows)

    def _project(self, delta: Tensor, sign: float) -> tuple[Tensor, Tensor]:
        """(kept, removed) parts of ``delta``; removed lies in span{J_l} (one-sided: J_l with sign·J_l·delta > 0)."""
        if not self.one_sided:
            removed = (self.basis @ delta) @ self.basis
            return delta - removed, removed
        original = delta
        active = torch.zeros(self.jacobians.shape[0], dtype=torch.bool, device=delta.device)
        for _ in range(self.jacobians.shape[0]):  # small active-set loop: exact for one layer or orthogonal J's
            newly = (sign * (self.jacobians @ delta) > 1e-12 * max(1.0, float(delta.norm()))) & ~active
            if not bool(newly.any()):
                break
            active |= newly
            q = orthonormal_rows(self.jacobians[active])
            delta = original - (q @ original) @ q
        return delta, original - delta

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["jacobians"] = None if self.jacobians is None else self.jacobians.cpu()
        state["basis"] = None if self.basis is None else self.basis.cpu()
        return state

    def _apply_restored(self, state: dict[str, Any]) -> None:
        super()._apply_restored(state)
        device = self.vectors[self.layers[0]].device if self.vectors else None
        self.jacobians = None if state.get("jacobians") is None else state["jacobians"].to(device)
        self.basis = None if state.get("basis") is None else state["basis"].to(device)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        device = pl_module.device
        if self.jacobian_probe_size is not None:
            if self.jacobian_probe_size > self.probe.size:
                raise ConfigError(
                    f"jacobian_probe_size={self.jacobian_probe_size} exceeds the probe set ({self.probe.size} inputs)"
                )
            self.jacobian_probe = self.probe.head(self.jacobian_probe_size)
        if self.basis is not None:
            self.basis, self.jacobians = self.basis.to(device), self.jacobians.to(device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._logs:
            self._log(trainer, self._logs)
            self._logs = {}


class UpdateProjectionBlocker(_JacobianBlocker):
    """Remove from each actual parameter update its first-order effect along v_rev (works under Adam/AdamW).

    The weights are snapshotted in a step pre-hook of every optimizer, J is taken there (at the pre-step weights),
    and in the step post-hook the update Δθ is replaced by its projection orthogonal to span{J_l}.

    Args:
        direction_path: direction file.
        layers: layers to block (default: all in the file).
        one_sided: block only motion toward the witness (J·Δθ > 0); motion away is kept.
        every_n_steps: recompute J every n steps (1 = every step; in between the last J is reused).
        jacobian_probe_size: take J on the first n probe inputs only (default: all). J costs one forward and backward
            pass on its probe batch, so this trades exactness on the full probe set for speed (the first-order
            change is zero on the subset; ``experiments/bench_reversion.py`` prints what leaks on the full set).
        random_direction: use a seeded random direction of the same width instead (the control).
        random_seed: seed of the random direction.
        allow_other_probe: accept a direction computed on a different probe set.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handles: list[Any] = []
        self._snapshot: Tensor | None = None
        self._step_params: list[nn.Parameter] = []
        self._module: TestbedModule | None = None
        self._trainer: pl.Trainer | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._module, self._trainer = pl_module, trainer
        self._remove_hooks()
        for opt in trainer.optimizers:
            self._handles.append(opt.register_step_pre_hook(self._pre_step))
            self._handles.append(opt.register_step_post_hook(self._post_step))

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._refresh(self._module, self._trainer.global_step)
        self._step_params = _params(self._module)
        self._snapshot = _flat(self._step_params, self._step_params)  # θ_old, flat (one copy)

    @torch.no_grad()
    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._snapshot is None:
            return
        params = self._step_params
        delta = _flat(params, params, self._snapshot.dtype).sub_(self._snapshot)  # Δθ [P]
        along_before = self.jacobians @ delta
        _, removed = self._project(delta, sign=1.0)
        for p, part in zip(params, _unflat_into(removed, params), strict=True):
            p.sub_(part.to(p.dtype))  # θ ← θ_old + Δθ - removed
        self._snapshot = None
        removed_norm = removed.norm()
        # kept as tensors (no device sync); written out in on_train_batch_end when logging is due
        self._logs = {
            tag(INTERVENTION, "update_removed_norm"): removed_norm,
            tag(INTERVENTION, "update_removed_frac"): removed_norm / delta.norm().clamp_min(1e-30),
            tag(INTERVENTION, "update_along_vrev_before"): along_before.sum(),
        }

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()


class GradientProjectionBlocker(_JacobianBlocker):
    """Project the *gradient* orthogonal to span{J_l} before the optimizer step.

    Under plain SGD this removes the first-order motion along v_rev. Under Adam/AdamW it does not: the moment
    estimates carry the removed component back into the update. Kept as a named variant for comparison; use
    ``UpdateProjectionBlocker`` to block motion under any optimizer.

    Args: as ``UpdateProjectionBlocker``; one-sided removes only components that would move toward the witness
    under a gradient-descent step (J·g < 0).
    """

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        with torch.enable_grad():
            self._refresh(pl_module, trainer.global_step)
        params = _params(pl_module)
        grad = _flat([p.grad for p in params], params)
        kept, removed = self._project(grad, sign=-1.0)
        for p, new in zip(params, _unflat_into(kept, params), strict=False):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.copy_(new.to(p.grad.dtype))
        self._logs = {tag(INTERVENTION, "grad_removed_norm"): removed.norm()}


def _add_grads(params: Sequence[nn.Parameter], grads: Sequence[Tensor | None]) -> None:
    with torch.no_grad():
        for p, g in zip(params, grads, strict=False):
            if g is None:
                continue
            if p.grad is None:
                p.grad = g.detach().clone()
            else:
                p.grad.add_(g.detach().to(p.grad.dtype))


class RepresentationPenalty(DirectionCallback):
    """Penalise positive drift along v_rev: strength · Σ_l relu(<v_l, m_l - m_l^ref>)^power.

    Its gradient is added to ``.grad`` right before each optimizer step (after accumulation and unscaling, before
    clipping), which equals adding the penalty to the loss; the logged task loss excludes it.

    Args:
        direction_path: direction file.
        strength: weight of the penalty (> 0).
        power: 1 (hinge) or 2 (squared hinge).
        layers, random_direction, random_seed, allow_other_probe: as ``UpdateProjectionBlocker``.
    """

    def __init__(
        self,
        direction_path: str,
        strength: float = 1.0,
        power: int = 2,
        layers: list[str] | None = None,
        random_direction: bool = False,
        random_seed: int = 0,
        allow_other_probe: bool = False,
    ) -> None:
        super().__init__(direction_path, layers, random_direction, random_seed, allow_other_probe)
        _check_positive("strength", strength)
        if power not in (1, 2):
            raise ConfigError(f"power must be 1 or 2, got {power!r}")
        self.strength = float(strength)
        self.power = int(power)
        self._value: Tensor | None = None

    def penalty(self, module: TestbedModule) -> Tensor:
        """The differentiable penalty at the current weights."""
        along = self._along(module, grad=True)
        return self.strength * sum(torch.relu(a) ** self.power for a in along.values())

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        params = _params(pl_module)
        with torch.enable_grad():
            value = self.penalty(pl_module)
            grads = (
                torch.autograd.grad(value, params, allow_unused=True) if value.requires_grad else [None] * len(params)
            )
        _add_grads(params, grads)
        self._value = value.detach()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._value is not None:
            self._log(trainer, {tag(INTERVENTION, "penalty"): self._value})
            self._value = None


class ActivationClamp(DirectionCallback):
    """Hold the v_rev component of the stream at each layer at its reference value c_l = <v_l, m_l^ref>.

    A forward hook on ``layer_module(l)`` replaces the stream h by h + (c_l - <v_l, h>) v_l (mode ``each``: every
    position of every input) or shifts the batch-mean component to c_l (mode ``shift``: per-input variation kept).

    Args:
        direction_path: direction file.
        mode: ``each`` or ``shift``.
        apply_in: ``train`` (only while the module is in training mode) or ``always`` (probe reads too).
        layers, random_direction, random_seed, allow_other_probe: as ``UpdateProjectionBlocker``.
    """

    def __init__(
        self,
        direction_path: str,
        mode: Literal["each", "shift"] = "each",
        apply_in: Literal["train", "always"] = "train",
        layers: list[str] | None = None,
        random_direction: bool = False,
        random_seed: int = 0,
        allow_other_probe: bool = False,
    ) -> None:
        super().__init__(direction_path, layers, random_direction, random_seed, allow_other_probe)
        if mode not in ("each", "shift"):
            raise ConfigError(f"clamp mode must be 'each' or 'shift', got {mode!r}")
        if apply_in not in ("train", "always"):
            raise ConfigError(f"apply_in must be 'train' or 'always', got {apply_in!r}")
        self.mode, self.apply_in = mode, apply_in
        self._handles: list[Any] = []
        self._shift_sum = 0.0
        self._shift_n = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.attach(pl_module)

    def attach(self, module: TestbedModule) -> None:
        """Register the clamping hooks (idempotent)."""
        self.detach()
        for layer in self.layers:
            target = float(torch.dot(self.reference_mean[layer].float(), self.vectors[layer].float()))
            self._handles.append(module.layer_module(layer).register_forward_hook(self._hook(module, layer, target)))

    def _hook(self, module: TestbedModule, layer: str, target: float) -> Any:
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> Any:
            if self.apply_in == "train" and not module.training:
                return None
            h = _stream(out)
            v = self.vectors[layer].to(device=h.device, dtype=h.dtype)
            comp = h @ v  # [..., ]
            shift = (target - comp) if self.mode == "each" else (target - comp.mean()).expand_as(comp)
            self._shift_sum = self._shift_sum + shift.detach().abs().mean()
            self._shift_n += 1
            new = h + shift.unsqueeze(-1) * v
            return (new, *out[1:]) if isinstance(out, tuple) else new

        return hook

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._shift_n:
            self._log(trainer, {tag(INTERVENTION, "clamp_mean_abs_shift"): self._shift_sum / self._shift_n})
            self._shift_sum, self._shift_n = 0.0, 0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.detach()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.detach()


class L2Anchor(pl.Callback):
    """Baseline: pull the trainable parameters toward their values at the start of the run (the aligned weights).

    Adds strength · (θ - θ_start) to the gradient before each step (the gradient of strength/2 · ||θ - θ_start||²).

    Args:
        strength: weight of the anchor (> 0).
    """

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__()
        _check_positive("strength", strength)
        self.strength = float(strength)
        self.anchor: list[Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(strength=self.strength)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = _params(_check_module(pl_module))
        if self.anchor is None:
            self.anchor = [p.detach().clone() for p in params]
        self.anchor = [a.to(p.device) for a, p in zip(self.anchor, params, strict=False)]

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        params = _params(pl_module)
        with torch.no_grad():
            diffs = [p.detach() - a for p, a in zip(params, self.anchor, strict=False)]
        _add_grads(params, [self.strength * d for d in diffs])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if logging_due(trainer):
            params = _params(pl_module)
            pairs = zip(params, self.anchor, strict=False)
            dist = torch.sqrt(sum(((p.detach() - a).double() ** 2).sum() for p, a in pairs))
            log_values(trainer, {tag(INTERVENTION, "anchor_distance"): dist})

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": None if self.anchor is None else [a.cpu() for a in self.anchor]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.anchor = state_dict.get("anchor")


class ReversionMonitor(DirectionCallback):
    """Log drift alignment with v_rev and null exceedance at a cadence, without touching training.

    Measured after the first update (step 1), at every multiple of ``every_n_steps``, at the extra ``steps``,
    and at the end of training. Per layer it logs under ``reversion/``: ``cos_drift_vrev``, ``drift_along``,
    ``drift_orth_norm``, ``exceeds_null_p99`` / ``_p999`` (0/1 for the step) and the running ``exceed_frac_*``.
    Values go straight to the trainer's loggers at the current global step (independent of
    ``log_every_n_steps``) and into ``self.history``.

    Args:
        direction_path: direction file.
        every_n_steps: measurement cadence in optimizer steps.
        steps: extra steps at which to measure.
        reference: ``start`` (mean representation at the start of this run) or ``file`` (the file's reference mean).
        null_levels: isotropic-null quantiles for the exceedance indicators.
        shard_probe: under multi-process training each rank reads its shard of the probe batch; the sums are reduced.
        task_keys: keys of ``trainer.callback_metrics`` (e.g. ``train/loss``) recorded with each measurement.
        harm_judge: optional callable ``judge(module) -> float | dict`` (the LLM track's harmfulness judge),
            logged under ``align/`` at ``harm_every_n_steps`` (default: the same cadence) and at the end.
        harm_every_n_steps: cadence of the judge.
        layers, random_direction, random_seed, allow_other_probe: as the blockers.
    """

    def __init__(
        self,
        direction_path: str,
        every_n_steps: int = 10,
        steps: list[int] | None = None,
        reference: Literal["start", "file"] = "start",
        null_levels: list[float] | None = None,
        shard_probe: bool = True,
        task_keys: list[str] | None = None,
        harm_judge: HarmfulnessHook | None = None,
        harm_every_n_steps: int | None = None,
        layers: list[str] | None = None,
        random_direction: bool = False,
        random_seed: int = 0,
        allow_other_probe: bool = False,
    ) -> None:
        super().__init__(direction_path, layers, random_direction, random_seed, allow_other_probe)
        self.every_n_steps = positive_int("every_n_steps", every_n_steps)
        if reference not in ("start", "file"):
            raise ConfigError(f"reference must be 'start' or 'file', got {reference!r}")
        self.steps = set(int(s) for s in (steps or []))
        self.reference = reference
        self.null_levels = tuple(null_levels or NULL_LEVELS)
        self.shard_probe = shard_probe
        self.task_keys = list(task_keys if task_keys is not None else ["train/loss"])
        self.harm_judge = harm_judge
        self.harm_every_n_steps = harm_every_n_steps or self.every_n_steps
        self.history: list[dict[str, float]] = []
        self.nulls: dict[str, NullExceedance] = {}
        self._drift: dict[str, DriftAlignment] = {}
        self._last_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        restored = self._restored
        super().on_train_start(trainer, pl_module)
        if self.reference == "file" and restored is None:
            if not self.directions.reference_mean:
                raise ConfigError(f"{self.direction_path} holds no reference mean; use reference: start")
            self.reference_mean = {k: self.directions.reference_mean[k].to(pl_module.device) for k in self.layers}
        self._drift = {}
        # The per-step cos is already global after the drift metric's sync, so the exceedance counters are not synced.
        self.nulls = {
            k: NullExceedance(self.directions.width(k), self.null_levels, sync_on_compute=False).to(pl_module.device)
            for k in self.layers
        }
        for k, (exceed, total) in (restored or {}).get("null_counts", {}).items():
            self.nulls[k].exceed.copy_(exceed)
            self.nulls[k].total.copy_(total)

    def _drift_metric(self, layer: str, shard: bool, device: torch.device) -> DriftAlignment:
        """One drift metric per layer, built once (its reference and direction are fixed for the run)."""
        if layer not in self._drift:
            self._drift[layer] = DriftAlignment(
                self.vectors[layer], self.reference_mean[layer], sync_on_compute=shard
            ).to(device)
        return self._drift[layer]

    def _due(self, step: int) -> bool:
        return step >= 1 and (step == 1 or step % self.every_n_steps == 0 or step in self.steps)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Measure now (all ranks must call it together under DDP); returns the logged values."""
        step = trainer.global_step
        world, rank = trainer.world_size, trainer.global_rank
        shard = self.shard_probe and world > 1
        reps = self.probe.read(
            pl_module, self.layers, self.pooling, batch=self.probe.shard(rank, world) if shard else None
        )
        values: dict[str, float] = {}
        for layer in self.layers:
            metric = self._drift_metric(layer, shard, pl_module.device)
            metric.reset()
            metric.update(reps[layer])
            out = metric.compute()
            cos = out["cos"]
            values[tag(REVERSION, "cos_drift_vrev", layer)] = float(cos)
            values[tag(REVERSION, "drift_along", layer)] = float(out["along"])
            values[tag(REVERSION, "drift_orth_norm", layer)] = float(out["orth_norm"])
            null = self.nulls[layer]
            for p, ind in zip(self.null_levels, null.indicators(cos), strict=False):
                values[tag(REVERSION, f"exceeds_null_{level_name(p)}", layer)] = float(ind)
            null.update(cos)
            for name, val in null.compute().items():
                if name.startswith("exceed_frac"):
                    values[tag(REVERSION, name, layer)] = float(val)
        if self.harm_judge is not None and (step % self.harm_every_n_steps == 0 or step == 1):
            for name, val in evaluate_hook(self.harm_judge, pl_module).items():
                values[tag(ALIGN, name)] = val
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=step)
        record = {"step": float(step), **values}
        for key in self.task_keys:
            if key in trainer.callback_metrics:
                record[key] = float(trainer.callback_metrics[key])
        self.history.append(record)
        self._last_step = step
        return values

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step != self._last_step and self._due(step):
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step >= 1 and trainer.global_step != self._last_step:
            self.measure(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["null_counts"] = {k: (m.exceed.cpu(), m.total.cpu()) for k, m in self.nulls.items()}
        state["history"] = list(self.history)
        state["last_step"] = self._last_step
        return state

    def _apply_restored(self, state: dict[str, Any]) -> None:
        super()._apply_restored(state)
        self.history = list(state.get("history", []))
        self._last_step = int(state.get("last_step", -1))


__all__ = [
    "DirectionCallback",
    "ReversionMonitor",
    "UpdateProjectionBlocker",
    "GradientProjectionBlocker",
    "RepresentationPenalty",
    "ActivationClamp",
    "L2Anchor",
    "orthonormal_rows",
    "random_unit",
]
