"""The study file as typed specs, and its validation into a ``Study``.

A study is a training history (shared phases → directions → final phase forked into arms) repeated over seeds.
jsonargparse parses ``--config study.yaml`` into these dataclasses, resolving config paths against the study file;
``validate_study`` checks names, references, files and placeholders before any run is planned, and expands sweeps
into arms.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jsonargparse.typing import Path_fr

from testbed.errors import ConfigError, positive_int, seed_value
from testbed.study.config_algebra import placeholders_in, set_dotted
from testbed.study.layout import check_folder_names

__all__ = [
    "ConfigPath",
    "SAFE_NAME",
    "PhaseSpec",
    "FinalPhaseSpec",
    "DirectionSpec",
    "ArmSpec",
    "SweepSpec",
    "Study",
    "expand_sweeps",
    "validate_study",
]

# A file path that jsonargparse resolves relative to the study file (and checks exists) when it parses the study.
ConfigPath = Path_fr

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,=+-]*$")


@dataclass
class PhaseSpec:
    """One shared phase of the history: an ordinary ``fit`` config.

    Args:
        name: phase name (a folder name: letters, digits, ``_.,=+-``).
        config: the phase's fit config, relative to the study file.
        overrides: dotted-key overrides applied to that config, e.g. ``{trainer.max_steps: 300}``.
    """

    name: str
    config: ConfigPath
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinalPhaseSpec(PhaseSpec):
    """The phase that forks into arms.

    Args:
        name: phase name (a folder name: letters, digits, ``_.,=+-``).
        config: the phase's fit config, relative to the study file.
        overrides: dotted-key overrides applied to that config (before each arm's changes).
        callbacks: callbacks (``class_path``/``init_args``) every arm gets, before its own; e.g. the monitor.
    """

    callbacks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DirectionSpec:
    """A direction computed between the shared phases and the arms, once per seed.

    Args:
        witness: shared phase whose last checkpoint is the witness (e.g. pre-train).
        reference: shared phase whose last checkpoint is the reference (e.g. align).
        layers: layer names to read, e.g. ``[blocks.1.hidden]``.
        method: ``diff_means`` or ``pca``.
        pooling: ``mean`` or ``last`` token pooling.
        kind: ``vrev`` (the history direction), ``shuffled_history`` (its control, see ``testbed.directions``) or
            ``matched_null`` (null directions built the same way, for the monitor's ``matched_null``: the pair's
            roles shuffled per probe input, and the other seeds' histories; see ``testbed.nulls``).
        null_samples: shuffled-role directions per layer (``matched_null`` only; default 1000).
    """

    witness: str
    reference: str
    layers: list[str]
    method: Literal["diff_means", "pca"] = "diff_means"
    pooling: Literal["mean", "last"] = "mean"
    kind: Literal["vrev", "shuffled_history", "matched_null"] = "vrev"
    null_samples: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "matched_null" and self.null_samples is None:
            self.null_samples = 1000
        if self.kind != "matched_null" and self.null_samples is not None:
            raise ConfigError(f"null_samples is a setting of matched_null directions, not of kind {self.kind!r}")

@dataclass
class ArmSpec:
    """One arm: the final phase with changes.

    Args:
        config: optional partial fit config (relative to the study file) deep-merged over the final phase's.
        overrides: dotted-key overrides, applied after ``config``.
        callbacks: callbacks (``class_path``/``init_args``) appended after the final phase's callbacks.
    """

    config: ConfigPath | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    callbacks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SweepSpec:
    """A grid of arms: every combination of the values becomes an arm ``<sweep>/<k1>=<v1>,<k2>=<v2>``.

    Args:
        grid: dotted key -> list of values, e.g. ``{model.init_args.sharpness: [1, 4, 16]}``; a key
            ``callbacks.<i>.<...>`` sets a value inside the base arm's own i-th callback, e.g.
            ``callbacks.0.init_args.objective.strength``.
        base: optional arm whose config/overrides/callbacks each grid point starts from.
    """

    grid: dict[str, list[Any]]
    base: str | None = None


@dataclass
class Study:
    """A validated study, with sweeps expanded into arms.

    Attributes:
        arm_values: arm -> the overrides that define it (shown in TensorBoard's HParams view).
        overlays: partial fit configs merged into every phase and arm (a variant of the whole study).
        report: the report spec copied into the study folder (``python -m testbed report`` reads it there).
    """

    name: str
    runs_dir: Path
    seeds: list[int]
    phases: list[PhaseSpec]
    directions: dict[str, DirectionSpec]
    final: FinalPhaseSpec
    arms: dict[str, ArmSpec]
    arm_values: dict[str, dict[str, Any]]
    overlays: list[Path] = field(default_factory=list)
    report: Path | None = None

    @property
    def root(self) -> Path:
        return self.runs_dir / self.name


def _format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_sweeps(
    arms: dict[str, ArmSpec], sweeps: dict[str, SweepSpec]
) -> tuple[dict[str, ArmSpec], dict[str, dict[str, Any]]]:
    """The arms plus one arm per grid point of each sweep, and each arm's defining overrides."""
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
            config_keys = {k: v for k, v in point.items() if not k.startswith("callbacks.")}
            callbacks = {"callbacks": copy.deepcopy(base.callbacks)}
            for key, value in point.items():
                if key.startswith("callbacks."):
                    set_dotted(callbacks, key, value, f"{owner} (the base arm's callbacks)")
            out[name] = ArmSpec(base.config, {**base.overrides, **config_keys}, callbacks["callbacks"])
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


def _check_callbacks(callbacks: list[Any], owner: str) -> None:
    for cb in callbacks:
        if not isinstance(cb, dict) or "class_path" not in cb:
            raise ConfigError(f"{owner}: each callback needs a class_path, got {cb!r}")


def _check_placeholders(value: Any, owner: str, directions: dict, phases_so_far: list[str]) -> None:
    for name in placeholders_in(value):
        if name.startswith("directions.") and name.split(".", 1)[1] not in directions:
            raise ConfigError(f"{owner}: placeholder {{{name}}} names no direction; defined: {sorted(directions)}")
        if name.startswith("phases.") and name.split(".")[1] not in phases_so_far:
            raise ConfigError(f"{owner}: placeholder {{{name}}} names no earlier phase; earlier: {phases_so_far}")


def _check_phases(phases: list[PhaseSpec], final: FinalPhaseSpec, directions: dict[str, DirectionSpec]) -> None:
    names = [p.name for p in phases] + [final.name]
    for phase_name in names:
        _check_name(phase_name, "phase")
    if len(set(names)) != len(names):
        raise ConfigError(f"phase names must be distinct (the final phase included), got {names}")
    for i, phase in enumerate([*phases, final]):
        owner = f"phase {phase.name!r}"
        _check_file(phase.config, owner)
        _check_placeholders(phase.overrides, owner, directions if phase is final else {}, names[:i])
    _check_callbacks(final.callbacks, f"phase {final.name!r}")
    _check_placeholders(final.callbacks, f"phase {final.name!r}", directions, names[:-1])
    for dname, spec in directions.items():
        _check_name(dname, "direction")
        shared = names[:-1]
        for role in ("witness", "reference"):
            if getattr(spec, role) not in shared:
                raise ConfigError(f"direction {dname!r}: {role} {getattr(spec, role)!r} is not a shared phase {shared}")
        if not spec.layers:
            raise ConfigError(f"direction {dname!r}: layers must name at least one layer")
        positive_int(f"direction {dname!r}: null_samples", spec.null_samples, allow_none=True)


def validate_study(
    name: str,
    runs_dir: str,
    seeds: list[int],
    phases: list[PhaseSpec],
    directions: dict[str, DirectionSpec],
    final: FinalPhaseSpec,
    arms: dict[str, ArmSpec],
    sweeps: dict[str, SweepSpec],
    overlays: list[ConfigPath] | None = None,
    report: ConfigPath | None = None,
) -> Study:
    """Check names, references, files and placeholders, and expand sweeps into arms.

    Args:
        name: the study name.
        runs_dir: root folder of all runs.
        seeds: distinct seeds.
        phases: the shared phases in order.
        directions: direction name -> spec.
        final: the phase that forks into arms.
        arms: arm name -> spec (none: one arm named after the final phase).
        sweeps: sweep name -> grid.
        overlays: partial fit configs merged into every phase and arm, in order.
        report: the study's report spec.

    Raises:
        ConfigError: naming the study, phase, direction, arm or sweep at fault.
    """
    _check_name(name, "study")
    if not isinstance(seeds, list) or not seeds or len(set(map(repr, seeds))) != len(seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct integers, got {seeds!r}")
    for seed in seeds:
        seed_value("study seed", seed)
    _check_phases(phases, final, directions)
    nulls = [d for d, spec in directions.items() if spec.kind == "matched_null"]
    if nulls and len(seeds) < 2:
        raise ConfigError(f"direction(s) {nulls}: a matched null is built from the other seeds' histories, so the "
                          f"study needs at least two seeds, got {seeds}")
    for arm_name in arms:
        _check_name(arm_name, "arm")
    for sweep_name in sweeps:
        _check_name(sweep_name, "sweep")
        if sweep_name in arms:
            raise ConfigError(f"sweep {sweep_name!r} has the same name as an arm")
    all_arms, arm_values = expand_sweeps(arms or {final.name: ArmSpec()}, sweeps)
    shared = [p.name for p in phases]
    for arm_name, arm in all_arms.items():
        owner = f"arm {arm_name!r}"
        check_folder_names(arm_name, "arm")
        if arm.config is not None:
            _check_file(arm.config, owner)
        _check_callbacks(arm.callbacks, owner)
        _check_placeholders([arm.overrides, arm.callbacks], owner, directions, shared)
    for i, overlay in enumerate(overlays or []):
        _check_file(overlay, f"overlay {i}")
    if report is not None:
        _check_file(report, "report spec")
    return Study(
        name, Path(runs_dir).absolute(), list(seeds), phases, directions, final, all_arms, arm_values,
        [Path(str(o.absolute)) for o in overlays or []], None if report is None else Path(str(report.absolute)),
    )
