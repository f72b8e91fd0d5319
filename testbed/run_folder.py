"""The run folder of one ``fit``: checked before anything is written, locked for the run's lifetime, and cleaned up
after a refusal without touching anything the run did not create.

* ``check_output_folder``: a folder the run will write (its log folder) must be usable: no NUL byte or over-long
  name, not an existing file, no file on the way to it, and writable.
* ``owning_run_folder``: around ``trainer.fit``, on the main process: creates the log folder (noting which folders
  it created itself, ``testbed.locks.make_folders``), holds its lock (``testbed.locks.folder_lock``: a second
  ``fit`` on the same folder is refused, naming the holder), and if the run is refused before it trained a batch
  (bad input found while Lightning sets up), deletes what the run wrote: the log folder if this run created it (only
  this run could write into it, since it held the lock), else the entries that appeared in it; then the folders on
  the way that this run created, each only if empty. Nothing else is ever deleted.
* ``start_loggers``: the loggers' writers are started inside that block, so a logger setting that its library
  refuses is one line and cleaned up like any refusal.
* ``DeferredConfigSave``: LightningCLI's config file is written when training starts, not at set-up, so a refused
  run never overwrites the saved config of an earlier run in a fixed-version folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from testbed.errors import ConfigError, TestbedError, environment_problem, one_line
from testbed.io import check_output_path
from testbed.locks import LOCK_FILE, FolderBusy, folder_lock, make_folders, remove_created

__all__ = ["is_refusal", "check_output_folder", "owning_run_folder", "start_loggers", "DeferredConfigSave"]


def is_refusal(exc: BaseException) -> bool:
    """Whether the CLI reports ``exc`` as one line (``testbed.__main__``): bad input, or the environment refusing
    what the input asks for."""
    return isinstance(exc, TestbedError) or environment_problem(exc) is not None


def check_output_folder(folder: str | os.PathLike, what: str = "run folder") -> Path:
    """``folder`` as a ``Path`` if the run can write there, else a ``ConfigError`` naming ``what``."""
    path = check_output_path(folder, what, folder=True)
    existing = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: {existing} is not writable")
    return path


class _Trained(pl.Callback):
    """Notes whether the run trained a batch (a run stopped after that keeps its logs: they show where)."""

    trained = False

    def on_train_batch_end(self, *args: Any) -> None:
        self.trained = True


def _listing(root: Path) -> set[Path]:
    """Entries of ``root`` and of its ``checkpoints/`` folder."""
    entries = set(root.iterdir()) if root.is_dir() else set()
    if (root / "checkpoints").is_dir():
        entries |= set((root / "checkpoints").iterdir())
    return entries


def _remove(paths: set[Path]) -> None:
    for path in sorted(paths, key=lambda p: len(p.parts), reverse=True):
        if path.name == LOCK_FILE:
            continue  # released (and unlinked) by the lock itself
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def owning_run_folder(trainer: pl.Trainer) -> Iterator[None]:
    """Lock the fit's log folder for the block; after a refusal before the first trained batch, delete what the run
    wrote (see the module docstring), then re-raise. Other processes of a multi-process run do nothing here."""
    if rank_zero_only.rank != 0 or trainer.logger is None or not trainer.log_dir:
        yield
        return
    log_dir = check_output_folder(trainer.log_dir).absolute()
    created = make_folders(log_dir)
    before = _listing(log_dir)
    progress = _Trained()
    trainer.callbacks.insert(0, progress)  # first: it must see a batch end before any callback can fail there
    try:
        with folder_lock(log_dir, "fit"):
            try:
                yield
            except Exception as exc:
                if not is_refusal(exc):
                    raise
                if not progress.trained:
                    _remove(_listing(log_dir) - before)
                    if created and created[-1] == log_dir:  # this run made it and held it: all of it is the run's
                        shutil.rmtree(log_dir, ignore_errors=True)
                    remove_created(created)
                raise
    except FolderBusy:
        remove_created(created)
        raise
    finally:
        trainer.callbacks.remove(progress)


def start_loggers(trainer: pl.Trainer) -> None:
    """Start every logger's writer now (on the main process), so a logger setting its library refuses (TensorBoard's
    ``purge_step: 2.5``) is one ``ConfigError`` naming the logger, before set-up."""
    if rank_zero_only.rank != 0:
        return
    for logger in trainer.loggers:
        try:
            logger.experiment  # noqa: B018 - creating the writer is the check
        except TestbedError:
            raise
        except Exception as exc:
            raise ConfigError(f"trainer.logger: {type(logger).__name__} cannot start: {one_line(exc, 2)}") from None


class DeferredConfigSave(SaveConfigCallback):
    """``SaveConfigCallback`` that writes the config of a ``fit`` when training starts, once set-up has passed."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().setup(trainer, pl_module, "fit")
