"""Run toy fits in-process through the real CLI path (``python -m testbed fit``) and read back their fits."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl

from testbed.__main__ import quiet_third_party, run_verb
from testbed.interventions import CurvatureMonitor


def quiet() -> None:
    """Silence Lightning's per-run chatter so scripts print only their tables."""
    quiet_third_party()
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def fit(configs: Sequence[str | os.PathLike], overrides: Sequence[str] = (), save_dir: str = "runs") -> pl.Trainer:
    """``python -m testbed fit --config A --config B ... OVERRIDES...`` in-process; returns the trainer after the fit.

    Args:
        configs: fit configs, composed in order (a base config, then overlays).
        overrides: extra CLI arguments, e.g. ``["--model.init_args.sharpness", "5"]``.
        save_dir: TensorBoard save directory of the run.
    """
    args = ["fit", *(a for c in configs for a in ("--config", str(c))), "--trainer.logger.init_args.save_dir",
            save_dir, *overrides]  # fmt: skip
    return run_verb(args).trainer


def curvature_monitor(trainer: pl.Trainer) -> CurvatureMonitor:
    """The run's ``CurvatureMonitor`` (the toys' configs have one)."""
    return next(c for c in trainer.callbacks if isinstance(c, CurvatureMonitor))


def quartic_coefficient(monitor: CurvatureMonitor) -> float:
    """Measured coefficient of n⁴ over the fit window: exp(mean(log Δu_n − 4 log n)) (nan if Δu stayed zero)."""
    start, end = monitor.fit_window
    rows = [r for r in monitor.history if start <= r["step"] <= end and r["usable"] and r["curvature/delta_u"] > 0]
    if not rows:
        return math.nan
    steps = np.array([r["step"] for r in rows])
    losses = np.array([r["curvature/delta_u"] for r in rows])
    return float(np.exp(np.mean(np.log(losses) - 4 * np.log(steps))))
