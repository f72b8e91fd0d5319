"""Compare two nested results (dicts, lists, tensors, floats) leaf by leaf, naming the first leaf that differs."""

from __future__ import annotations

from typing import Any

import pytest
import torch


def assert_nested_close(a: Any, b: Any, where: str = "", rtol: float = 1e-6, atol: float = 1e-7) -> None:
    """Assert that ``b`` has the structure of ``a`` and equal leaves (tensors and floats within ``rtol``/``atol``).

    Args:
        a: the expected value.
        b: the value to check.
        where: the path of ``a`` in the enclosing result, used in the failure message.
        rtol: relative tolerance of tensors and floats.
        atol: absolute tolerance of tensors and floats.
    """
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, where
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{where}: {m}")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(a, key=str)} != {sorted(b, key=str)}"
        for key in a:
            assert_nested_close(a[key], b[key], f"{where}.{key}", rtol, atol)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_nested_close(x, y, f"{where}[{i}]", rtol, atol)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=rtol, abs=atol), where
    else:
        assert a == b, where
