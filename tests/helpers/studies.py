"""Shrunken copies of the shipped study files for fast end-to-end tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["tiny_study"]


def tiny_study(
    study_file: Path,
    out_dir: Path,
    *,
    arms: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    changes: dict[str, Any] | None = None,
) -> Path:
    """Write a copy of ``study_file`` into ``out_dir`` (runs under ``out_dir/runs``) and return its path.

    Args:
        study_file: a shipped ``study.yaml``; its relative paths are made absolute.
        out_dir: where the copy and the runs go.
        arms: keep only these arms (default: all).
        seeds: the seeds (default: the file's).
        overrides: phase name -> dotted-key overrides (replacing the file's), e.g. ``{"finetune": {...}}``.
        changes: further top-level keys to set (e.g. ``name``).
    """
    study = yaml.safe_load(study_file.read_text(encoding="utf-8"))
    here = study_file.parent
    for phase in [*study.get("phases", []), study["final"]]:
        phase["config"] = str(here / phase["config"])
        if overrides and phase["name"] in overrides:
            phase["overrides"] = dict(overrides[phase["name"]])
    for arm in study.get("arms", {}).values():
        if arm and arm.get("config"):
            arm["config"] = str(here / arm["config"])
    for key in ("report",):
        if study.get(key):
            study[key] = str(here / study[key])
    study["overlays"] = [str(here / o) for o in study.get("overlays", [])]
    if arms is not None:
        study["arms"] = {name: study["arms"][name] for name in arms}
    if seeds is not None:
        study["seeds"] = list(seeds)
    study["runs_dir"] = str(out_dir / "runs")
    study.update(changes or {})
    path = out_dir / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    return path
