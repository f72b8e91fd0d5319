"""What every direction-based callback shares: which direction, the probe set, and the reference means.

A callback names its direction with a ``DirectionSource`` (a direction file, the layers to use, or the seeded
random control of the same width). At ``setup`` it loads and checks the file against the model and probe set
(``testbed.directions.load_direction``); at the start of training it reads the reference mean probe
representation m_l^ref (the aligned model's). ``along`` then gives <v_l, m_l(θ) − m_l^ref> per layer,
differentiable when asked, which is what the monitor measures and the blockers hold.

Strategies: each callback class states where it is correct in ``supported_strategies`` (families of
``testbed.strategies``); the base default is the full-parameter families (single device, DDP).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import Tensor

from testbed.directions import DirectionSet, load_direction, random_unit_vectors
from testbed.errors import ConfigError, as_settings, seed_value
from testbed.probes import ProbeSet
from testbed.protocol import TestbedModule
from testbed.strategies import FULL_PARAMETERS

__all__ = ["DirectionSource", "DirectionCallback", "require_protocol"]


@dataclass
class DirectionSource:
    """Which direction a callback uses.

    Args:
        path: a direction file (``python -m testbed vrev``, or a study's ``{directions.<name>}``).
        layers: the layers to use (default: every layer in the file).
        random: use a seeded random unit vector of the same width per layer instead (the control).
        random_seed: seed of the random vectors (``testbed.directions.random_unit_vectors``).
        allow_other_probe: accept a direction computed on a different probe set.
    """

    path: str
    layers: list[str] | None = None
    random: bool = False
    random_seed: int = 0
    allow_other_probe: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"direction path must be a non-empty string, got {self.path!r}")
        if self.layers is not None and not self.layers:
            raise ConfigError("direction layers must name at least one layer (or be null for all)")
        seed_value("direction random_seed", self.random_seed)


def require_protocol(module: Any) -> TestbedModule:
    """``module`` if it implements the probe protocol, else a ``ConfigError``."""
    if not isinstance(module, TestbedModule):
        kind = type(module).__name__
        raise ConfigError(f"the reversion layer needs a TestbedModule (the probe protocol), got {kind}")
    return module


class DirectionCallback(pl.Callback):
    """Loads and checks the direction, holds the probe set, measures the reference means at the start of training.

    Args:
        direction: the direction to use (a ``DirectionSource``; in Python code its path alone is accepted too).
    """

    supported_strategies: ClassVar[frozenset[str]] = FULL_PARAMETERS

    def __init__(self, direction: DirectionSource) -> None:
        super().__init__()
        if isinstance(direction, (str, Path)):  # programmatic shorthand: the file alone
            direction = DirectionSource(str(direction))
        self.source: DirectionSource = as_settings(DirectionSource, direction, "direction")
        if self.source is None:
            raise ConfigError("a direction is required: direction: {path: <direction file>}")
        self.layers: list[str] = list(self.source.layers or [])
        self.directions: DirectionSet | None = None
        self.vectors: dict[str, Tensor] = {}
        self.reference_mean: dict[str, Tensor] = {}
        self.probe: ProbeSet | None = None
        self._restored: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        s = self.source
        return self._generate_state_key(direction=s.path, layers=s.layers, random=s.random)

    @property
    def pooling(self) -> str:
        return self.directions.pooling

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        module = require_protocol(pl_module)
        self.probe = ProbeSet.from_datamodule(getattr(trainer, "datamodule", None))
        s = self.source
        self.directions = load_direction(
            s.path, module=module, probe=self.probe, layers=s.layers, allow_other_probe=s.allow_other_probe
        )
        self.layers = self.directions.layers
        if s.random:
            self.vectors = random_unit_vectors({k: self.directions.width(k) for k in self.layers}, s.random_seed)
        else:
            self.vectors = {k: v.float() / v.float().norm() for k, v in self.directions.vectors.items()}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        device = pl_module.device
        self.probe = self.probe.to(device)
        if self._restored is not None:
            self.restore(self._restored)
            self._restored = None
        else:
            self.reference_mean = self.probe.mean(pl_module, self.layers, self.pooling)
        self.vectors = {k: v.to(device) for k, v in self.vectors.items()}
        self.reference_mean = {k: v.to(device) for k, v in self.reference_mean.items()}

    def along(self, module: TestbedModule, grad: bool, probe: ProbeSet | None = None) -> dict[str, Tensor]:
        """<v_l, m_l(θ) − m_l^ref> per layer on the probe set (or on ``probe``); differentiable when ``grad``."""
        means = (probe or self.probe).mean(module, self.layers, self.pooling, grad=grad)
        return {
            k: torch.dot(means[k] - self.reference_mean[k].to(means[k].dtype), self.vectors[k].to(means[k].dtype))
            for k in self.layers
        }

    # ---- resumable state (Lightning restores it before on_train_start) ------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "vectors": {k: v.detach().cpu() for k, v in self.vectors.items()},
            "reference_mean": {k: v.detach().cpu() for k, v in self.reference_mean.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)

    def restore(self, state: dict[str, Any]) -> None:
        """Put back what ``state_dict`` saved (called at the start of a resumed run)."""
        self.vectors = dict(state["vectors"])
        self.reference_mean = dict(state["reference_mean"])
