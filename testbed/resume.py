"""Resuming from ``--ckpt_path``: the config in hand is the truth, and the checkpoint never silently replaces any
of it.

LightningCLI on its own overlays the checkpoint's saved hyper-parameters on the parsed config, so an explicit learning
rate, and even the model's width or class, would quietly become the checkpoint's. ``TestbedCLI`` keeps the config
and applies these rules before anything is built or written:

1. The model class must be the checkpoint's; otherwise refused.
2. The checkpoint's weights must fit the model the config builds (every name and shape); otherwise refused, naming
   the settings that differ from the checkpoint's (a width, a layer count, a LoRA rank...).
3. Every other model setting that differs from the checkpoint's saved value is applied: the model is built from the
   config. The differences are listed on stderr in one line, so nothing changes unannounced.
4. Optimizer settings are applied to the restored optimizer too: Lightning restores the optimizer's parameter groups,
   learning rate, betas and weight decay included, from the checkpoint; ``ConfigOptimizerSettings`` compares them
   with the groups the config built, lists the differences on stderr and writes the config's values back before
   training starts. An optimizer of another kind or layout (other settings, another number of groups) is refused:
   the saved optimizer state belongs to the other one.

``init_from`` is not compared (the checkpoint's weights replace the initial ones). Data settings are not compared
(resuming on other data is a choice). With a learning-rate scheduler, its restored state keeps governing the
learning rate.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from testbed.errors import CheckpointError
from testbed.strategies import ALL_FAMILIES
from testbed.weights import state_mismatch

__all__ = ["OPTIMIZER_KEYS", "checkpoint_hparams", "flat_settings", "resume_changes", "announce",
           "check_resume_weights", "ConfigOptimizerSettings"]

OPTIMIZER_KEYS = ("optimizer", "lr", "weight_decay", "momentum", "betas")
_IGNORED = ("init_from",)


def checkpoint_hparams(path: str | Path) -> dict[str, Any]:
    """The model hyper-parameters saved in a Lightning checkpoint (``{}`` when it has none)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    return dict(hparams) if isinstance(hparams, dict) else {}


