"""Power-law fits: the exponent p and coefficient c of y ≈ c·xᵖ by least squares on (log x, log y).

With u = log x and v = log y over the n usable points (x > 0, y > 0, both finite), ordinary least squares gives

    p̂ = S_uv / S_uu,   log ĉ = v̄ − p̂ ū,   s² = Σ (v − log ĉ − p̂ u)² / (n − 2),   se(p̂) = s / √S_uu,

with S_uu = Σ (u − ū)², S_uv = Σ (u − ū)(v − v̄). The 100·level % confidence interval of the exponent is
p̂ ± t_{(1+level)/2, n−2} · se(p̂), t being Student's t quantile with n − 2 degrees of freedom. It is exact when the
residuals are independent, Gaussian and of equal variance. A measured early-time series (an alignment loss after each
step) has smooth, correlated residuals from the next terms of its series instead, so read the interval as the spread
the data allow around one straight line, not as a coverage guarantee.

:class:`RunningLogLogFit` keeps the same sums with Welford's updates, so a monitor can add one point per step and read
the slope at any time without keeping the series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from testbed.errors import ConfigError
from theory.numerics import as_array_lenient, bisect_increasing

__all__ = ["LogLogFit", "RunningLogLogFit", "fit_loglog", "fit_loglog_slope", "t_quantile"]

_NAN = float("nan")


def _usable_logs(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """(log x, log y) of the points with x > 0, y > 0 and both finite."""
    xs, ys = as_array_lenient(x), as_array_lenient(y)
    if xs.shape != ys.shape:
        raise ConfigError(f"x and y must have the same length, got {xs.shape} and {ys.shape}")
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(xs) & np.isfinite(ys) & (xs > 0) & (ys > 0)
    return np.log(xs[keep]), np.log(ys[keep])


def fit_loglog_slope(x: Any, y: Any) -> tuple[float, float]:
    """Least-squares line through (log x, log y), ignoring points with x <= 0, y <= 0 or non-finite values.

    Args:
        x: abscissae (e.g. steps or times), array or tensor.
        y: ordinates (e.g. alignment loss), same length.

    Returns:
        (slope, intercept) with y ≈ exp(intercept) · x^slope; (nan, nan) if fewer than two usable distinct x.
    """
    return _line(*_usable_logs(x, y))


def _line(lx: np.ndarray, ly: np.ndarray) -> tuple[float, float]:
    if lx.size < 2 or np.ptp(lx) == 0.0:
        return _NAN, _NAN
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(intercept)


@lru_cache(maxsize=1024)
def _t_quantile_upper(p: float, df: float) -> float:
    """The p-quantile of Student's t for p > 1/2, bracketed between the normal and the Cauchy quantile.

    P(0 < T <= q) = ½ I_y(1/2, df/2) with y = q²/(df + q²); y stays small for large df, where the series converges.
    """
    import mpmath  # only when an interval is asked for: keeps `import theory.fit` light

    with mpmath.workdps(30):
        half, nu, target = mpmath.mpf(1) / 2, mpmath.mpf(df), 2 * mpmath.mpf(p) - 1
        normal = mpmath.sqrt(2) * mpmath.erfinv(target)  # t_df quantiles, df >= 1, lie between these two
        cauchy = mpmath.tan(mpmath.pi * (mpmath.mpf(p) - half))

        def excess(q: Any) -> Any:
            return mpmath.betainc(half, nu / 2, 0, q**2 / (nu + q**2), regularized=True) - target

        return float(bisect_increasing(excess, normal, cauchy, mpmath.mpf(10) ** -20 * cauchy))


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t distribution with ``df`` degrees of freedom (mpmath, ~1e-15 relative).

    Args:
        p: probability in (0, 1).
        df: degrees of freedom, >= 1 (a fit of n points has n − 2).

    Returns:
        q with P(T <= q) = p (e.g. 12.706 for p = 0.975, df = 1; 1.960 as df → ∞).
    """
    p, df = float(p), float(df)
    if not 0.0 < p < 1.0:
        raise ConfigError(f"t quantile needs 0 < p < 1, got {p!r}")
    if not df >= 1.0 or math.isinf(df):
        raise ConfigError(f"t quantile needs finite degrees of freedom >= 1, got {df!r}")
    if p == 0.5:
        return 0.0
    return _t_quantile_upper(p, df) if p > 0.5 else -_t_quantile_upper(1.0 - p, df)


@dataclass(frozen=True)
class LogLogFit:
    """A power-law fit y ≈ exp(intercept)·x^slope with the confidence interval of the exponent.

    Attributes:
        slope: fitted exponent p̂ (nan with fewer than two usable distinct x).
        intercept: fitted log-coefficient log ĉ.
        stderr: OLS standard error of the slope (nan with fewer than three points; 0 for an exact power law).
        ci_low: lower end of the interval p̂ − t·se (nan when ``stderr`` is).
        ci_high: upper end p̂ + t·se.
        n_points: number of points the fit used (x > 0, y > 0, finite).
        level: confidence level of the interval (e.g. 0.95).
    """

    slope: float
    intercept: float
    stderr: float
    ci_low: float
    ci_high: float
    n_points: int
    level: float

    @property
    def coefficient(self) -> float:
        """ĉ = exp(intercept), the coefficient of x^slope."""
        return math.exp(self.intercept) if math.isfinite(self.intercept) else _NAN

    @property
    def half_width(self) -> float:
        """Half the width of the interval, t·se."""
        return 0.5 * (self.ci_high - self.ci_low)

    def text(self, digits: int = 3) -> str:
        """e.g. ``3.997 ± 0.004 (95% CI [3.993, 4.001], 181 points)``."""
        f = f".{digits}f"
        if not math.isfinite(self.stderr):
            return f"{self.slope:{f}} (no interval: {self.n_points} points)"
        return (
            f"{self.slope:{f}} ± {self.half_width:{f}} ({100 * self.level:g}% CI [{self.ci_low:{f}}, "
            f"{self.ci_high:{f}}], {self.n_points} points)"
        )


