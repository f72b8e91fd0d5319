"""A small aligned gravity model with a v_rev file, trainers, and an independent first-order motion recorder, shared
by the intervention tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from testbed import protocol
from testbed.directions import extract_direction
from testbed.optim import OptimizerSettings
from testbed.probes import ProbeSet
from testbed.testing import quiet_trainer
from toy_models.gravity import GravityData, GravityMLP

__all__ = ["LAYER", "trainer", "data", "make_history", "module_history", "FirstOrderRecorder"]

LAYER = "blocks.1.hidden"


def trainer(steps: int, callbacks: list[pl.Callback], logger: Any = False, **kwargs: Any) -> pl.Trainer:
    return quiet_trainer(steps, callbacks, logger=logger, deterministic=True, **kwargs)


def data(**kwargs: Any) -> GravityData:
    return GravityData(phase="finetune", n_train=96, batch_size=32, probe_size=32, **kwargs)


def make_history(folder: Path) -> tuple[GravityMLP, Path]:
    """A small 'aligned' model and a v_rev file; the stand-in witness is where plain fine-tuning takes the model
    (so plain fine-tuning drifts along v_rev by construction, as in the gravity toy)."""
    torch.manual_seed(0)
    aligned = GravityMLP(hidden=16, optimizer=OptimizerSettings(lr=1e-2))
    witness = copy.deepcopy(aligned)
    pl.seed_everything(1)
    trainer(20, []).fit(witness, data())
    ds = extract_direction(witness, aligned, ProbeSet(data().probe_batch()), ["blocks.0.hidden", LAYER])
    return aligned, ds.save(folder / "vrev.pt")


def module_history(tmp_path_factory: pytest.TempPathFactory) -> tuple[GravityMLP, Path]:
    """``make_history`` in a fresh folder: a test module's fixture, ``pytest.fixture(scope="module")(...)``."""
    return make_history(tmp_path_factory.mktemp("dirs"))


class FirstOrderRecorder(pl.Callback):
    """Independently of the blockers: J at the pre-step weights, then J·Δθ relative to |J||Δθ| per step and layer
    (per probe input too when ``per_example``: one row per input)."""

    def __init__(self, path: Path, layers: list[str], probe_rows: int | None = None, per_example: bool = False
                 ) -> None:
        from testbed.directions import load_direction

        self.ds = load_direction(path)
        self.layers = layers
        self.probe_rows = probe_rows  # measure on the first rows of the probe set only
        self.per_example = per_example
        self.ratios: list[float] = []

    def _flat(self, module: protocol.TestbedModule) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for _, p in module.trainable_parameters()])

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        probe = ProbeSet(trainer.datamodule.probe_batch())
        probe = probe.head(self.probe_rows) if self.probe_rows else probe
        params = [p for _, p in module.trainable_parameters()]
        reps = probe.read(module, self.layers, self.ds.pooling, grad=True)
        targets = [reps[k] @ self.ds.vectors[k] if self.per_example else (reps[k] @ self.ds.vectors[k]).mean()
                   for k in self.layers]  # fmt: skip
        scalars = [t for target in targets for t in target.reshape(-1)]
        self.jacobians = []
        for scalar in scalars:
            grads = torch.autograd.grad(scalar, params, retain_graph=True, allow_unused=True)
            self.jacobians.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                             for g, p in zip(grads, params, strict=True)]))  # fmt: skip
        self.before = self._flat(module)

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        delta = (self._flat(module) - self.before).double()
        for jac in self.jacobians:
            jac = jac.double()
            self.ratios.append(float(jac @ delta / (jac.norm() * delta.norm())))
