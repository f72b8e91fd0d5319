"""``python -m testbed study --config study.yaml``: plan, check and run a whole study.

Every run is an ordinary ``fit``: its fully resolved config is written into its run folder and the exact
``python -m testbed fit --config ...`` command is printed. A run that finished (``DONE.json``, written atomically
last) is skipped when the study is started again, so an interrupted study resumes; a run whose config has changed
since is refused unless ``--rerun_changed true``. Folder names come from ``testbed.study.layout``; TensorBoard
overlays the arms, which log identical tags.

Concurrency and deletion: the study holds the lock of its folder for its whole run (``testbed.locks``; a second
``study`` on the same folder is refused, naming the holder), and each run's folder while it prepares and fits it.
A changed or unfinished run is restarted from an empty folder; what is removed is only ever the contents of that
run's own folder, which lies inside the study folder (``layout.check_inside``) and was written by this study (its
``run_config.yaml`` says so); a folder that is not, or a symbolic link, is refused and left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from testbed.errors import ConfigError, TestbedError
from testbed.io import atomic_write_text
from testbed.locks import LOCK_FILE, folder_lock, make_folders, remove_created
from testbed.run_folder import is_refusal
from testbed.study import layout
from testbed.study.fit import check_configs, fit_run, quiet_lightning
from testbed.study.plan import DirectionRun, Plan, Run, build_plan
from testbed.study.spec import (
    ArmSpec,
    ConfigPath,
    DirectionSpec,
    FinalPhaseSpec,
    PhaseSpec,
    Study,
    SweepSpec,
    validate_study,
)
from testbed.study.tensorboard import scalar_tags, write_study_root

__all__ = ["run_study", "study_command", "write_run_config"]


def _shown(path: Path) -> str:
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else str(path)


def _read_done(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _status(item: Run | DirectionRun, rerun_changed: bool) -> str:
    """``done`` (skip), ``todo`` or ``redo``; a finished item with another config is an error unless rerun_changed."""
    done = _read_done(item.marker)
    if done is None:
        return "todo"
    if done.get("fingerprint") == item.fingerprint:
        return "done"
    if rerun_changed:
        return "redo"
    raise ConfigError(
        f"{item.label} finished earlier with a different configuration ({item.marker.parent}); "
        "pass --rerun_changed true to redo it, or remove that folder"
    )


def _signature(run: Run) -> str:
    return f"# study {run.hparams['study']!r}, {run.label}; written by `python -m testbed study`\n"


def write_run_config(run: Run) -> Path:
    """Write the run's resolved fit config, headed by the command that reruns it alone."""
    path = run.config_file
    header = f"# python -m testbed fit --config {_shown(path)}\n" + _signature(run)
    return atomic_write_text(path, header + yaml.safe_dump(run.config, sort_keys=False))


def _compute_direction(item: DirectionRun) -> dict[str, Any]:
    from testbed.commands import compute_vrev_from_checkpoints

    spec = item.spec
    try:
        if spec.kind == "matched_null":
            from testbed.study.nulls import compute_matched_null

            compute_matched_null(item)
        else:
            compute_vrev_from_checkpoints(
                config_path=str(item.reference.config_file),
                witness_ckpt=str(item.witness.checkpoint),
                reference_ckpt=str(item.reference.checkpoint),
                layers=list(spec.layers),
                out=str(item.out),
                method=spec.method,
                pooling=spec.pooling,
                seed=item.seed,
                kind=spec.kind,
            )
    except TestbedError as exc:
        raise TestbedError(f"study stopped at {item.label}: {exc} (finished runs are kept)") from None
    if not item.out.is_file():
        raise TestbedError(f"{item.label}: no direction file was written at {item.out}")
    return {"fingerprint": item.fingerprint, "direction": item.name, "seed": item.seed, "file": str(item.out)}


