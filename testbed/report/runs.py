"""Finding the runs under a folder and grouping them into arms and seeds.

A run is a folder holding event files; ``testbed.study.layout`` says which arm (or shared phase) and seed it is. A
folder tree with a ``DONE.json`` anywhere is a *study*: there, a run without its own ``DONE.json`` is unfinished and
is left out unless asked for. A tree with none (plain TensorBoard folders) is taken as it is.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError
from testbed.io import load_yaml
from testbed.report.events import EVENT_GLOB, Series, event_file_problems, event_files, read_scalars
from testbed.study.layout import DONE, RUN_CONFIG, RunKey, is_finished, parse_run

__all__ = ["Run", "RunSet", "compile_pattern", "discover_runs", "natural_key", "setting_of"]


@dataclass
class Run:
    """One run folder: its key (arm, seed), whether it finished, and (read on first use) its scalars."""

    key: RunKey
    path: Path
    finished: bool
    problems: list[str] = field(default_factory=list)

    @property
    def arm(self) -> str:
        return self.key.arm

    @property
    def seed(self) -> int:
        return self.key.seed

    @cached_property
    def scalars(self) -> dict[str, Series]:
        self.problems.extend(event_file_problems(self.path))
        try:
            return read_scalars(self.path)
        except Exception as exc:  # a damaged file must not stop the whole report: say so and go on
            self.problems.append(f"run {self.path}: event files could not be read ({type(exc).__name__}: {exc})")
            return {}

    @cached_property
    def config(self) -> dict[str, Any]:
        """The run's resolved fit config (``run_config.yaml``), or ``{}`` if it has none."""
        path = self.path / RUN_CONFIG
        if not path.is_file():
            return {}
        data = load_yaml(path, "run config")
        return data if isinstance(data, dict) else {}


@dataclass
class RunSet:
    """The runs of one report.

    Attributes:
        root: the folder searched.
        study: whether the folder is a study (a ``DONE.json`` somewhere below it).
        runs: the runs reported, by arm in natural order and by seed.
        unfinished: runs without ``DONE.json`` in a study, left out (``include_unfinished`` false) or marked.
    """

    root: Path
    study: bool
    runs: list[Run]
    unfinished: list[Run]

    def by_arm(self) -> dict[str, list[Run]]:
        groups: dict[str, list[Run]] = defaultdict(list)
        for run in self.runs:
            groups[run.arm].append(run)
        return {arm: sorted(groups[arm], key=lambda r: r.seed) for arm in sorted(groups, key=natural_key)}

    def tags(self) -> list[str]:
        return sorted({tag for run in self.runs for tag in run.scalars})

    def problems(self) -> list[str]:
        return [p for run in self.runs for p in run.problems]


def compile_pattern(option: str, pattern: str | None) -> re.Pattern | None:
    """``pattern`` compiled; an invalid expression is a ``ConfigError`` naming the option and the pattern."""
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{option}: invalid regular expression {pattern!r}: {exc}") from None


def natural_key(name: str) -> list[tuple[int, float, str]]:
    """Sort key that orders numbers by value: ``sharpness=2.5`` before ``sharpness=10``."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:e-?\d+)?)", name)
    return [(0, float(p), "") if re.fullmatch(r"\d+(\.\d+)?(e-?\d+)?", p) else (1, 0.0, p) for p in parts if p]


def discover_runs(root: Path, include_unfinished: bool = False) -> RunSet:
    """Every run folder under ``root`` (``root`` itself if it is one), keyed by ``testbed.study.layout``.

    Args:
        root: a study folder or any folder of TensorBoard runs.
        include_unfinished: in a study, also report runs without ``DONE.json`` (marked).
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"run folder not found: {root}" + (" (it is a file)" if root.exists() else ""))
    study = any(root.rglob(DONE))
    folders = sorted({f.parent for f in root.rglob(EVENT_GLOB) if event_files(f.parent)})
    runs, unfinished, seen = [], [], {}
    for folder in folders:
        key = parse_run(root, folder)
        if (key.arm, key.seed) in seen:
            raise ConfigError(f"two run folders read as arm {key.arm!r} seed {key.seed}: {seen[key.arm, key.seed]} "
                              f"and {folder}")
        seen[key.arm, key.seed] = folder
        run = Run(key, folder, finished=is_finished(folder) or not study)
        if not run.finished:
            unfinished.append(run)
            if not include_unfinished:
                continue
        runs.append(run)
    if not runs:
        why = f"; {len(unfinished)} unfinished run(s) left out (--include_unfinished true)" if unfinished else ""
        raise ConfigError(f"no TensorBoard runs under {root}{why}")
    return RunSet(root, study, runs, unfinished)


def setting_of(run: Run, path: str) -> float:
    """A numeric setting of a run from its ``run_config.yaml``: ``model.init_args.lr`` or ``trainer.callbacks.1.
    init_args.strength`` (list items by index; ``init_args`` may be left out, as in the HParams names)."""
    node: Any = run.config
    for part in path.split("."):
        if isinstance(node, dict) and part not in node and isinstance(node.get("init_args"), dict):
            node = node["init_args"]
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            raise ConfigError(f"setting {path!r} not found in {run.path / RUN_CONFIG} (no {part!r})")
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        raise ConfigError(f"setting {path!r} of {run.path / RUN_CONFIG} is not a finite number: {node!r}")
    return float(node)
