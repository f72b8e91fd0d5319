"""Run guards: stop on NaN/inf naming the step and metric, and refuse runs that would do nothing.

``NonFiniteGuard`` is on by default in ``TestbedCLI`` (list it in ``trainer.callbacks`` to change its settings).
It checks
- the training loss before every backward pass (so a NaN never reaches the weights),
- every logged metric after each training batch and after validation (values that callbacks write straight to the
  logger are checked by ``testbed.step_log.log_at_step``, the one path they take, with the same error),
- the probe representations of all layers every ``representation_every_n_steps`` steps (when the model and
  data implement the probe protocol),
- the weights (and optimizer state) of every checkpoint before it is written, and the weights after the last step,
  so nothing non-finite is ever saved under a name that looks finished (``testbed.checkpoint_io.SafeCheckpointIO``
  checks the weights once more as it writes).
A non-finite value raises ``NonFiniteError`` (a ``TestbedError``): the CLI prints one line and exits with status 2.
Under DDP the decision is reduced across processes, so every rank stops at the same step.

The CLI also uses ``check_run_length`` (``max_steps: 0`` and the like are refused), ``check_config_files`` (a config
that is not UTF-8 YAML with distinct keys is named) and ``lightning_config_errors`` (Lightning's Trainer errors become
one line); ``testbed.run_folder`` locks the run folder and cleans up after a refused run.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from testbed.errors import ConfigError, TestbedError, positive_int
from testbed.io import load_yaml
from testbed.strategies import ALL_FAMILIES


class NonFiniteError(TestbedError):
    """A loss, logged metric or representation became NaN or infinite."""


def tensors_in(value: Any, prefix: str = "") -> dict[str, Tensor]:
    """Every tensor of a nested dict/list (a checkpoint, an optimizer state), keyed by its dotted path."""
    if isinstance(value, Tensor):
        return {prefix: value}
    items: Any = ()
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    out: dict[str, Tensor] = {}
    for key, item in items:
        out.update(tensors_in(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def first_non_finite(values: Mapping[str, Any]) -> tuple[str, float] | None:
    """The first ``(name, value)`` whose value (a number or tensor) has a NaN/inf entry, else ``None``.

    All tensors are checked with one reduction (one device sync), the culprit is looked up only on failure.
    """
    tensors = {k: v.detach() for k, v in values.items()
               if isinstance(v, Tensor) and v.numel() > 0 and (v.is_floating_point() or v.is_complex())}
    device = next(iter(tensors.values())).device if tensors else None
    if tensors and not bool(torch.stack([torch.isfinite(t).all().to(device) for t in tensors.values()]).all()):
        for name, tensor in tensors.items():
            bad = ~torch.isfinite(tensor)
            if bool(bad.any()):
                return name, float(tensor.flatten()[bad.flatten()][0].real)
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            return name, value
    return None


class NonFiniteGuard(pl.Callback):
    """Raise ``NonFiniteError`` when the loss, a logged metric, a probe representation or a weight is NaN/inf.

    Correct under every strategy: the decision is reduced across processes.

    Args:
        check_loss: check the training loss before each backward pass.
        check_metrics: check every logged metric (``trainer.callback_metrics``) after each batch and validation.
        representation_every_n_steps: read the probe representations of every layer this often (0: never).
        check_weights: check the weights and optimizer state of every checkpoint before it is written, and the
            weights after the last step.
    """

    supported_strategies = ALL_FAMILIES

    def __init__(
        self, check_loss: bool = True, check_metrics: bool = True, representation_every_n_steps: int = 50,
        check_weights: bool = True,
    ) -> None:
        super().__init__()
        positive_int("representation_every_n_steps", representation_every_n_steps, allow_zero=True)
        self.check_loss = check_loss
        self.check_metrics = check_metrics
        self.representation_every_n_steps = representation_every_n_steps
        self.check_weights = check_weights

    # ---- checks -------------------------------------------------------------------------------
    def _stop_if(self, trainer: pl.Trainer, found: tuple[str, float] | None, what: str) -> None:
        """Raise on every rank if any rank found a non-finite value (the reduction keeps ranks in step).

        Args:
            trainer: the trainer.
            found: ``(name, value)`` found on this rank, or ``None``.
            what: where it was found, with the step (``"training loss at step 3"``).
        """
        decision = trainer.strategy.reduce_boolean_decision(found is not None, all=False)
        if not decision:
            return
        if found is None:
            raise NonFiniteError(f"non-finite {what} on another process; stopping the run")
        name, value = found
        raise NonFiniteError(f"non-finite {what}: {name} = {value} (stopping the run)")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_step = trainer.global_step  # the step this batch belongs to (as ``self.global_step`` in it)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if self.check_loss:
            found = first_non_finite({"loss": loss})
            self._stop_if(trainer, found, f"training loss at step {trainer.global_step}")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.check_metrics:
            found = first_non_finite(trainer.callback_metrics)
            self._stop_if(trainer, found, f"logged metric at step {getattr(self, '_batch_step', trainer.global_step)}")
        every, step = self.representation_every_n_steps, trainer.global_step
        if every and step % every == 0:
            found = self._representation_problem(trainer, pl_module)
            self._stop_if(trainer, found, f"probe representation after step {step}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.check_metrics and not trainer.sanity_checking:
            found = first_non_finite(trainer.callback_metrics)
            self._stop_if(trainer, found, f"validation metric after step {trainer.global_step}")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # Runs while Lightning assembles a checkpoint, before anything is written (ModelCheckpoint, save_checkpoint).
        if self.check_weights:
            found = first_non_finite(tensors_in({"weights": checkpoint.get("state_dict", {}),
                                                 "optimizer": checkpoint.get("optimizer_states", [])}))
            self._stop_if(trainer, found, f"state in the checkpoint after step {trainer.global_step}; nothing saved")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.check_weights:
            found = first_non_finite(tensors_in(dict(pl_module.named_parameters())))
            self._stop_if(trainer, found, f"weight after the last step ({trainer.global_step})")

    def _representation_problem(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[str, float] | None:
        """Non-finite probe representation ``('representation/<layer>', value)``, or ``None`` (also if unsupported)."""
        from testbed.probes import probe_set_of
        from testbed.protocol import TestbedDataModule, TestbedModule

        if not isinstance(pl_module, TestbedModule) or not isinstance(trainer.datamodule, TestbedDataModule):
            return None
        try:
            layers = pl_module.layer_names()
            probe = probe_set_of(trainer)
        except (NotImplementedError, ConfigError):  # no layers or no (non-empty) probe batch: nothing to check
            return None
        try:
            reps = probe.read(pl_module, layers)  # eval mode, isolated RNG, no autograd; modes restored after
        except TestbedError:
            raise
        except Exception as exc:  # the guard must not be what breaks a run: report once, stop reading probes
            rank_zero_warn(f"NonFiniteGuard: cannot read probe representations ({type(exc).__name__}: {exc}); "
                           "representation checks are off for this run")
            self.representation_every_n_steps = 0
            return None
        return first_non_finite({f"representation/{name}": rep for name, rep in reps.items()})


@contextmanager
def lightning_config_errors(also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Re-raise Lightning's ``MisconfigurationException`` (an invalid Trainer setting) as a one-line ``ConfigError``.

    Args:
        also: further exception types to treat the same way (``ValueError`` while the Trainer is being built,
            e.g. ``strategy: fsdp`` on a CPU).
    """
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        yield
    except TestbedError:
        raise
    except (MisconfigurationException, *also) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"invalid trainer setting: {first}") from exc


