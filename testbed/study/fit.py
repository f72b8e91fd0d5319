"""One planned run as an in-process ``fit`` through ``TestbedCLI``, and the parse-only check of every run's config.

Runs share one process (one import of torch and Lightning for the whole study). A finished run leaves
``checkpoints/last.ckpt`` holding the weights of its last step (the next phase starts from it) and returns the record
that goes into its ``DONE.json``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml

from testbed.cli import TestbedCLI
from testbed.errors import ConfigError, TestbedError, one_line
from testbed.strategies import ALL_FAMILIES
from testbed.study.plan import Plan, Run
from testbed.study.progress import StudyProgress
from testbed.study.tensorboard import write_session

__all__ = ["quiet_lightning", "check_configs", "StudyRunCLI", "fit_run"]


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's per-run info lines (GPU available, ...) and its warning that in-process ``args`` differ
    from ``sys.argv`` (they do by design: argv holds the ``study`` command); other warnings still show."""
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.fabric", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class _ParseOnly(TestbedCLI):
    def instantiate_classes(self) -> None:  # validation only: build nothing
        pass


def check_configs(plan: Plan) -> None:
    """Parse each distinct phase/arm config with the ``fit`` parser, instantiating nothing.

    Raises:
        ConfigError: the first broken config, naming its phase (and arm), before any run starts.
    """
    from jsonargparse import ArgumentError

    seen: set[tuple[str, str | None]] = set()
    parser = None
    with tempfile.TemporaryDirectory() as tmp, quiet_lightning():
        for run in plan.runs:
            if (run.phase, run.arm) in seen:
                continue
            seen.add((run.phase, run.arm))
            path = Path(tmp) / f"check{len(seen)}.yaml"
            path.write_text(yaml.safe_dump(run.config, sort_keys=False))
            try:
                if parser is None:  # building the parser is the slow part: build it once, parse every config
                    parser = _ParseOnly(args=["--config", str(path)], run=False).parser
                else:
                    parser.parse_args(["--config", str(path)])
            except (ArgumentError, TestbedError, ValueError, TypeError, ImportError) as exc:
                who = f"phase {run.phase!r}" + (f" arm {run.arm!r}" if run.arm else "")
                raise ConfigError(f"{who}: invalid fit config: {one_line(exc, 4)}") from None


class StudyRunCLI(TestbedCLI):
    """``TestbedCLI`` for one study run: the study's progress line replaces tqdm, and the run's HParams session
    is written into its event file before training.

    Args:
        hparams: the run's hyper-parameters for TensorBoard's HParams view.
        extra_callbacks: callbacks added after the config's (e.g. the progress line).
        args: the ``fit`` arguments.
    """

    def __init__(self, hparams: dict[str, Any], extra_callbacks: list[Any], args: list[str]) -> None:
        self.run_hparams = hparams
        self.extra_callbacks = list(extra_callbacks)
        super().__init__(args=args)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        kwargs["enable_progress_bar"] = False
        kwargs["callbacks"] = [*self.trainer_callbacks(), *self.extra_callbacks]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        super().before_fit()
        self.trainer.callbacks.insert(0, _Session(self.run_hparams))


class _Session(pl.Callback):
    """Writes the run's HParams session when training starts: after set-up, so a run refused there leaves no event
    file behind (``testbed.run_folder``)."""

    supported_strategies = ALL_FAMILIES

    def __init__(self, hparams: dict[str, Any]) -> None:
        self.hparams = hparams

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        write_session(trainer.logger.experiment, self.hparams)


def _saved_step(path: Path) -> int | None:
    """The ``global_step`` recorded in a Lightning checkpoint (read through mmap, tensors untouched)."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a readable zip checkpoint: the caller saves a fresh one
        return None
    return checkpoint.get("global_step") if isinstance(checkpoint, dict) else None


def _final_checkpoint(trainer: Any, target: Path) -> Path:
    """Make ``target`` the checkpoint of the last step: a hard link to Lightning's own checkpoint when that one
    was written at the final step (no second copy on disk), otherwise a fresh ``trainer.save_checkpoint``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    callback = trainer.checkpoint_callback
    own = Path(callback.last_model_path or callback.best_model_path) if callback is not None else None
    usable = own is not None and own.is_file() and _saved_step(own) == trainer.global_step
    if usable and own.resolve() == target.resolve():
        return target
    tmp = target.with_name(f".{target.name}.partial")
    tmp.unlink(missing_ok=True)
    if usable:
        try:
            os.link(own, tmp)
        except OSError:
            shutil.copyfile(own, tmp)
    else:
        trainer.save_checkpoint(str(tmp))
    os.replace(tmp, target)
    return target


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


def _final_metrics(trainer: Any) -> dict[str, float]:
    """Lightning's callback metrics plus the last value of every scalar in the run's event files (callbacks such as
    the reversion monitor write straight to the logger, so callback_metrics alone would miss them)."""
    from testbed.report import read_scalars

    metrics = _scalar_metrics(dict(trainer.callback_metrics))
    logger = trainer.logger
    if logger is not None and getattr(logger, "log_dir", None):
        logger.experiment.flush()
        for tag, (_, values) in read_scalars(Path(logger.log_dir)).items():
            if len(values):
                metrics[tag] = float(values[-1])
    return metrics


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fit_run(run: Run, quiet: bool) -> dict[str, Any]:
    """Fit ``run`` in-process from its written ``run_config.yaml``.

    Args:
        run: the planned run (its config file must already be written).
        quiet: no progress line.

    Returns:
        What goes into the run's ``DONE.json``.
    """
    from jsonargparse import ArgumentError
    from pytorch_lightning.trainer.states import TrainerStatus

    extra = [] if quiet else [StudyProgress(f"[{run.index}/{run.total}] {run.label}")]
    start = time.monotonic()
    try:
        with quiet_lightning():
            cli = StudyRunCLI(run.hparams, extra, ["fit", "--config", str(run.config_file)])
    except (ArgumentError, TestbedError) as exc:
        raise TestbedError(
            f"study stopped at {run.label}: {one_line(exc, 4)} (finished runs are kept; re-run the study to resume)"
        ) from None
    trainer = cli.trainer
    if trainer.state.status != TrainerStatus.FINISHED or trainer.interrupted:
        raise TestbedError(f"study stopped at {run.label}: training did not finish ({trainer.state.status.value})")
    checkpoint = _final_checkpoint(trainer, run.checkpoint)
    result = {
        "fingerprint": run.fingerprint,
        "phase": run.phase,
        "arm": run.arm,
        "seed": run.seed,
        "config": str(run.config_file),
        "checkpoint": str(checkpoint),
        "global_step": int(trainer.global_step),
        "metrics": _final_metrics(trainer),
        "seconds": round(time.monotonic() - start, 3),
    }
    del cli, trainer
    _release_memory()  # runs share one process: free this run's model before the next one is built
    return result