def _run_item(
    item: Run | DirectionRun, root: Path, quiet: bool, rerun_changed: bool, say: Callable[[str], None]
) -> bool:
    """Run one plan item unless finished; returns True when it ran."""
    status = _status(item, rerun_changed)
    head = f"[{item.index}/{item.total}]"
    if status == "done":
        say(f"{head} skip {item.label}: finished earlier ({_shown(item.marker)})")
        return False
    if isinstance(item, DirectionRun):
        say(f"{head} compute {item.label} from {item.spec.witness!r} and {item.spec.reference!r} -> {_shown(item.out)}")
        item.marker.unlink(missing_ok=True)
        with quiet_lightning():
            result = _compute_direction(item)
        atomic_write_text(item.marker, json.dumps(result, indent=2))
        return True
    layout.check_inside(root, item.run_dir, item.label)  # again: a link may have appeared since the plan was made
    created = make_folders(item.run_dir)
    try:
        with folder_lock(item.run_dir, f"study run ({item.label})"):
            old = [p for p in item.run_dir.iterdir() if p.name != LOCK_FILE]
            if old:  # an interrupted or changed run: start it again from a clean folder
                _check_own_folder(item, old)
                if any(p != item.config_file for p in old):  # (a dry run leaves only the config)
                    say(f"{head} {'redo (config changed)' if status == 'redo' else 'restart (unfinished)'}: "
                        f"{item.label}")
                for path in old:
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            write_run_config(item)
            say(f"{head} run {item.label}\n    python -m testbed fit --config {_shown(item.config_file)}")
            try:
                done = fit_run(item, quiet)
            except Exception as exc:
                # Refused before it wrote anything (the fit cleaned up after itself): drop the config written here.
                if is_refusal(exc) and {p.name for p in item.run_dir.iterdir()} <= {LOCK_FILE, item.config_file.name}:
                    item.config_file.unlink(missing_ok=True)
                raise
            atomic_write_text(item.marker, json.dumps(done, indent=2))
    except Exception as exc:
        if is_refusal(exc):
            remove_created(created)  # the folders made for this run, each only if empty
        raise
    return True


def _check_own_folder(item: Run, entries: list[Path]) -> None:
    """Refuse to empty a run folder that this study did not write (no ``run_config.yaml`` with its signature),
    unless all it holds are hidden leftovers of an interrupted atomic write."""
    if item.run_dir.is_symlink():
        raise ConfigError(f"{item.label}: {item.run_dir} is a symbolic link; refusing to empty it")
    if all(p.name.startswith(".") and p.name.endswith(".partial") for p in entries):
        return
    try:
        head = item.config_file.read_text(encoding="utf-8").splitlines(keepends=True)[1:2]
    except (OSError, UnicodeDecodeError):
        head = []
    if head != [_signature(item)]:
        raise ConfigError(f"{item.label}: {item.run_dir} holds files this study did not write; move them away or "
                          "choose another study name (nothing was deleted)")


def _write_layout(plan: Plan) -> None:
    finished = [run for run in plan.runs if run.marker.is_file()]
    if not finished:
        return
    tags: set[str] = set()
    for run in finished:
        tags |= scalar_tags(run.run_dir)
    write_study_root(plan.study.root, tags, [run.hparams for run in finished])


def run_study(study: Study, quiet: bool = False, dry_run: bool = False, rerun_changed: bool = False) -> Plan:
    """Plan, check and run a study (see the module docstring).

    Args:
        study: the validated study.
        quiet: no progress lines.
        dry_run: write every run's config and print its command, but run nothing.
        rerun_changed: redo finished runs whose resolved config changed.

    Returns:
        The plan that was run.
    """
    plan = build_plan(study)
    check_configs(plan)

    def say(text: str) -> None:
        print(text, flush=True)

    created = make_folders(study.root)
    try:
        with folder_lock(study.root, f"study {study.name!r}"):
            return _run_plan(plan, quiet, dry_run, rerun_changed, say)
    finally:
        remove_created(created)  # only if nothing was written into it (a refusal before the first run)