def _fit_from_moments(n: int, slope: float, intercept: float, s_uu: float, ss_res: float, level: float) -> LogLogFit:
    """Assemble a :class:`LogLogFit` from the slope, the spread of log x and the residual sum of squares."""
    if n < 3 or not math.isfinite(slope):
        return LogLogFit(slope, intercept, _NAN, _NAN, _NAN, n, level)
    stderr = math.sqrt(max(ss_res, 0.0) / (n - 2) / s_uu)
    half = t_quantile(0.5 * (1.0 + level), n - 2) * stderr
    return LogLogFit(slope, intercept, stderr, slope - half, slope + half, n, level)


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ConfigError(f"confidence level must lie in (0, 1), got {level!r}")
    return level


def fit_loglog(x: Any, y: Any, *, level: float = 0.95) -> LogLogFit:
    """Fit y ≈ c·xᵖ on (log x, log y) and give the OLS confidence interval of p (see the module docstring).

    The interval uses the OLS standard error with Student's t quantile at n − 2 degrees of freedom (n usable points),
    from this one series; its slope and intercept equal :func:`fit_loglog_slope`'s.

    Args:
        x: abscissae (steps or times), array or tensor; points with x <= 0, y <= 0 or non-finite values are skipped.
        y: ordinates, same length.
        level: confidence level of the interval, in (0, 1).

    Returns:
        A :class:`LogLogFit`; with fewer than three usable points the interval is (nan, nan).
    """
    level = _check_level(level)
    lx, ly = _usable_logs(x, y)
    slope, intercept = _line(lx, ly)
    if not math.isfinite(slope):
        return LogLogFit(slope, intercept, _NAN, _NAN, _NAN, int(lx.size), level)
    residuals = ly - (slope * lx + intercept)
    s_uu = float(np.sum((lx - lx.mean()) ** 2))
    return _fit_from_moments(int(lx.size), slope, intercept, s_uu, float(residuals @ residuals), level)


class RunningLogLogFit:
    """Log-log least squares over a stream of points, one at a time, in O(1) memory (Welford's co-moments).

    Points outside the window [start, end] on x, and points with x <= 0, y <= 0 or non-finite values, are ignored,
    so a monitor can add every step and read the early-window exponent at any time. The slope agrees with
    :func:`fit_loglog_slope` on the same points to round-off (~1e-12).

    Args:
        window: optional (start, end) on x, inclusive; None keeps every point.
        level: confidence level for :meth:`fit`.
    """

    def __init__(self, window: tuple[float, float] | None = None, level: float = 0.95) -> None:
        if window is not None:
            start, end = float(window[0]), float(window[1])
            if not start < end:
                raise ConfigError(f"fit window must satisfy start < end, got [{start:g}, {end:g}]")
            window = (start, end)
        self.window = window
        self.level = _check_level(level)
        self.n = 0
        self._mean_u = self._mean_v = self._s_uu = self._s_uv = self._s_vv = 0.0

    def add(self, x: float, y: float) -> bool:
        """Add one point; returns whether it was used."""
        x, y = float(x), float(y)
        if not (math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0):
            return False
        if self.window is not None and not self.window[0] <= x <= self.window[1]:
            return False
        u, v = math.log(x), math.log(y)
        self.n += 1
        du = u - self._mean_u
        self._mean_u += du / self.n
        dv = v - self._mean_v
        self._mean_v += dv / self.n
        # co-moment updates: the old deviation of one variable times the new deviation of the other
        self._s_uu += du * (u - self._mean_u)
        self._s_uv += du * (v - self._mean_v)
        self._s_vv += dv * (v - self._mean_v)
        return True

    @property
    def slope(self) -> float:
        """Current exponent (nan until two distinct x are in)."""
        return self._s_uv / self._s_uu if self.n >= 2 and self._s_uu > 0 else _NAN

    def fit(self) -> LogLogFit:
        """The fit of the points added so far, with the interval of the exponent at ``level``."""
        slope = self.slope
        if not math.isfinite(slope):
            return LogLogFit(_NAN, _NAN, _NAN, _NAN, _NAN, self.n, self.level)
        intercept = self._mean_v - slope * self._mean_u
        ss_res = self._s_vv - slope * self._s_uv
        return _fit_from_moments(self.n, slope, intercept, self._s_uu, ss_res, self.level)

    def state_dict(self) -> dict[str, float]:
        """The accumulated sums (for a callback's checkpointed state)."""
        return {
            "n": float(self.n),
            "mean_u": self._mean_u,
            "mean_v": self._mean_v,
            "s_uu": self._s_uu,
            "s_uv": self._s_uv,
            "s_vv": self._s_vv,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore the sums saved by :meth:`state_dict`."""
        self.n = int(state["n"])
        self._mean_u, self._mean_v = float(state["mean_u"]), float(state["mean_v"])
        self._s_uu, self._s_uv, self._s_vv = float(state["s_uu"]), float(state["s_uv"]), float(state["s_vv"])
