"""``LightningCLI`` for the testbed: any project LightningModule/DataModule is picked by ``class_path``.

Beyond LightningCLI: config files are checked first (UTF-8, YAML, no key given twice: ``testbed.io``), seeds must lie
in 0 … 2³² − 1, a resume keeps the config's values (``testbed.resume``), the run folder is locked and cleaned up after
a refusal (``testbed.run_folder``), and the reliability callbacks are on by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import CheckpointIO
from pytorch_lightning.utilities import rank_zero_info

from testbed.checkpoint_io import LIGHTNING_CKPT_KEYWORDS, ResumableRng, SafeCheckpointIO, check_ckpt_path
from testbed.errors import (
    CheckpointError,
    ConfigError,
    TestbedError,
    check_nulls,
    one_line,
    seed_value,
    testbed_cause,
)
from testbed.guards import (
    NonFiniteGuard,
    check_config_files,
    check_run_length,
    check_trainer_settings,
    lightning_config_errors,
)
from testbed.io import install_yaml_loader
from testbed.protocol import TestbedDataModule, TestbedModule
from testbed.resume import (
    ConfigOptimizerSettings,
    announce,
    check_resume_weights,
    checkpoint_hparams,
    resume_changes,
)
from testbed.run_folder import DeferredConfigSave, owning_run_folder, start_loggers
from testbed.strategies import check_strategy

DEFAULT_RUNS_DIR = "runs"
SHAPE_ERRORS = ("shapes cannot be multiplied", "size mismatch", "must match the size of tensor")


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

    Only public LightningCLI hooks are overridden (``init_parser``, ``parse_arguments``, ``instantiate_classes``,
    ``before_instantiate_classes``, ``instantiate_trainer``, ``fit``, ``before_fit``); the config is read through
    ``config``/``config_init`` and ``subcommand``.
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        install_yaml_loader()
        self._explicit_config: Any = None
        self._resume_changes: dict[str, tuple] = {}
        kwargs.setdefault("trainer_defaults", trainer_defaults())
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", DeferredConfigSave)
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
        guard (``testbed.guards``), the RNG state in checkpoints for exact resume (``testbed.checkpoint_io``) and the
        config's optimizer settings kept on resume (``testbed.resume``)."""
        callbacks = with_default(self._trainer_config().get("callbacks"), NonFiniteGuard)
        return with_default(with_default(callbacks, ResumableRng), ConfigOptimizerSettings)

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
        # The run folder is locked for the fit, and a run refused during Lightning's set-up leaves nothing behind.
        with owning_run_folder(self.trainer), lightning_config_errors():
            start_loggers(self.trainer)
            try:
                self.trainer.fit(**kwargs)
            except RuntimeError as exc:
                if "Error(s) in loading state_dict" in str(exc):  # --ckpt_path into a model built in configure_model
                    first = str(exc).strip().splitlines()
                    raise CheckpointError(f"--ckpt_path {kwargs.get('ckpt_path')} does not fit the model: "
                                          f"{' '.join(line.strip() for line in first[:3])}") from None
                if self.trainer.global_step == 0 and any(mark in str(exc) for mark in SHAPE_ERRORS):
                    # before the first update a shape error is the config's: a model built for other data
                    raise ConfigError(f"the model does not fit the data's inputs ({one_line(exc, 1)}); check the "
                                      "model's input sizes against the data's") from None
                raise

    def before_fit(self) -> None:
        # Refuse a fit that trains nothing, an intervention not correct under the chosen strategy, and a resume
        # checkpoint whose weights do not fit the model.
        check_run_length(self.trainer)
        check_trainer_settings(self.trainer)
        check_strategy(self.trainer)
        ckpt_path = self._ckpt_path()
        if ckpt_path is not None:
            check_resume_weights(self.model, ckpt_path, self._resume_changes)
        # A model that can estimate its memory (the causal LM) says so before training, at the chosen precision.
        describe = getattr(self.model, "describe_memory", None)
        if callable(describe):
            rank_zero_info(describe(str(self.trainer.precision), self.datamodule, self.trainer.callbacks))

    def _ckpt_path(self) -> str | None:
        """The ``--ckpt_path`` file of the subcommand (``None`` for none or one of Lightning's keywords)."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        return None if path is None or str(path) in LIGHTNING_CKPT_KEYWORDS else str(path)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # A config file that is not UTF-8 YAML with distinct keys: name the file (jsonargparse's message does not).
        check_config_files(args)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        section = self.config[subcommand] if subcommand else self.config
        seed = section.get("seed_everything")
        if seed is not None and not isinstance(seed, bool):
            seed_value("seed_everything", seed)
        if not subcommand:
            return
        # Refuse a missing, unsafe or non-Lightning --ckpt_path with one clear message before anything is written,
        # then apply the resume rules (testbed.resume) instead of Lightning's overlay of the checkpoint's values.
        check_ckpt_path(section.get("ckpt_path"))
        ckpt_path = self._ckpt_path()
        if ckpt_path is not None and Path(ckpt_path).is_file():
            dumped = yaml.safe_load(parser.dump(self.config, skip_link_targets=False, skip_none=False))
            model = (dumped.get(subcommand) or {}).get("model") or {}
            self._resume_changes = resume_changes(model, checkpoint_hparams(ckpt_path), ckpt_path)
            self._explicit_config = self.config.clone()
            announce(self._resume_changes, ckpt_path)

    def instantiate_classes(self) -> None:
        # A class that fails on a setting it does not check itself, while being built from the config, is still
        # refusing the input: one line (allocation failures are left to testbed.__main__, which says so).
        try:
            super().instantiate_classes()
        except TestbedError:
            raise
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError, RuntimeError) as exc:
            cause = testbed_cause(exc)
            if cause is not None:
                raise cause from None
            if isinstance(exc, RuntimeError) and "allocate" in str(exc):
                raise
            raise ConfigError(f"the config's settings cannot build the run: {one_line(exc, 4)}") from exc

    def before_instantiate_classes(self) -> None:
        # LightningCLI has just overlaid the checkpoint's hyper-parameters on the config: keep the config's values.
        if self._explicit_config is not None:
            self.config = self._explicit_config
        subcommand = self.config.get("subcommand")
        section = self.config[subcommand] if subcommand else self.config
        check_nulls(section.as_dict() if hasattr(section, "as_dict") else dict(section))


__all__ = ["TestbedCLI", "TensorBoardLogger", "DEFAULT_RUNS_DIR", "SHAPE_ERRORS", "trainer_defaults", "with_default"]
