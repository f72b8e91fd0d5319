"""Per-step measurements shared by the toys: alignment loss, displacement in/out of S, running fits, theory ratio.

Both toys (the quadratic landscape and the neural toy) hand :class:`QuarticMonitor` the alignment loss A_n and the
displacement δ_n = θ_n − θ0 after every optimizer step n. The monitor returns the metrics to log under the tag scheme:

- ``align/loss``: A_n (for the neural toy the excess A(θ_n) − A(θ0));
- ``geometry/disp_in_S`` = ‖P_S δ_n‖ and ``geometry/disp_out_S`` = ‖(I − P_S) δ_n‖;
- ``fit/loglog_slope``: least-squares slope of log A against log n over the early window [start, min(n, end)];
- ``fit/local_exponent`` = log₂(A_n / A_{n/2}), the instantaneous exponent (shows a 2 → 4 crossover);
- ``theory/align_loss_pred`` and ``theory/ratio`` = measured / predicted, when a prediction is given.

At the end, :meth:`QuarticMonitor.summary` gives the fitted exponent over the window, the measured coefficient
of nᵖ and the geometric-mean ratio measured/predicted over the window (``fit/exponent``,
``fit/coefficient_ratio``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from testbed.errors import ConfigError
from testbed.protocol import TestbedModule
from testbed.step_log import log_at_step
from testbed.tags import ALIGN, FIT, GEOMETRY, THEORY, tag
from theory.fit import fit_loglog_slope

# A loss at or below NUMERICAL_ZERO, or a displacement in S below RELATIVE_ZERO times ‖δ‖, is float64 round-off of
# a zero projection: it is logged but enters no log-log fit and no ratio.
NUMERICAL_ZERO = 1e-280
RELATIVE_ZERO = 1e-12


def check_fit_window(window: tuple[int, int] | list[int]) -> tuple[int, int]:
    """Validate an early fit window ``[start, end]`` in optimizer steps (1 <= start < end)."""
    if len(window) != 2:
        raise ConfigError(f"fit_window must be [start, end] in steps, got {list(window)}")
    start, end = int(window[0]), int(window[1])
    if not 1 <= start < end:
        raise ConfigError(f"fit_window must satisfy 1 <= start < end, got [{start}, {end}]")
    return start, end


def split_displacement(delta: Tensor, basis: Tensor) -> tuple[float, float]:
    """(‖P_S δ‖, ‖(I − P_S) δ‖) for an orthonormal basis ``basis`` [d, k] of S and ``delta`` [d]."""
    inside = basis @ (basis.T @ delta)
    return float(torch.linalg.vector_norm(inside)), float(torch.linalg.vector_norm(delta - inside))


@dataclass
class FitSummary:
    """Fit of the measured alignment loss over the early window."""

    exponent: float  # slope of log A against log n
    coefficient: float  # A ≈ coefficient · n^exponent
    coefficient_ratio: float  # geometric mean of measured / predicted over the window (nan without prediction)
    window: tuple[int, int]
    points: int  # steps in the window with A above numerical zero
    max_loss: float  # largest |A| logged (shows "stays at numerical zero")
    max_in_fraction: float  # largest ‖P_S δ‖ / ‖δ‖ seen

    def metrics(self) -> dict[str, float]:
        out = {tag(ALIGN, "max_loss"): self.max_loss, tag(GEOMETRY, "max_in_S_fraction"): self.max_in_fraction}
        if self.points >= 2:
            out.update({tag(FIT, "exponent"): self.exponent, tag(FIT, "coefficient"): self.coefficient})
        if math.isfinite(self.coefficient_ratio):
            out[tag(FIT, "coefficient_ratio")] = self.coefficient_ratio
        return out

    def line(self, name: str) -> str:
        if self.points < 2:
            return (
                f"{name}: alignment loss stayed at numerical zero (max |A| = {self.max_loss:.3e}, "
                f"max ‖P_S δ‖/‖δ‖ = {self.max_in_fraction:.3e})"
            )
        ratio = f"{self.coefficient_ratio:.4f}" if math.isfinite(self.coefficient_ratio) else "n/a"
        return (
            f"{name}: fitted exponent {self.exponent:.3f} over steps [{self.window[0]}, {self.window[1]}] "
            f"({self.points} points); measured/predicted coefficient {ratio}"
        )


class QuarticMonitor:
    """Accumulates the alignment-loss history of one run and turns each step into the metrics to log.

    Args:
        fit_window: early window [start, end] in optimizer steps for the log-log fit.
        predicted: optional predicted alignment loss per step count, index n (``predicted[0]`` is step 0).
    """

    def __init__(self, fit_window: tuple[int, int], predicted: np.ndarray | None = None) -> None:
        self.window = check_fit_window(fit_window)
        self.predicted = None if predicted is None else np.asarray(predicted, dtype=np.float64)
        self.losses: dict[int, float] = {}  # step -> A (0.0 where numerically zero)
        self.max_loss = 0.0
        self.max_in_fraction = 0.0
        self._sums = np.zeros(5)  # running n, Σx, Σy, Σxx, Σxy over usable window points

    def update(self, step: int, align_loss: float, disp_in: float, disp_out: float) -> dict[str, float]:
        """Record A at optimizer step ``step`` (>= 1) and return the metrics for this step.

        A step whose displacement inside S is below round-off (‖P_S δ‖ <= 1e-12 ‖δ‖) counts as numerical zero: it
        is logged but kept out of the fits and ratios.
        """
        zero = align_loss <= NUMERICAL_ZERO or disp_in <= RELATIVE_ZERO * (disp_in + disp_out)
        self.losses[step] = 0.0 if zero else align_loss
        self.max_loss = max(self.max_loss, abs(align_loss))
        self.max_in_fraction = max(self.max_in_fraction, disp_in / max(disp_in + disp_out, NUMERICAL_ZERO))
        out = {
            tag(ALIGN, "loss"): align_loss,
            tag(GEOMETRY, "disp_in_S"): disp_in,
            tag(GEOMETRY, "disp_out_S"): disp_out,
        }
        start, end = self.window
        if start <= step <= end and not zero:
            x, y = math.log(step), math.log(align_loss)
            self._sums += (1.0, x, y, x * x, x * y)
        slope = self._running_slope()
        if slope is not None:
            out[tag(FIT, "loglog_slope")] = slope
        half = self.losses.get(step // 2, 0.0)
        if step >= max(2, start) and half > 0.0 and not zero:
            out[tag(FIT, "local_exponent")] = math.log(align_loss / half) / math.log(step / (step // 2))
        pred = self._prediction(step)
        if pred is not None:
            out[tag(THEORY, "align_loss_pred")] = pred
            if pred > NUMERICAL_ZERO and not zero:
                out[tag(THEORY, "ratio")] = align_loss / pred
        return out

    def _running_slope(self) -> float | None:
        n, sx, sy, sxx, sxy = self._sums
        denom = n * sxx - sx * sx
        if n < 2 or denom <= 1e-12 * max(1.0, n * sxx):
            return None
        return float((n * sxy - sx * sy) / denom)

    def _prediction(self, step: int) -> float | None:
        if self.predicted is None or step >= len(self.predicted):
            return None
        return float(self.predicted[step])

    def summary(self) -> FitSummary:
        """Fit over the window using every recorded step in it (nan exponent if A stayed at numerical zero)."""
        start, end = self.window
        steps = np.array([s for s in sorted(self.losses) if start <= s <= end], dtype=np.float64)
        losses = np.array([self.losses[int(s)] for s in steps], dtype=np.float64)
        usable = losses > 0.0
        slope, intercept = fit_loglog_slope(steps[usable], losses[usable])
        ratio = float("nan")
        if self.predicted is not None and usable.any():
            idx = steps[usable].astype(int)
            idx = idx[idx < len(self.predicted)]
            pred = self.predicted[idx]
            meas = np.array([self.losses[int(i)] for i in idx])
            ok = pred > NUMERICAL_ZERO
            if ok.any():
                ratio = float(np.exp(np.mean(np.log(meas[ok] / pred[ok]))))
        coefficient = math.exp(intercept) if math.isfinite(intercept) else float("nan")
        last = int(steps[-1]) if len(steps) else start
        return FitSummary(
            slope, coefficient, ratio, (start, last), int(usable.sum()), self.max_loss, self.max_in_fraction
        )


class MonitoredToy(TestbedModule):
    """Base of the toys: after every optimizer step, measure and log through a :class:`QuarticMonitor`.

    Subclasses implement :meth:`measure` (alignment loss and δ = θ − θ0 as a flat vector), :meth:`subspace_basis`
    (orthonormal U of S in the same coordinates) and :meth:`predicted_alignment_loss` (theory's series, or None).

    Args:
        fit_window: early window [start, end] in optimizer steps for the log-log fit.
        init_from: optional weights to start from (see :class:`TestbedModule`).
    """

    def __init__(self, fit_window: tuple[int, int] = (10, 100), init_from: str | None = None) -> None:
        super().__init__(init_from)
        self.fit_window = check_fit_window(fit_window)
        self.monitor: QuarticMonitor | None = None
        self.fit_summary: FitSummary | None = None

    def measure(self) -> tuple[float, Tensor]:
        """(alignment loss, δ [P]) at the current parameters."""
        raise NotImplementedError

    def subspace_basis(self) -> Tensor:
        """Orthonormal basis of the alignment subspace S, [P, k]."""
        raise NotImplementedError

    def predicted_alignment_loss(self, steps: np.ndarray) -> np.ndarray | None:
        """Theory's predicted alignment loss after each step count in ``steps`` (None: no prediction)."""
        raise NotImplementedError

    def _horizon(self) -> int:
        max_steps = self.trainer.max_steps if self._trainer is not None else -1
        return max(int(max_steps), self.fit_window[1])

    def on_fit_start(self) -> None:
        predicted = self.predicted_alignment_loss(np.arange(self._horizon() + 1, dtype=np.float64))
        self.monitor = QuarticMonitor(self.fit_window, predicted)
        self.fit_summary = None

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        if self.monitor is None:
            return
        with torch.no_grad():
            align_loss, delta = self.measure()
            disp_in, disp_out = split_displacement(delta, self.subspace_basis())
        log_at_step(self.trainer, self.monitor.update(int(self.global_step), align_loss, disp_in, disp_out))

    def on_train_end(self) -> None:
        if self.monitor is None:
            return
        self.fit_summary = self.monitor.summary()
        log_at_step(self.trainer, self.fit_summary.metrics())
        if self.trainer.is_global_zero:
            print(self.fit_summary.line(type(self).__name__), flush=True)


__all__ = [
    "NUMERICAL_ZERO",
    "RELATIVE_ZERO",
    "check_fit_window",
    "split_displacement",
    "FitSummary",
    "QuarticMonitor",
    "MonitoredToy",
]
