"""Run toy fits in-process through the real CLI path (``python -m testbed fit``) and read back their fits."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np

from testbed.__main__ import quiet_third_party, run_verb
from toy_models.geometry import MonitoredToy


def quiet() -> None:
    """Silence Lightning's per-run chatter so scripts print only their tables."""
    quiet_third_party()
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def fit(
    configs: Sequence[str | os.PathLike], overrides: Sequence[str] = (), save_dir: str = "runs"
) -> MonitoredToy:
    """``python -m testbed fit --config A --config B ... OVERRIDES...`` in-process; returns the trained toy module.

    Args:
        configs: fit configs, composed in order (a base config, then overlays).
        overrides: extra CLI arguments, e.g. ``["--model.init_args.sharpness", "5"]``.
        save_dir: TensorBoard save directory of the run.
    """
    args = ["fit", *(a for c in configs for a in ("--config", str(c))), "--trainer.logger.init_args.save_dir",
            save_dir, *overrides]  # fmt: skip
    cli = run_verb(args)
    return cli.model


def quartic_coefficient(model: MonitoredToy) -> float:
    """Measured coefficient of n⁴ over the fit window: exp(mean(log A_n − 4 log n)) (nan if A stayed zero)."""
    start, end = model.fit_window
    steps = np.array([s for s, a in model.monitor.losses.items() if start <= s <= end and a > 0], dtype=float)
    if steps.size == 0:
        return math.nan
    losses = np.array([model.monitor.losses[int(s)] for s in steps])
    return float(np.exp(np.mean(np.log(losses) - 4 * np.log(steps))))
