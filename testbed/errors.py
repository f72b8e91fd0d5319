"""User-facing errors and the checks that raise them: the CLI prints one line and exits with status 2.

Every setting check in the testbed goes through the helpers here (``positive_int``, ``positive_number``,
``fraction``, ``one_of``), so the same mistake gets the same words wherever it is made, and
``one_line`` is the single place that turns an exception (ours, jsonargparse's or Lightning's) into that line.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import typing
from collections.abc import Iterable
from typing import Any

__all__ = [
    "TestbedError",
    "ConfigError",
    "CheckpointError",
    "positive_int",
    "positive_number",
    "fraction",
    "SEED_MAX",
    "seed_value",
    "one_of",
    "one_line",
    "testbed_cause",
    "environment_problem",
    "hints_of",
    "check_nulls",
    "as_settings",
]


class TestbedError(Exception):
    """A problem with the user's input (config, file, checkpoint, layer name, dimensions)."""


class ConfigError(TestbedError, ValueError):
    """A configuration value is invalid or inconsistent."""


class CheckpointError(TestbedError):
    """A file is missing, unreadable, unsafe, or not the kind of checkpoint expected."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(name: str, value: object, allow_none: bool = False, allow_zero: bool = False) -> int | None:
    """``value`` as an int if it is a positive integer (or 0 / ``None`` when allowed) that fits in 64 bits (counts
    and sizes reach ``range``, ``islice`` and tensor shapes), else a ``ConfigError``."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value >= 1)
    if not ok:
        what = "a non-negative integer" if allow_zero else "a positive integer"
        raise ConfigError(f"{name} must be {what}{' or null' if allow_none else ''}, got {value!r}")
    if value > INT_MAX:  # type: ignore[operator]
        raise ConfigError(f"{name} must be at most {INT_MAX}, got {value!r}")
    return int(value)  # type: ignore[arg-type]


def positive_number(name: str, value: object, allow_zero: bool = False, allow_none: bool = False) -> float | None:
    """``value`` as a float if it is a finite number > 0 (>= 0 with ``allow_zero``), else a ``ConfigError``."""
    if value is None and allow_none:
        return None
    ok = _is_number(value) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)  # type: ignore[arg-type]
    if not ok:
        raise ConfigError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def fraction(name: str, value: object, open_low: bool = False, open_high: bool = False) -> float:
    """``value`` as a float in [0, 1] (ends excluded on request), else a ``ConfigError``."""
    ok = _is_number(value) and math.isfinite(value)  # type: ignore[arg-type]
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v > 0 if open_low else v >= 0) and (v < 1 if open_high else v <= 1)
    if not ok:
        interval = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
        raise ConfigError(f"{name} must lie in {interval}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


INT_MAX = 2**63 - 1
SEED_MAX = 2**32 - 1  # numpy's seed range, which ``seed_everything`` enforces


def seed_value(name: str, value: object) -> int:
    """``value`` as an int if it is an integer seed in 0 … 2³² − 1, else a ``ConfigError``."""
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX):
        raise ConfigError(f"{name} must be an integer seed in 0 … {SEED_MAX}, got {value!r}")
    return int(value)


def one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else a ``ConfigError`` listing them."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


# Lines of jsonargparse's nested error reports that repeat the same problem for every union member.
_NOISE = (
    "Union subtypes", "Subtypes:", "Errors:", "Expected a <class 'NoneType'>", "Given value type", "NestedArg(",
    "Subclass types expect one of", "- a class path (str)", "- a dict with",
)  # fmt: skip


def one_line(exc: BaseException, max_parts: int = 8) -> str:
    """The message of ``exc`` on one line: blank and repeated jsonargparse detail dropped, parts joined by `` | ``."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    lines = [line for line in lines if not any(n in line for n in _NOISE)]
    if not lines:
        return type(exc).__name__
    return " | ".join(lines[:max_parts]) + (" | ..." if len(lines) > max_parts else "")


def testbed_cause(exc: BaseException | None) -> TestbedError | None:
    """The first ``TestbedError`` in the cause/context chain of ``exc`` (itself included), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TestbedError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def environment_problem(exc: BaseException | None) -> str | None:
    """One line when ``exc`` (or an exception in its cause chain) is the environment refusing what the input asks
    for: a file or folder that cannot be read or written (``OSError``), text that is not UTF-8, or a size too large
    to allocate or to index with (``OverflowError``); else ``None`` (a bug, which keeps its traceback)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UnicodeDecodeError):
            return f"an input file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        if isinstance(exc, OSError):
            where = " ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
            return f"{exc.strerror or one_line(exc)}{': ' + where if where else ''}"
        if isinstance(exc, OverflowError):
            return f"a setting is too large to use: {one_line(exc, 1)}"
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
            isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
        ):
            return f"out of memory: {one_line(exc, 1)} (a size setting too large for this machine?)"
        exc = exc.__cause__ or exc.__context__
    return None


def _allows_none(hint: Any) -> bool:
    return hint is Any or hint is type(None) or type(None) in typing.get_args(hint)


def hints_of(target: Any) -> dict[str, Any]:
    """The resolved annotations of a function, or of a class's ``__init__`` (``{}`` when they cannot be resolved)."""
    try:
        return typing.get_type_hints(target.__init__ if isinstance(target, type) else target)
    except Exception:  # an annotation that cannot be resolved: leave it to the class
        return {}


def check_nulls(value: Any, where: str = "", hints: dict[str, Any] | None = None) -> None:
    """Refuse ``null`` for a setting whose annotation does not allow ``None`` (jsonargparse lets it through for a
    class's ``init_args``, and the class then fails on it far from the config), in every ``class_path`` entry and
    the settings dataclasses they take.

    Raises:
        ConfigError: naming the setting and the type it needs.
    """
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_nulls(item, f"{where}[{i}]")
        return
    if not isinstance(value, dict):
        return
    if isinstance(value.get("class_path"), str):
        module, _, name = value["class_path"].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            return
        check_nulls(value.get("init_args") or {}, f"{where}.init_args".lstrip("."), hints_of(cls))
        return
    for key, item in value.items():
        name = f"{where}.{key}".lstrip(".")
        hint = (hints or {}).get(key)
        if item is None and hint is not None and not _allows_none(hint):
            shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            raise ConfigError(f"{name} must be given ({shown}), got null")
        options = typing.get_args(hint) or (hint,)
        settings = next((o for o in options if dataclasses.is_dataclass(o)), None)
        check_nulls(item, name, hints_of(settings) if settings is not None else None)


def as_settings(cls: type, value: Any, name: str) -> Any:
    """``value`` as a ``cls`` settings dataclass: instances pass, mappings are converted (unknown keys refused)."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"unknown {name} setting(s) {unknown}; known: {sorted(known)}")
        return cls(**value)
    raise ConfigError(f"{name} must be a mapping of {cls.__name__} settings, got {type(value).__name__}")
