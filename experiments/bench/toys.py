"""Benchmark of the toys on CPU: optimizer steps per second, and the wall time of the quartic experiment command.

    python -m experiments.bench.toys [--steps 300]

Steps/s are measured through a Lightning ``Trainer.fit`` with per-step logging to TensorBoard and the shared
``CurvatureMonitor`` measuring every step (what the toys' configs do), after one warm-up fit, from the end of the first
step to the end of training; the time to the first step (setup, the neural toy's alignment fit, the subspace and the
AIC diagnostics) is printed beside it. The quartic wall time runs
``python -m testbed fit --config experiments/toy_regimes/quartic.yaml`` as a subprocess, imports included.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from experiments.inprocess import quiet
from testbed.interventions import CurvatureMonitor
from toy_models.neural import NeuralToy, NeuralToyData
from toy_models.quadratic import QuadraticData, QuadraticToy

REPO = Path(__file__).resolve().parents[2]


class _LoopTimer(pl.Callback):
    """Times the training loop from the end of the first step to the end of training (setup excluded)."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.steps = 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == 1:
            self.start = time.perf_counter()
        self.steps = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.end = time.perf_counter()


def steps_per_second(make_model, make_data, steps: int, workdir: str, d: int) -> tuple[float, float]:
    """Fit ``steps`` optimizer steps with per-step TensorBoard logging and a d-dimensional curvature monitor.

    Returns:
        (steps/s of the training loop after the first step, seconds from ``fit`` to the first step: setup,
        alignment fit and AIC estimates).
    """
    model, data, timer = make_model(), make_data(), _LoopTimer()
    trainer = pl.Trainer(
        max_steps=steps,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        logger=TensorBoardLogger(workdir, name="bench"),
        callbacks=[CurvatureMonitor({"d": d}, every_n_steps=1, fit_window=(2, steps), theory_order=2, measure_n="all"),
                   timer],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    return (timer.steps - 1) / (timer.end - timer.start), timer.start - start


def quartic_wall_time(workdir: str) -> float:
    """Seconds for the whole ``python -m testbed fit --config experiments/toy_regimes/quartic.yaml`` command."""
    config = REPO / "experiments" / "toy_regimes" / "quartic.yaml"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "testbed", "fit", "--config", str(config)], cwd=workdir, check=True, capture_output=True
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    quiet()
    with tempfile.TemporaryDirectory() as tmp:
        steps_per_second(QuadraticToy, QuadraticData, 20, tmp, d=4)  # warm-up (lazy imports, TensorBoard writer)
        q, q_setup = steps_per_second(QuadraticToy, QuadraticData, args.steps, tmp, d=4)
        n, n_setup = steps_per_second(NeuralToy, NeuralToyData, args.steps, tmp, d=7)
        wall = quartic_wall_time(tmp)
    print(f"quadratic toy (d=32, k=4): {q:.0f} steps/s with per-step logging and the curvature monitor; "
          f"{q_setup:.2f} s to the first step")  # fmt: skip
    print(
        f"neural toy (MLP 8-16-16-1, 433 params): {n:.0f} steps/s with per-step logging and the curvature monitor; "
        f"{n_setup:.2f} s to the first step (alignment fit, subspace, AIC diagnostics, theory series)"
    )
    print(f"python -m testbed fit --config experiments/toy_regimes/quartic.yaml: {wall:.1f} s wall (limit 30 s)")


if __name__ == "__main__":
    main()