def flat_settings(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaves of a nested config value; ``init_args`` levels are dropped, tuples become lists."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in ("init_args", "dict_kwargs"):
                out.update(flat_settings(item, prefix))
            else:
                out.update(flat_settings(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, tuple):
        value = list(value)
    return {prefix: value}


def _shown(changes: dict[str, tuple]) -> str:
    return ", ".join(f"{k}={a!r} (checkpoint: {b!r})" for k, (a, b) in sorted(changes.items()))


def resume_changes(config_model: dict[str, Any], hparams: dict[str, Any], ckpt_path: str) -> dict[str, tuple]:
    """The model settings the config changes, ``key -> (config value, checkpoint value)``, to be applied (the
    optimizer's are compared on the restored optimizer itself, rule 4).

    Args:
        config_model: the config's ``model`` section (``class_path``, ``init_args``).
        hparams: the checkpoint's saved hyper-parameters (``_class_path`` and the init arguments).
        ckpt_path: the checkpoint, named in errors.

    Raises:
        CheckpointError: another model class or another optimizer kind (rules 1 and 4).
    """
    saved = dict(hparams)
    saved.pop("_instantiator", None)
    saved_class = saved.pop("_class_path", None)
    given_class = config_model.get("class_path")
    if saved_class and given_class and saved_class != given_class:
        raise CheckpointError(f"--ckpt_path {ckpt_path} holds a {saved_class}, not the config's {given_class}; "
                              "resume with the model it was trained as")
    given, saved = flat_settings({k: v for k, v in config_model.items() if k != "class_path"}), flat_settings(saved)
    differ = {key: (given[key], saved[key]) for key in given.keys() & saved.keys()
              if given[key] != saved[key] and key.split(".")[0] not in _IGNORED}
    kind = {k: v for k, v in differ.items() if k.split(".")[0] in OPTIMIZER_KEYS and k.endswith(".name")}
    if kind:
        raise CheckpointError(f"--ckpt_path {ckpt_path}: the config changes the optimizer kind, {_shown(kind)}; its "
                              "saved state belongs to the other kind: start a new run from the weights with init_from")
    return {k: v for k, v in differ.items() if k.split(".")[0] not in OPTIMIZER_KEYS}  # those: rule 4


def announce(changes: dict[str, tuple], ckpt_path: str) -> None:
    """Say on stderr which of the config's model settings differ from the checkpoint's (rule 3)."""
    if changes:
        print(f"testbed: resuming from {ckpt_path} with the config's values where they differ from the checkpoint's: "
              f"{_shown(changes)}", file=sys.stderr)


def check_resume_weights(module: torch.nn.Module, ckpt_path: str, changes: dict[str, tuple] | None = None) -> None:
    """Refuse a checkpoint whose weights do not fit ``module`` (rule 2), naming the settings in ``changes``; a module
    that builds its layers later (``configure_model``) is checked by Lightning's own load, whose error the CLI
    reports in one line."""
    own = module.state_dict()
    if not own:
        return
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    state = dict(checkpoint.get("state_dict") or {})
    adapt = getattr(module, "adapt_state_dict", None)
    state = adapt(state) if callable(adapt) else state
    problem = state_mismatch(own, state)
    if problem and not getattr(module, "strict_loading", True):
        problem = state_mismatch({k: v for k, v in own.items() if k in state}, {k: state[k] for k in own if k in state})
    if problem:
        settings = f"; the config's settings differ from the checkpoint's: {_shown(changes)}" if changes else ""
        raise CheckpointError(f"--ckpt_path {ckpt_path} does not fit {type(module).__name__} ({problem}){settings}")


def _settings(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k not in ("params", "initial_lr")}


class ConfigOptimizerSettings(pl.Callback):
    """On a resume, keep the config's optimizer settings over the checkpoint's (rule 4); on by default in the CLI.

    The checkpoint's parameter groups are read as Lightning restores the callbacks, the config's when the fit starts
    (the optimizer is built, not yet restored): another kind or layout is refused there, before anything trains; the
    differences are listed, and the config's values are written over the restored ones when training starts.
    """

    supported_strategies = ALL_FAMILIES

    def __init__(self) -> None:
        self._saved: list[list[dict[str, Any]]] | None = None
        self._fresh: list[list[dict[str, Any]]] = []

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get("optimizer_states") or []
        self._saved = [[_settings(g) for g in state.get("param_groups", [])] for state in states
                       if isinstance(state, dict)]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fresh = [[_settings(group) for group in opt.param_groups] for opt in trainer.optimizers]
        if not self._saved or trainer.ckpt_path is None:
            return
        layout = [[sorted(g) for g in opt] for opt in self._fresh]
        if layout != [[sorted(g) for g in opt] for opt in self._saved]:
            kinds = ", ".join(type(opt).__name__ for opt in trainer.optimizers)
            raise CheckpointError(f"--ckpt_path {trainer.ckpt_path}: its optimizer state belongs to another optimizer "
                                  f"than the config's {kinds} (other settings or groups); start a new run from its "
                                  "weights with init_from")
        changes = {f"optimizer {k}": (fresh[k], saved[k]) for opt_f, opt_s in zip(self._fresh, self._saved, strict=True)
                   for fresh, saved in zip(opt_f, opt_s, strict=True) for k in sorted(fresh) if fresh[k] != saved[k]}
        if changes and trainer.is_global_zero:
            print(f"testbed: resuming with the config's optimizer settings: {_shown(changes)}", file=sys.stderr)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._saved or trainer.ckpt_path is None:
            return
        keep = {"lr"} if trainer.lr_scheduler_configs else set()  # a scheduler's restored state governs the lr
        for opt, fresh in zip(trainer.optimizers, self._fresh, strict=False):
            for group, settings in zip(opt.param_groups, fresh, strict=False):
                group.update({k: v for k, v in settings.items() if k not in keep})
