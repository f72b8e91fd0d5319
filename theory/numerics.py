"""Numeric plumbing shared by the theory modules: input conversion to float64 numpy, and a bracketing root finder.

Every prediction in ``theory`` is evaluated in float64 numpy. Callers hand in numpy arrays, torch tensors (detached,
moved to the CPU and promoted to float64 here; torch is never imported), lists or scalars, and a fine-tune Hessian
either as a d×d matrix or as a callable v ↦ Hv (a Hessian-vector product), which :func:`as_operator` turns into one
form. :func:`bisect_increasing` inverts the monotone distribution functions of ``null`` and ``fit`` (it works on
floats and on mpmath numbers alike).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from testbed.errors import ConfigError

__all__ = ["Operator", "as_array", "as_array_lenient", "as_operator", "bisect_increasing", "is_callable_operator"]

Operator = Callable[[np.ndarray], np.ndarray]
Real = TypeVar("Real")  # float or mpmath.mpf


def _to_numpy(x: Any) -> Any:
    if hasattr(x, "detach"):  # a torch tensor; theory does not import torch
        return x.detach().cpu().double().numpy()
    return x


def as_array(x: Any, name: str = "array") -> np.ndarray:
    """Convert a numpy array, torch tensor, list or scalar to a float64 array, refusing NaN and inf.

    Args:
        x: the value.
        name: what to call it in the error message.

    Returns:
        The float64 array (same shape as ``x``).

    Raises:
        ConfigError: ``x`` is not numeric or holds a non-finite value.
    """
    try:
        out = np.asarray(_to_numpy(x), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be numeric, got {type(x).__name__}") from exc
    if not np.all(np.isfinite(out)):
        raise ConfigError(f"{name} contains NaN or inf")
    return out


def as_array_lenient(x: Any) -> np.ndarray:
    """Like :func:`as_array` but flattened and keeping NaN/inf (a measured series may hold them)."""
    return np.asarray(_to_numpy(x), dtype=np.float64).reshape(-1)


def is_callable_operator(H: Any) -> bool:
    """True when H is a callable v ↦ Hv rather than an array-like matrix."""
    return callable(H) and not hasattr(H, "shape")


def as_operator(H: Any, d: int) -> Operator:
    """Turn H (a d×d array/tensor, or a callable v ↦ Hv such as a Hessian-vector product) into v ↦ Hv.

    Args:
        H: the matrix or the callable; a callable receives a float64 numpy vector of length d and may return a numpy
            array or a torch tensor.
        d: the dimension.

    Returns:
        A function of a float64 vector [d] returning the float64 vector Hv [d].
    """
    if is_callable_operator(H):

        def apply(v: np.ndarray) -> np.ndarray:
            out = as_array(H(v), "H(v)").reshape(-1)
            if out.shape != (d,):
                raise ConfigError(f"H(v) must return a vector of length {d}, got shape {out.shape}")
            return out

        return apply
    mat = as_array(H, "H")
    if mat.shape != (d, d):
        raise ConfigError(f"H must be a {d}x{d} matrix (or a callable v -> H v), got shape {mat.shape}")
    return lambda v: mat @ v


def bisect_increasing(f: Callable[[Real], Any], lo: Real, hi: Real, width: Any) -> Real:
    """Root of an increasing function on [lo, hi] with f(lo) < 0 <= f(hi), by bisection down to ``width``.

    Bisection never leaves the bracket and needs no derivative, which suits the special functions it inverts here.

    Args:
        f: increasing function (floats or mpmath numbers in, a number out).
        lo: lower end of the bracket.
        hi: upper end.
        width: stop once hi − lo <= width.

    Returns:
        The midpoint of the last bracket.
    """
    while hi - lo > width:
        mid = (lo + hi) / 2
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
