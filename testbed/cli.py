"""``LightningCLI`` for the testbed: any project LightningModule/DataModule is picked by ``class_path``."""

from __future__ import annotations

from typing import Any

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import CheckpointIO
from pytorch_lightning.utilities import rank_zero_info

from testbed.checkpoint_io import ResumableRng, SafeCheckpointIO, check_ckpt_path
from testbed.guards import (
    NonFiniteGuard,
    check_config_files,
    check_run_length,
    lightning_config_errors,
    removing_partial_outputs,
)
from testbed.protocol import TestbedDataModule, TestbedModule
from testbed.strategies import check_strategy

DEFAULT_RUNS_DIR = "runs"


def trainer_defaults() -> dict[str, Any]:
    """TensorBoard under ``runs/<name>/<version>`` unless the config names another logger."""
    return {
        "logger": {
            "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
            "init_args": {"save_dir": DEFAULT_RUNS_DIR, "name": "default"},
        },
        "enable_model_summary": False,
    }


def with_default(items: Any, kind: type, satisfied_by: type | None = None) -> list[Any]:
    """``items`` (None, one object or a list) plus a ``kind()``, unless an instance of ``satisfied_by`` (default:
    ``kind``) is already there."""
    items = [] if items is None else list(items) if isinstance(items, (list, tuple)) else [items]
    if not any(isinstance(item, satisfied_by or kind) for item in items):
        items.append(kind())
    return items


class TestbedCLI(LightningCLI):
    """LightningCLI in subclass mode over the testbed's protocol base classes.

    Only public LightningCLI hooks are overridden (``init_parser``, ``parse_arguments``, ``instantiate_trainer``,
    ``fit``, ``before_fit``); the config is read through ``config``/``config_init`` and ``subcommand``.
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", trainer_defaults())
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        super().__init__(
            TestbedModule,
            TestbedDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            **kwargs,
        )

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # Raise instead of printing the whole usage: `testbed.__main__` turns it into one error line.
        kwargs["exit_on_error"] = False
        return super().init_parser(**kwargs)

    def trainer_callbacks(self) -> list[Any]:
        """The config's ``trainer.callbacks`` plus the reliability callbacks it does not already name: the NaN/inf
        guard (``testbed.guards``) and the RNG state in checkpoints for exact resume (``testbed.checkpoint_io``)."""
        return with_default(with_default(self._trainer_config().get("callbacks"), NonFiniteGuard), ResumableRng)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        # Reliability defaults: atomic weights_only checkpoints and trainer_callbacks(), unless given.
        plugins = self._trainer_config().get("plugins")
        kwargs.setdefault("plugins", with_default(plugins, SafeCheckpointIO, CheckpointIO))
        kwargs.setdefault("callbacks", self.trainer_callbacks())
        with lightning_config_errors(also=(ValueError,)):
            return super().instantiate_trainer(**kwargs)

    def _trainer_config(self) -> Any:
        """The instantiated ``trainer`` section (under the subcommand's key when there is one)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        return config.get("trainer") or {}

    def fit(self, **kwargs: Any) -> None:
        # Bad input found during Lightning's setup must not leave a half-written run folder (testbed.guards).
        with removing_partial_outputs(self.trainer), lightning_config_errors():
            self.trainer.fit(**kwargs)

    def before_fit(self) -> None:
        # Refuse a fit that trains nothing, and an intervention not correct under the chosen strategy.
        check_run_length(self.trainer)
        check_strategy(self.trainer)
        # A model that can estimate its memory (the causal LM) says so before training, at the chosen precision.
        describe = getattr(self.model, "describe_memory", None)
        if callable(describe):
            rank_zero_info(describe(str(self.trainer.precision), self.datamodule))

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # A config file that is not valid YAML: name the file (jsonargparse's message does not).
        check_config_files(args)
        super().parse_arguments(parser, args)
        # Refuse a missing, unsafe or non-Lightning --ckpt_path with one clear message before anything is written
        # (Lightning reads the checkpoint's hyper-parameters right after parsing).
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_ckpt_path(self.config[subcommand].get("ckpt_path"))


__all__ = ["TestbedCLI", "TensorBoardLogger", "DEFAULT_RUNS_DIR", "trainer_defaults", "with_default"]
