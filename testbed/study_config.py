"""The study file: a training history (shared phases → optional directions → final phase forked into arms),
repeated over seeds. This module holds the typed spec (parsed by jsonargparse from ``--config study.yaml``, so
relative paths resolve against the study file), its validation, and the pure config algebra used to build each
run's fully resolved fit config: YAML deep merge, dotted-key overrides and ``{...}`` placeholders.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse.typing import Path_fr

from testbed.errors import ConfigError

# A file path that jsonargparse resolves relative to the study file (and checks exists) when it parses the study.
ConfigPath = Path_fr

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,=+-]*$")
PLACEHOLDER = re.compile(r"\{(seed|run_dir|directions\.[^{}.]+|phases\.[^{}.]+\.ckpt)\}")


@dataclass
class PhaseSpec:
    """One phase of the history: an ordinary ``fit`` config.

    Args:
        name: phase name (a folder name: letters, digits, ``_.,=+-``).
        config: the phase's fit config, relative to the study file.
        overrides: dotted-key overrides applied to that config, e.g. ``{trainer.max_steps: 300}``.
    """

    name: str
    config: ConfigPath
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DirectionSpec:
    """A direction computed between the shared phases and the arms, once per seed.

    Args:
        witness: shared phase whose last checkpoint is the witness (e.g. pre-train).
        reference: shared phase whose last checkpoint is the reference (e.g. align).
        layers: layer names to read, e.g. ``[blocks.1.hidden]``.
        method: ``diff_means`` or ``pca``.
        pooling: ``mean`` or ``last`` token pooling.
        kind: ``vrev`` (the history direction) or ``shuffled_history`` (its control), see ``testbed.directions``.
    """

    witness: str
    reference: str
    layers: list[str]
    method: Literal["diff_means", "pca"] = "diff_means"
    pooling: Literal["mean", "last"] = "mean"
    kind: Literal["vrev", "shuffled_history"] = "vrev"


@dataclass
class ArmSpec:
    """One arm: the final phase with changes.

    Args:
        config: optional partial fit config (relative to the study file) deep-merged over the final phase's.
        overrides: dotted-key overrides, applied after ``config``.
        callbacks: callbacks (``class_path``/``init_args``) appended to ``trainer.callbacks``.
    """

    config: ConfigPath | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    callbacks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SweepSpec:
    """A grid of arms: every combination of the values becomes an arm ``<sweep>/<k1>=<v1>,<k2>=<v2>``.

    Args:
        grid: dotted key -> list of values, e.g. ``{model.init_args.sharpness: [1, 4, 16]}``.
        base: optional arm whose config/overrides/callbacks each grid point starts from.
    """

    grid: dict[str, list[Any]]
    base: str | None = None


@dataclass
class Study:
    """A validated study, with sweeps expanded into arms."""

    name: str
    runs_dir: Path
    seeds: list[int]
    phases: list[PhaseSpec]
    directions: dict[str, DirectionSpec]
    final: PhaseSpec
    arms: dict[str, ArmSpec]
    arm_values: dict[str, dict[str, Any]]  # arm -> the overrides that define it (for HParams)

    @property
    def root(self) -> Path:
        return self.runs_dir / self.name


def load_yaml_mapping(path: Path, owner: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name ``owner`` (e.g. ``phase 'align'``)."""
    if not path.is_file():
        raise ConfigError(f"{owner}: config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{owner}: {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{owner}: {path} must hold a mapping of fit options, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``: mappings merge key by key, everything else is replaced.

    A mapping whose ``class_path`` changes is replaced whole, since the old ``init_args`` belong to another class.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        old = out.get(key)
        same_class = not (isinstance(value, dict) and "class_path" in value and isinstance(old, dict)) or (
            old.get("class_path") == value["class_path"]
        )
        if isinstance(old, dict) and isinstance(value, dict) and same_class:
            out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(config: dict[str, Any], key: str, value: Any, owner: str) -> None:
    """Set ``config[a][b][c] = value`` for ``key='a.b.c'`` (integers index lists), creating mappings as needed."""
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
    """A copy of ``config`` with dotted-key ``overrides`` set in order."""
    out = copy.deepcopy(config)
    for key, value in overrides.items():
        set_dotted(out, key, value, owner)
    return out


def placeholders_in(value: Any) -> set[str]:
    """All ``{...}`` placeholder names used anywhere in a nested config value."""
    if isinstance(value, str):
        return set(PLACEHOLDER.findall(value))
    if isinstance(value, dict):
        return set().union(*(placeholders_in(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(placeholders_in(v) for v in value)) if value else set()
    return set()


def substitute(value: Any, table: dict[str, Any]) -> Any:
    """Replace placeholders in every string; a string that is exactly ``{seed}`` becomes the integer seed."""
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


def _format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_sweeps(arms: dict[str, ArmSpec], sweeps: dict[str, SweepSpec]) -> tuple[dict[str, ArmSpec], dict]:
    """Arms plus one arm per grid point of each sweep; also returns each arm's defining overrides."""
    out = dict(arms)
    values: dict[str, dict[str, Any]] = {name: dict(arm.overrides) for name, arm in arms.items()}
    for sweep_name, sweep in sweeps.items():
        owner = f"sweep {sweep_name!r}"
        if not sweep.grid or any(not isinstance(v, list) or not v for v in sweep.grid.values()):
            raise ConfigError(f"{owner}: grid must map dotted keys to non-empty lists of values")
        if sweep.base is not None and sweep.base not in arms:
            raise ConfigError(f"{owner}: base arm {sweep.base!r} is not one of the arms {sorted(arms)}")
        base = arms[sweep.base] if sweep.base else ArmSpec()
        keys = list(sweep.grid)
        for combo in itertools.product(*(sweep.grid[k] for k in keys)):
            point = dict(zip(keys, combo, strict=True))
            label = ",".join(f"{k.split('.')[-1]}={_format_value(v)}" for k, v in point.items())
            name = f"{sweep_name}/{label}"
            if name in out:
                raise ConfigError(f"{owner}: grid point {label} appears twice")
            out[name] = ArmSpec(base.config, {**base.overrides, **point}, list(base.callbacks))
            values[name] = {**base.overrides, **point}
    return out, values


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise ConfigError(
            f"{what} name {name!r} must start with a letter or digit and use only letters, digits and _.,=+-"
        )


def _check_file(path: Any, owner: str) -> None:
    if not Path(str(path.absolute)).is_file():
        raise ConfigError(f"{owner}: config file not found: {path.absolute}")


def _check_placeholders(value: Any, owner: str, directions: dict, phases_so_far: list[str]) -> None:
    for name in placeholders_in(value):
        if name.startswith("directions.") and name.split(".", 1)[1] not in directions:
            raise ConfigError(f"{owner}: placeholder {{{name}}} names no direction; defined: {sorted(directions)}")
        if name.startswith("phases.") and name.split(".")[1] not in phases_so_far:
            raise ConfigError(f"{owner}: placeholder {{{name}}} names no earlier phase; earlier: {phases_so_far}")


def validate_study(
    name: str,
    runs_dir: str,
    seeds: list[int],
    phases: list[PhaseSpec],
    directions: dict[str, DirectionSpec],
    final: PhaseSpec,
    arms: dict[str, ArmSpec],
    sweeps: dict[str, SweepSpec],
) -> Study:
    """Check names, references, files and placeholders; expand sweeps. Raises ``ConfigError`` naming the culprit."""
    _check_name(name, "study")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    names = [p.name for p in phases] + [final.name]
    for phase_name in names:
        _check_name(phase_name, "phase")
    if len(set(names)) != len(names):
        raise ConfigError(f"phase names must be distinct (the final phase included), got {names}")
    for i, phase in enumerate([*phases, final]):
        owner = f"phase {phase.name!r}"
        _check_file(phase.config, owner)
        earlier = names[:i]
        _check_placeholders(phase.overrides, owner, directions if phase is final else {}, earlier)
    for dname, spec in directions.items():
        _check_name(dname, "direction")
        shared = names[:-1]
        for role in ("witness", "reference"):
            if getattr(spec, role) not in shared:
                raise ConfigError(f"direction {dname!r}: {role} {getattr(spec, role)!r} is not a shared phase {shared}")
        if not spec.layers:
            raise ConfigError(f"direction {dname!r}: layers must name at least one layer")
    for arm_name in arms:
        _check_name(arm_name, "arm")
    for sweep_name in sweeps:
        _check_name(sweep_name, "sweep")
        if sweep_name in arms:
            raise ConfigError(f"sweep {sweep_name!r} has the same name as an arm")
    all_arms, arm_values = expand_sweeps(arms or {final.name: ArmSpec()}, sweeps)
    for arm_name, arm in all_arms.items():
        owner = f"arm {arm_name!r}"
        if arm.config is not None:
            _check_file(arm.config, owner)
        for cb in arm.callbacks:
            if not isinstance(cb, dict) or "class_path" not in cb:
                raise ConfigError(f"{owner}: each callback needs a class_path, got {cb!r}")
        _check_placeholders([arm.overrides, arm.callbacks], owner, directions, names[:-1])
    return Study(name, Path(runs_dir).absolute(), list(seeds), phases, directions, final, all_arms, arm_values)