def _run_plan(plan: Plan, quiet: bool, dry_run: bool, rerun_changed: bool, say: Callable[[str], None]) -> Plan:
    study = plan.study
    n_runs = len(plan.items)
    say(
        f"study {study.name!r}: {len(study.phases)} shared phase(s), {len(study.directions)} direction(s), "
        f"{len(study.arms)} arm(s) x {len(study.seeds)} seed(s) = {n_runs} item(s) -> {_shown(study.root)}"
    )
    if study.report is not None:
        atomic_write_text(layout.report_spec_file(study.root), study.report.read_text(encoding="utf-8"))
    if dry_run:
        for run in plan.runs:
            say(f"python -m testbed fit --config {_shown(write_run_config(run))}")
        return plan
    start, ran = time.monotonic(), 0
    try:
        for item in plan.items:
            ran += _run_item(item, study.root, quiet, rerun_changed, say)
    finally:
        _write_layout(plan)
    say(
        f"study {study.name!r}: ran {ran}, skipped {n_runs - ran} finished earlier, in {time.monotonic() - start:.1f}s."
        f" View: tensorboard --logdir {_shown(study.root)} ; table and plots: python -m testbed report "
        f"{_shown(study.root)}"
    )
    return plan


def study_command(
    name: str | None = None,
    final: FinalPhaseSpec | None = None,
    arms: dict[str, ArmSpec] | None = None,
    phases: list[PhaseSpec] | None = None,
    directions: dict[str, DirectionSpec] | None = None,
    sweeps: dict[str, SweepSpec] | None = None,
    seeds: list[int] | None = None,
    overlays: list[ConfigPath] | None = None,
    report: ConfigPath | None = None,
    runs_dir: str = "runs",
    quiet: bool = False,
    dry_run: bool = False,
    rerun_changed: bool = False,
) -> None:
    """Run a study (shared phases, then directions, then the final phase per arm, over seeds) from a study file.

    Usage: python -m testbed study --config study.yaml [--quiet true]. Paths in the file are relative to it; any
    key can be overridden on the command line, e.g. --seeds [0].

    Args:
        name: study name; runs go to ``<runs_dir>/<name>/``.
        final: the phase that forks into arms (``name``, ``config``, optional ``overrides``, and ``callbacks``
            that every arm gets before its own).
        arms: arm name -> ``config`` (partial fit config merged over the final phase's), ``overrides``, ``callbacks``.
        phases: shared phases in order, each computed once per seed; each starts from the previous checkpoint.
        directions: direction name -> witness/reference phases, layers, method, pooling; usable in callbacks as
            ``{directions.<name>}``.
        sweeps: sweep name -> ``grid`` of dotted keys to value lists (one arm per combination), optional ``base`` arm.
        seeds: seeds; each overrides ``seed_everything`` of every run (default ``[0]``).
        overlays: partial fit configs merged into every phase and arm (e.g. the Llama configuration of a study
            written for GPT-2); compose a variant as ``--config study.yaml --config variant.yaml``.
        report: a report spec (relative to the study file), copied into the study folder, where
            ``python -m testbed report <runs_dir>/<name>`` picks it up.
        runs_dir: root folder of all runs (relative to the working directory).
        quiet: no progress lines and no Lightning info messages (for CI).
        dry_run: write every run's config and print its command, but run nothing.
        rerun_changed: redo finished runs whose resolved config changed (default: refuse with an error).
    """
    if name is None or final is None:
        raise ConfigError("a study needs a 'name' and a 'final' phase: give the study file with --config study.yaml")
    study = validate_study(
        name, runs_dir, [0] if seeds is None else seeds, list(phases or []), dict(directions or {}), final,
        dict(arms or {}), dict(sweeps or {}), list(overlays or []), report,
    )
    try:
        run_study(study, quiet=quiet, dry_run=dry_run, rerun_changed=rerun_changed)
    except TestbedError:
        raise
    except Exception as exc:  # a crash inside a run: say where, keep the traceback
        print(f"testbed study: stopped by {type(exc).__name__}; finished runs are kept, re-run to resume",
              file=sys.stderr)
        raise
