"""Pure operations on fit configs (nested dicts read from YAML) that build each study run's resolved config.

* ``deep_merge``: an arm's partial config over the final phase's (mappings merge, a new ``class_path`` replaces);
* ``apply_overrides``: dotted keys such as ``trainer.max_steps`` or ``trainer.callbacks.0.init_args.x``;
* ``placeholders_in`` / ``substitute``: ``{seed}``, ``{run_dir}``, ``{directions.<name>}`` and
  ``{phases.<name>.ckpt}``, filled in once the run's place in the study is known.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError
from testbed.io import load_yaml

__all__ = [
    "PLACEHOLDER",
    "load_yaml_mapping",
    "deep_merge",
    "set_dotted",
    "apply_overrides",
    "placeholders_in",
    "substitute",
]

PLACEHOLDER = re.compile(r"\{(seed|run_dir|directions\.[^{}.]+|phases\.[^{}.]+\.ckpt)\}")


def load_yaml_mapping(path: Path, owner: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping (through ``testbed.io.load_yaml``: UTF-8, no repeated keys).

    Args:
        path: the file.
        owner: who needs it, named in errors (e.g. ``phase 'align'``).
    """
    if not path.is_file():
        raise ConfigError(f"{owner}: config file not found: {path}")
    try:
        data = load_yaml(path, "config")
    except ConfigError as exc:
        raise ConfigError(f"{owner}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{owner}: {path} must hold a mapping of fit options, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in: mappings merge key by key, other values are replaced.

    A mapping whose ``class_path`` changes is replaced whole, since the old ``init_args`` belong to another class.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        old = out.get(key)
        other_class = isinstance(value, dict) and isinstance(old, dict) and "class_path" in value and (
            old.get("class_path") != value["class_path"]
        )
        if isinstance(old, dict) and isinstance(value, dict) and not other_class:
            out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(config: dict[str, Any], key: str, value: Any, owner: str) -> None:
    """Set ``config[a][b][c] = value`` for ``key='a.b.c'`` in place; digits index lists, missing mappings are made.

    Args:
        config: the nested config, changed in place.
        key: the dotted key.
        value: the value (copied).
        owner: named in errors.
    """
    parts = key.split(".")
    node: Any = config
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{owner}: override {key!r}: {'.'.join(parts[:i])} has no item {part}")
            if last:
                node[int(part)] = copy.deepcopy(value)
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{owner}: override {key!r}: {'.'.join(parts[:i])} is a value, not a mapping")
        if last:
            node[part] = copy.deepcopy(value)
        else:
            node = node.setdefault(part, {})


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any], owner: str) -> dict[str, Any]:
    """A copy of ``config`` with the dotted-key ``overrides`` set in their order (errors name ``owner``)."""
    out = copy.deepcopy(config)
    for key, value in overrides.items():
        set_dotted(out, key, value, owner)
    return out


def placeholders_in(value: Any) -> set[str]:
    """The names of all ``{...}`` placeholders in the strings of a nested value."""
    if isinstance(value, str):
        return set(PLACEHOLDER.findall(value))
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return set().union(*(placeholders_in(v) for v in value))
    return set()


def substitute(value: Any, table: dict[str, Any]) -> Any:
    """``value`` with every placeholder replaced from ``table``.

    A string that is exactly one placeholder takes the table's value with its type (``"{seed}"`` becomes an int).
    """
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole and not isinstance(table[whole.group(1)], str):
            return table[whole.group(1)]
        return PLACEHOLDER.sub(lambda m: str(table[m.group(1)]), value)
    if isinstance(value, dict):
        return {k: substitute(v, table) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, table) for v in value]
    return value
