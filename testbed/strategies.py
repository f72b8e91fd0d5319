"""Which testbed callbacks run correctly under which Lightning strategy, checked before ``fit``.

Strategies fall into families: ``single`` (one device), ``ddp`` (DDP, DDP-spawn: every process holds the full model and
DDP averages the gradients before any callback sees them), ``fsdp2`` (Lightning's ``ModelParallelStrategy``, e.g.
``testbed.sharding.FSDP2Strategy``: ``fully_shard`` makes each parameter a ``DTensor`` of per-process slices, which the
flat-vector algebra handles by summing partial inner products), ``fsdp`` (FSDP1) and ``deepspeed`` (parameters,
gradients or optimizer state are sharded or owned by the engine). A callback states the families where it is correct in
its ``supported_strategies`` (a class attribute, or a property when a setting matters, as for the activation clamp's
``shift`` mode); callbacks that state nothing are not policed. Interventions that read or edit full parameters, their
gradients or their updates declare ``FULL_PARAMETERS`` (plus ``fsdp2`` where their algebra is shard-aware, as for the
update projection); forward-only ones ``ALL_FAMILIES``. Strategies outside the families accept only callbacks correct
everywhere. A refusal names the strategies that would run every refused callback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    Strategy,
)

from testbed.errors import ConfigError

FAMILIES = ("single", "ddp", "fsdp2", "fsdp", "deepspeed")
ALL_FAMILIES = frozenset(FAMILIES)
FULL_PARAMETERS = frozenset({"single", "ddp"})
SINGLE = frozenset({"single"})

__all__ = [
    "FAMILIES",
    "ALL_FAMILIES",
    "FULL_PARAMETERS",
    "SINGLE",
    "strategy_family",
    "supported_families",
    "ALTERNATIVES",
    "unsupported",
    "alternatives",
    "check_strategy",
]

WHY_NOT = {
    "ddp": "each process applies it to its own part of the global batch, so the result would depend on the "
    "number of processes",
    "fsdp": "FSDP (FSDP1) flattens and shards parameters and gradients across processes, so the full parameters, "
    "gradients or updates the intervention edits are not available on one process",
    "fsdp2": "under FSDP2 each process holds only a slice of every parameter, and the intervention's algebra is "
    "not shard-aware",
    "deepspeed": "DeepSpeed owns the optimizer step and shards gradients/optimizer state, so the gradients or "
    "updates the intervention edits are not the ones applied",
    "other": "the testbed has not verified it under this strategy",
}

# The strategy to name for each family when suggesting an alternative (most scalable first).
ALTERNATIVES = {
    "fsdp2": "strategy: testbed.sharding.FSDP2Strategy (sharded, FSDP2)",
    "ddp": "strategy: ddp",
    "single": "one device (devices: 1)",
}


def strategy_family(strategy: Strategy) -> str:
    """``single``, ``ddp``, ``fsdp2``, ``fsdp``, ``deepspeed`` or ``other`` for a Lightning strategy instance."""
    if isinstance(strategy, ModelParallelStrategy):
        return "fsdp2"
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
    """Families where ``callback`` is correct (its ``supported_strategies``); ``None`` when it states none."""
    declared = getattr(callback, "supported_strategies", None)
    return None if declared is None else frozenset(declared)


def unsupported(callbacks: Iterable[Any], family: str) -> list[str]:
    """Descriptions of the callbacks that are not correct under strategy ``family``."""
    problems = []
    for callback in callbacks:
        families = supported_families(callback)
        if families is None or family in families or (family == "other" and families == ALL_FAMILIES):
            continue
        mode = getattr(callback, "mode", None)
        label = type(callback).__name__ + (f" (mode={mode})" if isinstance(mode, str) else "")
        problems.append(f"{label} (supported: {', '.join(f for f in FAMILIES if f in families)})")
    return problems


def alternatives(callbacks: Iterable[Any]) -> list[str]:
    """Strategy settings (``ALTERNATIVES``) under which every one of ``callbacks`` is correct."""
    common = set(ALTERNATIVES)
    for callback in callbacks:
        families = supported_families(callback)
        if families is not None:
            common &= families
    return [setting for family, setting in ALTERNATIVES.items() if family in common]


def check_strategy(trainer: pl.Trainer) -> None:
    """Raise ``ConfigError`` if an intervention among ``trainer.callbacks`` is not correct under its strategy."""
    family = strategy_family(trainer.strategy)
    problems = unsupported(trainer.callbacks, family)
    if problems:
        refused = [cb for cb in trainer.callbacks if unsupported([cb], family)]
        options = alternatives(refused)
        instead = f"Use {' or '.join(options)} instead" if options else "Use a supported strategy for each of them"
        raise ConfigError(
            f"strategy {type(trainer.strategy).__name__} ({family}) cannot run {'; '.join(problems)}: "
            f"{WHY_NOT[family]}. {instead}, or remove them."
        )
