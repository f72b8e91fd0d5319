"""Run guards: stop on NaN/inf naming the step and metric, refuse runs that would do nothing, and leave nothing
half-written when bad input is found during set-up.

``NonFiniteGuard`` is on by default in ``TestbedCLI`` (list it in ``trainer.callbacks`` to change its settings).
It checks
- the training loss before every backward pass (so a NaN never reaches the weights),
- every logged metric after each training batch and after validation,
- the probe representations of all layers every ``representation_every_n_steps`` steps (when the model and
  data implement the probe protocol).
A non-finite value raises ``NonFiniteError`` (a ``TestbedError``): the CLI prints one line and exits non-zero.
Under DDP the decision is reduced across processes, so every rank stops at the same step.

The CLI also uses ``check_run_length`` (``max_steps: 0`` and the like are refused), ``check_config_files`` (a config
that is not YAML is named), ``lightning_config_errors`` (Lightning's Trainer errors become one line) and
``removing_partial_outputs`` (a run refused before its first step deletes the run folder it had started).
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor

from testbed.errors import ConfigError, TestbedError
from testbed.strategies import ALL_FAMILIES


class NonFiniteError(TestbedError):
    """A loss, logged metric or representation became NaN or infinite."""


def _first_non_finite(values: Mapping[str, Any]) -> tuple[str, float] | None:
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
    """Raise ``NonFiniteError`` when the loss, a logged metric or a probe representation is NaN/inf.

    Correct under every strategy: the decision is reduced across processes.

    Args:
        check_loss: check the training loss before each backward pass.
        check_metrics: check every logged metric (``trainer.callback_metrics``) after each batch and validation.
        representation_every_n_steps: read the probe representations of every layer this often (0: never).
    """

    supported_strategies = ALL_FAMILIES

    def __init__(
        self, check_loss: bool = True, check_metrics: bool = True, representation_every_n_steps: int = 50
    ) -> None:
        super().__init__()
        if representation_every_n_steps < 0:
            raise ConfigError(f"representation_every_n_steps must be >= 0, got {representation_every_n_steps}")
        self.check_loss = check_loss
        self.check_metrics = check_metrics
        self.representation_every_n_steps = representation_every_n_steps

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
            found = _first_non_finite({"loss": loss})
            self._stop_if(trainer, found, f"training loss at step {trainer.global_step}")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.check_metrics:
            found = _first_non_finite(trainer.callback_metrics)
            self._stop_if(trainer, found, f"logged metric at step {getattr(self, '_batch_step', trainer.global_step)}")
        every, step = self.representation_every_n_steps, trainer.global_step
        if every and step % every == 0:
            found = self._representation_problem(trainer, pl_module)
            self._stop_if(trainer, found, f"probe representation after step {step}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.check_metrics and not trainer.sanity_checking:
            found = _first_non_finite(trainer.callback_metrics)
            self._stop_if(trainer, found, f"validation metric after step {trainer.global_step}")

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
        return _first_non_finite({f"representation/{name}": rep for name, rep in reps.items()})


# ---- no half-written outputs ------------------------------------------------------------------------------------
def _output_roots(trainer: pl.Trainer) -> list[Path]:
    """Folders a fit writes into: the log folder (config, hparams, events) and explicit checkpoint folders."""
    roots = [Path(trainer.log_dir)] if trainer.log_dir else []
    for callback in trainer.checkpoint_callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath:
            roots.append(Path(dirpath))
    return roots


def _listing(root: Path) -> set[Path] | None:
    """Entries of ``root`` and of its ``checkpoints/`` folder (not a full walk: ``root`` may be the cwd)."""
    if not root.is_dir():
        return None
    entries = set(root.iterdir())
    if (root / "checkpoints").is_dir():
        entries |= set((root / "checkpoints").iterdir())
    return entries


def _remove_new(root: Path, before: set[Path]) -> None:
    """Delete the files and folders that appeared under the existing folder ``root`` since ``before``."""
    for path in sorted((_listing(root) or set()) - before, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def removing_partial_outputs(trainer: pl.Trainer) -> Iterator[None]:
    """On a ``TestbedError`` before the first optimizer step, delete what the run wrote, then re-raise.

    Bad input found while Lightning sets up (a checkpoint that does not fit, a direction file for another model, a
    malformed data file...) surfaces after the logger has created the run folder and the config was saved; this
    removes those files so a refused run leaves nothing behind. Files that existed before are never touched.
    """
    roots = [root.resolve() for root in _output_roots(trainer)]
    before = {root: _listing(root) for root in roots}
    created_from = {root: _first_missing(root) for root in roots}
    try:
        yield
    except TestbedError:
        if trainer.global_step == 0 and trainer.is_global_zero:
            for root in roots:
                if before[root] is None:
                    if created_from[root] is not None:
                        shutil.rmtree(created_from[root], ignore_errors=True)
                else:
                    _remove_new(root, before[root])
        raise


def _first_missing(root: Path) -> Path | None:
    """The outermost folder on the way to ``root`` that does not exist yet (what a run would create)."""
    missing = None
    for path in [root, *root.parents]:
        if path.exists():
            return missing
        missing = path
    return missing


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


def check_config_files(args: Any) -> None:
    """Raise a ``ConfigError`` naming the file when a ``--config``/``-c`` argument is not valid YAML.

    Args:
        args: the command-line arguments (``None``: ``sys.argv[1:]``; a dict or Namespace is not checked).
    """
    if args is None:
        args = sys.argv[1:]
    if not isinstance(args, (list, tuple)):
        return
    import yaml

    paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    paths += [a.split("=", 1)[1] for a in args if isinstance(a, str) and a.startswith("--config=")]
    for path in paths:
        if not Path(path).is_file():
            continue
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"config {path} is not valid YAML{where}: {problem}") from None


__all__ = [
    "NonFiniteError",
    "NonFiniteGuard",
    "removing_partial_outputs",
    "lightning_config_errors",
    "check_run_length",
    "check_config_files",
]
