"""Exact isotropic null for the cosine between a uniformly random unit vector and a fixed one in d dimensions.

If ``v`` is uniform on the sphere S^{d-1} and ``e`` is any fixed unit vector, ``x = cos(v, e) = <v, e>`` has density

    f_d(x) = (1 - x^2)^((d-3)/2) / B(1/2, (d-1)/2)   on [-1, 1],

equivalently ``(1 + x) / 2 ~ Beta((d-1)/2, (d-1)/2)``. So the CDF is a regularised incomplete beta function,
``F_d(x) = I_{(1+x)/2}(a, a)`` with ``a = (d-1)/2``, which mpmath evaluates to arbitrary precision. Special cases:
d = 2 is the arcsine law, d = 3 is uniform on [-1, 1] (Archimedes), and for large d, x ≈ N(0, 1/d).

The one-sided upper threshold at level p is the p-quantile: ``P(cos > thr) = 1 - p``. The reversion layer compares a
measured cos(drift, v_rev) against it.
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import lru_cache
from typing import Any

import mpmath
import numpy as np

from testbed.errors import ConfigError
from theory.numerics import bisect_increasing

__all__ = [
    "cosine_null_pdf",
    "cosine_null_cdf",
    "cosine_null_sf",
    "cosine_null_quantile",
    "cosine_null_threshold",
    "sample_null_cosines",
]

_DPS = 40  # working decimal digits for mpmath; the quantile is solved to 1e-12 absolute, far above this precision
_QUANTILE_TOL = 1e-12


def _check_dim(d: Any) -> int:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or int(d) < 2:
        raise ConfigError(f"isotropic cosine null needs an integer dimension d >= 2, got d={d!r}")
    return int(d)


def _check_prob(q: float, name: str = "q", *, open_interval: bool = False) -> float:
    q = float(q)
    ok = (0.0 < q < 1.0) if open_interval else (0.0 <= q <= 1.0)
    if not ok or math.isnan(q):
        bounds = "(0, 1)" if open_interval else "[0, 1]"
        raise ConfigError(f"{name} must lie in {bounds}, got {q!r}")
    return q


def _as_float_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _log_norm(d: int) -> float:
    """log B(1/2, (d-1)/2), the normaliser of the density."""
    a = (d - 1) / 2.0
    return math.lgamma(0.5) + math.lgamma(a) - math.lgamma(0.5 + a)


def cosine_null_pdf(x: Any, d: int) -> np.ndarray | float:
    """Density of cos(v, e) for v uniform on the sphere in d dimensions.

    Args:
        x: cosine value(s) in [-1, 1] (scalar, array or torch tensor); outside the interval the density is 0.
        d: ambient dimension, >= 2.

    Returns:
        The density, same shape as ``x`` (a float for scalar input). At x = ±1 it is +inf for d = 2.
    """
    d = _check_dim(d)
    xs = _as_float_array(x)
    inside = np.abs(xs) <= 1.0
    one_minus = np.where(inside, 1.0 - xs * xs, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_f = 0.5 * (d - 3) * np.log(one_minus) - _log_norm(d)
    out = np.where(inside, np.exp(log_f), 0.0)
    if d == 3:  # exponent 0: (1 - x^2)^0 = 1 also at |x| = 1
        out = np.where(inside, 0.5, 0.0)
    return float(out) if out.ndim == 0 else out


def _lower_tail_mp(z: mpmath.mpf, a: mpmath.mpf) -> mpmath.mpf:
    """I_z(a, a) for 0 < z <= 1/2.

    Uses I_z(a, b) = z^a (1-z)^b / (a B(a, b)) * 2F1(a+b, 1; a+1; z), whose terms never grow for z <= 1/2; mpmath's
    default series 2F1(a, 1-b; a+1; z) stalls for large a (d of several thousand).
    """
    prefactor = z**a * (1 - z) ** a / (a * mpmath.beta(a, a))
    return prefactor * mpmath.hyp2f1(2 * a, 1, a + 1, z, maxterms=10**7)


def _cdf_mp(x: float, d: int) -> mpmath.mpf:
    """F_d(x) = I_{(1+x)/2}(a, a), a = (d-1)/2, evaluated on the smaller tail so that no digits cancel."""
    if x <= -1.0:
        return mpmath.mpf(0)
    if x >= 1.0:
        return mpmath.mpf(1)
    if x == 0.0:
        return mpmath.mpf(1) / 2
    a = mpmath.mpf(d - 1) / 2
    if x < 0:
        return _lower_tail_mp((1 + mpmath.mpf(x)) / 2, a)
    return 1 - _lower_tail_mp((1 - mpmath.mpf(x)) / 2, a)


def cosine_null_cdf(x: Any, d: int) -> np.ndarray | float:
    """Exact CDF P(cos <= x) of the isotropic null, via mpmath's regularised incomplete beta.

    Args:
        x: cosine value(s) (scalar, array or torch tensor); values beyond ±1 give 0 or 1.
        d: ambient dimension, >= 2.

    Returns:
        The CDF, same shape as ``x`` (a float for scalar input).
    """
    d = _check_dim(d)
    xs = _as_float_array(x)
    with mpmath.workdps(_DPS):
        out = np.array([float(_cdf_mp(float(v), d)) for v in xs.ravel()], dtype=np.float64).reshape(xs.shape)
    return float(out) if out.ndim == 0 else out


def cosine_null_sf(x: Any, d: int) -> np.ndarray | float:
    """Survival function P(cos > x) = F_d(-x) (by symmetry; the upper tail is computed without cancellation).

    Args:
        x: cosine value(s) (scalar, array or torch tensor).
        d: ambient dimension, >= 2.

    Returns:
        The upper-tail probability, same shape as ``x`` (a float for scalar input).
    """
    return cosine_null_cdf(-_as_float_array(x), d)


@lru_cache(maxsize=4096)
def _quantile_cached(q: float, d: int) -> float:
    if q == 0.0:
        return -1.0
    if q == 1.0:
        return 1.0
    if q < 0.5:  # symmetry keeps the bracket search in the upper half
        return -_quantile_cached(1.0 - q, d)
    with mpmath.workdps(_DPS):
        target = mpmath.mpf(q)
        # F_d(0) = 1/2 <= q brackets the root in [0, 1]; stopping at 1 / 2^45 < 3e-14 keeps 1e-12 absolute.
        root = bisect_increasing(
            lambda x: _cdf_mp(float(x), d) - target, mpmath.mpf(0), mpmath.mpf(1), _QUANTILE_TOL / 32
        )
        return float(root)


def cosine_null_quantile(q: float, d: int) -> float:
    """The q-quantile of the isotropic cosine null: the x with F_d(x) = q, to 1e-12 absolute.

    Args:
        q: probability in [0, 1].
        d: ambient dimension, >= 2.

    Returns:
        x in [-1, 1].
    """
    return _quantile_cached(_check_prob(q, "q"), _check_dim(d))


def cosine_null_threshold(d: int, p: float = 0.99) -> float:
    """One-sided upper threshold of the isotropic null: the value thr with P(cos > thr) = 1 - p.

    Args:
        d: ambient dimension (e.g. the width of the layer where the cosine is measured), >= 2.
        p: confidence level in (0, 1); 0.99 and 0.999 are the usual p99 and p99.9 thresholds.

    Returns:
        The threshold (cached per (d, p)). For d = 3 and p = 0.99 it is 0.98 exactly.
    """
    return _quantile_cached(_check_prob(p, "p", open_interval=True), _check_dim(d))


def sample_null_cosines(d: int, n: int, seed: int = 0, *, chunk: int = 8192) -> np.ndarray:
    """Monte Carlo draws of cos(v, e1) with v uniform on the sphere (normalised Gaussian vectors).

    Args:
        d: ambient dimension, >= 2.
        n: number of samples, >= 1.
        seed: seed of the numpy generator (same seed, same samples).
        chunk: rows generated at a time, to bound memory for large d.

    Returns:
        Array of shape [n] of cosines.
    """
    d = _check_dim(d)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"number of null samples must be a positive integer, got n={n!r}")
    rng = np.random.default_rng(seed)
    out = np.empty(int(n), dtype=np.float64)
    for start in range(0, int(n), chunk):
        stop = min(start + chunk, int(n))
        z = rng.standard_normal((stop - start, d))  # [rows, d]
        out[start:stop] = z[:, 0] / np.linalg.norm(z, axis=1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Print p-level thresholds for the given widths: ``python -m theory.null 16 768 4096 --p 0.99 0.999``."""
    parser = argparse.ArgumentParser(prog="python -m theory.null", description=main.__doc__)
    parser.add_argument("d", type=int, nargs="+", help="ambient dimension(s), e.g. a layer width")
    parser.add_argument("--p", type=float, nargs="+", default=[0.99, 0.999], help="levels (default 0.99 0.999)")
    args = parser.parse_args(argv)
    try:
        rows = [(d, [cosine_null_threshold(d, p) for p in args.p]) for d in args.d]
    except ConfigError as exc:
        print(f"theory.null: error: {exc}", file=sys.stderr)
        return 2
    print("| d | " + " | ".join(f"p{100 * p:g}" for p in args.p) + " |")
    print("|---|" + "---|" * len(args.p))
    for d, thresholds in rows:
        print(f"| {d} | " + " | ".join(f"{x:.6f}" for x in thresholds) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
