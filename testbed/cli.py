"""``LightningCLI`` for the testbed: any project LightningModule/DataModule is picked by ``class_path``."""

from __future__ import annotations

from typing import Any

from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger

from testbed.protocol import TestbedDataModule, TestbedModule

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


class TestbedCLI(LightningCLI):
    """LightningCLI in subclass mode over the testbed's protocol base classes."""

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


__all__ = ["TestbedCLI", "TensorBoardLogger", "DEFAULT_RUNS_DIR"]
