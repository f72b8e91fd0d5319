"""Which testbed interventions run correctly under which Lightning strategy, checked before ``fit``.

Strategies fall into families: ``single`` (one device), ``ddp`` (DDP, DDP-spawn: every process holds the full
model and DDP averages the gradients before any callback sees them), ``fsdp`` and ``deepspeed`` (parameters,
gradients or optimizer state are sharded or owned by the engine). Interventions that read or edit full parameters,
their gradients or their updates are correct only when every process holds every parameter, so they are refused
under sharded strategies instead of running wrong. Forward-only interventions are allowed wherever Lightning runs.

=========================================  ======  ====  ====  =========  ==========================================
intervention                               single  ddp   fsdp  deepspeed  why
=========================================  ======  ====  ====  =========  ==========================================
ReversionMonitor                           yes     yes   yes   yes        forward reads; probe shards reduced
UpdateProjectionBlocker                    yes     yes   no    no         edits the full update after the step
GradientProjectionBlocker                  yes     yes   no    no         edits full ``.grad`` before the step
RepresentationPenalty                      yes     yes   no    no         adds to full ``.grad`` before the step
ActivationClamp (mode=each)                yes     yes   yes   yes        per-position forward hook
ActivationClamp (mode=shift)               yes     no    no    no         holds the mean of each process's own batch
L2Anchor                                   yes     yes   no    no         adds to full ``.grad`` before the step
random-direction control                   as the blocker it is (``random_direction: true``)
NonFiniteGuard, ResumableRng               yes     yes   yes   yes        decisions reduced across processes
=========================================  ======  ====  ====  =========  ==========================================

DDP correctness is tested (``tests/test_ddp.py``: two CPU processes vs one with the same global batch). FSDP and
DeepSpeed are reachable by configuration (``trainer.strategy: fsdp`` / ``deepspeed``, on GPUs) for the forward-only
interventions; the testbed has not run them there. A callback may declare ``supported_strategies`` (a tuple of
family names), which wins over the table; any other ``testbed.interventions`` callback is allowed on
``single``/``ddp`` only. Strategies outside the four families accept only the interventions marked yes everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, SingleDeviceStrategy, Strategy

from testbed.errors import ConfigError

FAMILIES = ("single", "ddp", "fsdp", "deepspeed")
ALL = frozenset(FAMILIES)
FULL_PARAMETERS = frozenset({"single", "ddp"})
SINGLE = frozenset({"single"})


def _clamp_support(callback: Any) -> frozenset[str]:
    return SINGLE if getattr(callback, "mode", "each") == "shift" else ALL


# class name -> families where it is correct (a function of the instance where a setting matters)
SUPPORT: dict[str, frozenset[str] | Callable[[Any], frozenset[str]]] = {
    "ReversionMonitor": ALL,
    "UpdateProjectionBlocker": FULL_PARAMETERS,
    "GradientProjectionBlocker": FULL_PARAMETERS,
    "RepresentationPenalty": FULL_PARAMETERS,
    "ActivationClamp": _clamp_support,
    "L2Anchor": FULL_PARAMETERS,
    "NonFiniteGuard": ALL,
    "ResumableRng": ALL,
}

WHY_NOT = {
    "ddp": "each process applies it to its own part of the global batch, so the result would depend on the "
    "number of processes",
    "fsdp": "FSDP shards parameters and gradients across processes, so the full parameters, gradients or "
    "updates the intervention edits are not available on one process",
    "deepspeed": "DeepSpeed owns the optimizer step and shards gradients/optimizer state, so the gradients or "
    "updates the intervention edits are not the ones applied",
    "other": "the testbed has not verified it under this strategy",
}


def strategy_family(strategy: Strategy) -> str:
    """``single``, ``ddp``, ``fsdp``, ``deepspeed`` or ``other`` for a Lightning strategy instance."""
    if isinstance(strategy, FSDPStrategy):
        return "fsdp"
    if isinstance(strategy, DeepSpeedStrategy):
        return "deepspeed"
    if isinstance(strategy, DDPStrategy):
        return "ddp"
    if isinstance(strategy, SingleDeviceStrategy):
        return "single"
    return "other"


def supported_families(callback: Any) -> frozenset[str] | None:
    """Families where ``callback`` is correct; ``None`` for callbacks the testbed does not police."""
    declared = getattr(callback, "supported_strategies", None)
    if declared is not None:
        return frozenset(declared)
    for klass in type(callback).__mro__:
        rule = SUPPORT.get(klass.__name__)
        if rule is not None:
            return rule(callback) if callable(rule) else rule
    if type(callback).__module__.startswith("testbed.interventions"):
        return FULL_PARAMETERS
    return None


def unsupported(callbacks: Iterable[Any], family: str) -> list[str]:
    """Descriptions of the callbacks that are not correct under strategy ``family``."""
    problems = []
    for callback in callbacks:
        families = supported_families(callback)
        if families is None or family in families or (family == "other" and families == ALL):
            continue
        mode = getattr(callback, "mode", None)
        label = type(callback).__name__ + (f" (mode={mode})" if isinstance(mode, str) else "")
        problems.append(f"{label} (supported: {', '.join(f for f in FAMILIES if f in families)})")
    return problems


def check_strategy(trainer: pl.Trainer) -> None:
    """Raise ``ConfigError`` if an intervention among ``trainer.callbacks`` is not correct under its strategy."""
    family = strategy_family(trainer.strategy)
    problems = unsupported(trainer.callbacks, family)
    if problems:
        raise ConfigError(
            f"strategy {type(trainer.strategy).__name__} ({family}) cannot run {'; '.join(problems)}: "
            f"{WHY_NOT[family]}. Use a supported strategy for these interventions or remove them."
        )