def check_run_length(trainer: pl.Trainer) -> None:
    """Refuse a fit that would train nothing (``max_steps: 0``, ``max_epochs: 0``, ``limit_train_batches: 0``).

    Lightning accepts these silently and exits 0, which hides a typo; negative values other than -1 are already
    refused by Lightning itself.
    """
    for name, value in (("max_steps", trainer.max_steps), ("max_epochs", trainer.max_epochs),
                        ("limit_train_batches", trainer.limit_train_batches)):
        if value is not None and not isinstance(value, bool) and value == 0:
            raise ConfigError(f"trainer.{name}={value}: the fit would train nothing; give a positive value")


def check_trainer_settings(trainer: pl.Trainer) -> None:
    """Refuse Trainer settings that Lightning accepts but cannot run: ``log_every_n_steps`` below 1 (a modulo by
    zero, or never), ``accumulate_grad_batches`` below 1 (a loop that never steps) and a negative or non-finite
    ``gradient_clip_val``."""
    positive_int("trainer.log_every_n_steps", trainer.log_every_n_steps)
    positive_int("trainer.accumulate_grad_batches", trainer.accumulate_grad_batches)
    clip = trainer.gradient_clip_val
    if clip is not None and not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip >= 0):
        raise ConfigError(f"trainer.gradient_clip_val must be a finite number >= 0 or null, got {clip!r}")


def check_config_files(args: Any) -> None:
    """Raise a ``ConfigError`` naming the file when a ``--config``/``-c`` argument is not UTF-8 YAML with distinct
    keys in every mapping (``testbed.io.load_yaml``).

    Args:
        args: the command-line arguments (``None``: ``sys.argv[1:]``; a dict or Namespace is not checked).
    """
    if args is None:
        args = sys.argv[1:]
    if not isinstance(args, (list, tuple)):
        return
    paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    paths += [a.split("=", 1)[1] for a in args if isinstance(a, str) and a.startswith(("--config=", "-c="))]
    for path in paths:
        if isinstance(path, str) and "\0" not in path and Path(path).is_file():
            load_yaml(path, "config")


__all__ = [
    "NonFiniteError",
    "NonFiniteGuard",
    "first_non_finite",
    "tensors_in",
    "lightning_config_errors",
    "check_run_length",
    "check_trainer_settings",
    "check_config_files",
]
