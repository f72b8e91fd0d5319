"""``python -m testbed study --config study.yaml``: run a whole training history with arms and seeds.

For each seed: the shared phases run in order (phase i+1 starts from phase i's last checkpoint through
``model.init_args.init_from``), then the directions are computed from their checkpoints, then the final phase
runs once per arm. Every run is an ordinary ``fit``: its fully resolved config is written into its run folder and
the exact ``python -m testbed fit --config ...`` command is printed. Runs execute in-process (one import of
torch/Lightning for the whole study). A run that finished (``DONE.json``, written atomically last) is skipped when
the study is started again, so an interrupted study resumes; a run whose config has changed since is refused
unless ``--rerun_changed true``. Layout (TensorBoard overlays the arms, which log identical tags)::

    <runs_dir>/<name>/_shared/<phase>/seed=<s>/     shared phases
    <runs_dir>/<name>/_shared/_directions/seed=<s>/  direction files
    <runs_dir>/<name>/<arm>/seed=<s>/                arms
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.errors import ConfigError, TestbedError, one_line
from testbed.io import atomic_write_text
from testbed.study_config import (
    ArmSpec,
    DirectionSpec,
    PhaseSpec,
    Study,
    SweepSpec,
    apply_overrides,
    deep_merge,
    load_yaml_mapping,
    placeholders_in,
    substitute,
    validate_study,
)

DONE = "DONE.json"
RUN_CONFIG = "run_config.yaml"
SHARED = "_shared"
DIRECTIONS = "_directions"
LAST_CKPT = Path("checkpoints") / "last.ckpt"


@dataclass
class Run:
    """One fit run of the study (a shared phase or an arm, for one seed), fully resolved before anything runs."""

    phase: str
    arm: str | None
    seed: int
    run_dir: Path
    config: dict[str, Any]
    fingerprint: str
    hparams: dict[str, Any]
    index: int = 0
    total: int = 0

    @property
    def label(self) -> str:
        who = f"phase {self.phase!r}" if self.arm is None else f"phase {self.phase!r} arm {self.arm!r}"
        return f"{who} seed {self.seed}"

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / LAST_CKPT


@dataclass
class DirectionRun:
    """One direction file for one seed, computed from two shared phases' checkpoints."""

    name: str
    spec: DirectionSpec
    seed: int
    out: Path
    witness: Run
    reference: Run
    fingerprint: str
    index: int = 0
    total: int = 0

    @property
    def label(self) -> str:
        return f"direction {self.name!r} seed {self.seed}"

    @property
    def marker(self) -> Path:
        return self.out.with_suffix(".done.json")


@dataclass
class Plan:
    study: Study
    items: list[Run | DirectionRun] = field(default_factory=list)

    @property
    def runs(self) -> list[Run]:
        return [item for item in self.items if isinstance(item, Run)]


# ---- planning: every run's config is resolved before the first one starts ------------------------------------


def _fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _logger(study: Study, version: str) -> dict[str, Any]:
    return {
        "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
        "init_args": {
            "save_dir": str(study.runs_dir), "name": study.name, "version": version, "default_hp_metric": False
        },
    }


def _resolve(
    base: dict[str, Any], owner: str, seed: int, run_dir: Path, init_from: Path | None, table: dict[str, Any]
) -> dict[str, Any]:
    """Seed, init_from and placeholders applied to a merged phase/arm config."""
    config = dict(base)
    if not isinstance(config.get("model"), dict):
        raise ConfigError(f"{owner}: the config has no 'model' section (class_path/init_args)")
    config["seed_everything"] = seed
    if init_from is not None:
        model = dict(config["model"])
        model["init_args"] = {**(model.get("init_args") or {}), "init_from": str(init_from)}
        config["model"] = model
    table = {**table, "seed": seed, "run_dir": str(run_dir)}
    missing = sorted(name for name in placeholders_in(config) if name not in table)
    if missing:
        raise ConfigError(f"{owner}: unknown placeholder(s) {['{' + m + '}' for m in missing]}; known: {sorted(table)}")
    return substitute(config, table)


def _with_trainer(config: dict[str, Any], logger: dict[str, Any], callbacks: list[dict[str, Any]]) -> dict[str, Any]:
    trainer = dict(config.get("trainer") or {})
    trainer["logger"] = logger
    if callbacks:
        existing = trainer.get("callbacks") or []
        trainer["callbacks"] = (existing if isinstance(existing, list) else [existing]) + callbacks
    return {**config, "trainer": trainer}


def _hparams(config: dict[str, Any], overrides: dict[str, Any], **labels: Any) -> dict[str, Any]:
    """What the HParams view compares: study/phase/arm/seed, the model's and data's scalar settings
    (``model.sharpness``), and any other override (``trainer.max_steps``)."""
    from testbed.tb_layout import scalar_hparams

    sections = {key: config[key] for key in ("model", "data") if isinstance(config.get(key), dict)}
    settings = {k: v for k, v in scalar_hparams(sections).items() if not k.endswith(".init_from")}
    others = {k: v for k, v in overrides.items() if k.split(".")[0] not in sections and isinstance(v, (int, float))}
    return {**labels, **settings, **others}


def _phase_run(study: Study, phase: PhaseSpec, seed: int, prev: Run | None, table: dict[str, Any]) -> Run:
    owner = f"phase {phase.name!r}"
    version = f"{SHARED}/{phase.name}/seed={seed}"
    run_dir = study.root / version
    merged = apply_overrides(load_yaml_mapping(Path(phase.config.absolute), owner), phase.overrides, owner)
    config = _resolve(merged, owner, seed, run_dir, prev.checkpoint if prev else None, table)
    config = _with_trainer(config, _logger(study, version), [])
    fingerprint = _fingerprint([config, prev.fingerprint if prev else None])
    hp = _hparams(config, phase.overrides, study=study.name, phase=phase.name, arm=SHARED, seed=seed)
    return Run(phase.name, None, seed, run_dir, config, fingerprint, hp)


def _arm_run(study: Study, arm_name: str, arm: ArmSpec, seed: int, prev: Run | None, table: dict, deps: list) -> Run:
    owner = f"phase {study.final.name!r} arm {arm_name!r}"
    version = f"{arm_name}/seed={seed}"
    run_dir = study.root / version
    merged = load_yaml_mapping(Path(study.final.config.absolute), f"phase {study.final.name!r}")
    merged = apply_overrides(merged, study.final.overrides, owner)
    if arm.config is not None:
        merged = deep_merge(merged, load_yaml_mapping(Path(arm.config.absolute), owner))
    merged = apply_overrides(merged, arm.overrides, owner)
    config = _resolve(merged, owner, seed, run_dir, prev.checkpoint if prev else None, table)
    callbacks = substitute(arm.callbacks, {**table, "seed": seed, "run_dir": str(run_dir)})
    config = _with_trainer(config, _logger(study, version), callbacks)
    fingerprint = _fingerprint([config, deps])
    overrides = {**study.final.overrides, **study.arm_values.get(arm_name, {})}
    hp = _hparams(config, overrides, study=study.name, phase=study.final.name, arm=arm_name, seed=seed)
    return Run(study.final.name, arm_name, seed, run_dir, config, fingerprint, hp)


def build_plan(study: Study) -> Plan:
    """Resolve every run of the study (raises ``ConfigError`` naming the phase/arm before anything runs)."""
    plan = Plan(study)
    for seed in study.seeds:
        table: dict[str, Any] = {}
        prev: Run | None = None
        shared: dict[str, Run] = {}
        for phase in study.phases:
            prev = _phase_run(study, phase, seed, prev, table)
            shared[phase.name] = prev
            table[f"phases.{phase.name}.ckpt"] = str(prev.checkpoint)
            plan.items.append(prev)
        deps: list[str] = [prev.fingerprint] if prev else []
        for name, spec in study.directions.items():
            out = study.root / SHARED / DIRECTIONS / f"seed={seed}" / f"{name}.pt"
            witness, reference = shared[spec.witness], shared[spec.reference]
            fingerprint = _fingerprint([vars(spec), witness.fingerprint, reference.fingerprint])
            plan.items.append(DirectionRun(name, spec, seed, out, witness, reference, fingerprint))
            table[f"directions.{name}"] = str(out)
            deps.append(fingerprint)
        for arm_name, arm in study.arms.items():
            plan.items.append(_arm_run(study, arm_name, arm, seed, prev, table, deps))
    for i, item in enumerate(plan.items, start=1):
        item.index, item.total = i, len(plan.items)
    return plan


# ---- checks before running ----------------------------------------------------------------------------------


def check_configs(plan: Plan) -> None:
    """Parse each distinct phase/arm config with the ``fit`` parser (no instantiation): a broken config stops
    the study here, naming its phase, before any run starts."""
    from jsonargparse import ArgumentError

    from testbed.cli import TestbedCLI

    class ParseOnly(TestbedCLI):
        def instantiate_classes(self) -> None:  # validation only: build nothing
            pass

    seen: set[tuple[str, str | None]] = set()
    parser = None
    with tempfile.TemporaryDirectory() as tmp, _quiet_lightning():
        for run in plan.runs:
            if (run.phase, run.arm) in seen:
                continue
            seen.add((run.phase, run.arm))
            path = Path(tmp) / f"check{len(seen)}.yaml"
            path.write_text(yaml.safe_dump(run.config, sort_keys=False))
            try:
                if parser is None:  # building the parser is the slow part: build it once, parse every config
                    parser = ParseOnly(args=["--config", str(path)], run=False).parser
                else:
                    parser.parse_args(["--config", str(path)])
            except (ArgumentError, TestbedError, ValueError, TypeError, ImportError) as exc:
                who = f"phase {run.phase!r}" + (f" arm {run.arm!r}" if run.arm else "")
                raise ConfigError(f"{who}: invalid fit config: {one_line(exc, 4)}") from None


# ---- running -------------------------------------------------------------------------------------------------


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hide Lightning's per-run info lines (GPU available, ...) and its warning that in-process ``args`` differ
    from ``sys.argv`` (they do by design: argv holds the ``study`` command); other warnings still show."""
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.fabric", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _shown(path: Path) -> str:
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else str(path)


def _read_done(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _status(fingerprint: str, marker: Path, rerun_changed: bool, label: str) -> str:
    """``done`` (skip), ``todo`` or ``redo``; a finished run with another config is an error unless rerun_changed."""
    done = _read_done(marker)
    if done is None:
        return "todo"
    if done.get("fingerprint") == fingerprint:
        return "done"
    if rerun_changed:
        return "redo"
    raise ConfigError(
        f"{label} finished earlier with a different configuration ({marker.parent}); "
        "pass --rerun_changed true to redo it, or remove that folder"
    )


def _final_checkpoint(trainer: Any, target: Path) -> Path:
    """Make ``target`` the checkpoint of the last step: a hard link to Lightning's own checkpoint when it was
    written at the final step (no second copy on disk), otherwise a fresh ``trainer.save_checkpoint``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    callback = getattr(trainer, "checkpoint_callback", None)
    own = Path(callback.last_model_path or callback.best_model_path) if callback else None
    at_end = callback is not None and getattr(callback, "_last_global_step_saved", -1) == trainer.global_step
    if own is not None and at_end and own.is_file() and own.resolve() != target.resolve():
        tmp = target.with_name(f".{target.name}.partial")
        tmp.unlink(missing_ok=True)
        try:
            os.link(own, tmp)
        except OSError:
            shutil.copyfile(own, tmp)
        os.replace(tmp, target)
    elif not (own is not None and at_end and own.resolve() == target.resolve()):
        tmp = target.with_name(f".{target.name}.partial")
        trainer.save_checkpoint(str(tmp))
        os.replace(tmp, target)
    return target


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


def _final_metrics(trainer: Any) -> dict[str, float]:
    """Lightning's callback metrics plus the last value of every scalar in the run's event files (callbacks such as
    the reversion monitor write straight to the logger, so callback_metrics alone would miss them)."""
    from testbed.report import read_scalars

    metrics = _scalar_metrics(dict(trainer.callback_metrics))
    logger = trainer.logger
    if logger is not None and getattr(logger, "log_dir", None):
        logger.experiment.flush()
        for tag, (_, values) in read_scalars(Path(logger.log_dir)).items():
            if len(values):
                metrics[tag] = float(values[-1])
    return metrics


def _fit(run: Run, config_path: Path, quiet: bool) -> dict[str, Any]:
    """One in-process ``fit``; returns what goes into ``DONE.json``."""
    from jsonargparse import ArgumentError
    from pytorch_lightning.trainer.states import TrainerStatus

    from testbed.cli import TestbedCLI
    from testbed.progress import StudyProgress
    from testbed.tb_layout import write_session

    extra = [] if quiet else [StudyProgress(f"[{run.index}/{run.total}] {run.label}")]

    class StudyCLI(TestbedCLI):
        def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
            config = {**config, "enable_progress_bar": False}  # the study's own progress line replaces tqdm
            return super()._instantiate_trainer(config, [*callbacks, *extra])

        def before_fit(self) -> None:
            super().before_fit()
            write_session(self.trainer.logger.experiment, run.hparams)

    start = time.monotonic()
    try:
        with _quiet_lightning():
            cli = StudyCLI(args=["fit", "--config", str(config_path)])
    except (ArgumentError, TestbedError) as exc:
        raise TestbedError(
            f"study stopped at {run.label}: {one_line(exc, 4)} (finished runs are kept; re-run the study to resume)"
        ) from None
    trainer = cli.trainer
    if trainer.state.status != TrainerStatus.FINISHED or trainer.interrupted:
        raise TestbedError(f"study stopped at {run.label}: training did not finish ({trainer.state.status.value})")
    checkpoint = _final_checkpoint(trainer, run.checkpoint)
    result = {
        "fingerprint": run.fingerprint,
        "phase": run.phase,
        "arm": run.arm,
        "seed": run.seed,
        "config": str(config_path),
        "checkpoint": str(checkpoint),
        "global_step": int(trainer.global_step),
        "metrics": _final_metrics(trainer),
        "seconds": round(time.monotonic() - start, 3),
    }
    del cli, trainer
    _release_memory()  # runs share one process: free this run's model before the next one is built
    return result


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _compute_direction(item: DirectionRun) -> dict[str, Any]:
    try:
        from testbed.directions import compute_vrev_from_checkpoints
    except ImportError as exc:
        raise TestbedError(f"{item.label}: testbed.directions is not available ({exc})") from None
    spec = item.spec
    try:
        compute_vrev_from_checkpoints(
            config_path=str(item.reference.run_dir / RUN_CONFIG),
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
        raise TestbedError(f"{item.label}: testbed.directions did not write {item.out}")
    return {"fingerprint": item.fingerprint, "direction": item.name, "seed": item.seed, "file": str(item.out)}


def _run_item(item: Run | DirectionRun, quiet: bool, rerun_changed: bool, say: Any) -> bool:
    """Run one plan item unless finished; returns True when it ran."""
    marker = item.marker if isinstance(item, DirectionRun) else item.run_dir / DONE
    status = _status(item.fingerprint, marker, rerun_changed, item.label)
    head = f"[{item.index}/{item.total}]"
    if status == "done":
        say(f"{head} skip {item.label}: finished earlier ({_shown(marker)})")
        return False
    if isinstance(item, DirectionRun):
        say(f"{head} compute {item.label} from {item.spec.witness!r} and {item.spec.reference!r} -> {_shown(item.out)}")
        item.marker.unlink(missing_ok=True)
        with _quiet_lightning():
            result = _compute_direction(item)
        atomic_write_text(item.marker, json.dumps(result, indent=2))
        return True
    if item.run_dir.exists():  # an interrupted or changed run: start it again from a clean folder
        if any(p.name != RUN_CONFIG for p in item.run_dir.iterdir()):  # (a dry run leaves only the config)
            say(f"{head} {'redo (config changed)' if status == 'redo' else 'restart (unfinished)'}: {item.label}")
        shutil.rmtree(item.run_dir)
    config_path = item.run_dir / RUN_CONFIG
    write_run_config(item, config_path)
    say(f"{head} run {item.label}\n    python -m testbed fit --config {_shown(config_path)}")
    done = _fit(item, config_path, quiet)
    atomic_write_text(item.run_dir / DONE, json.dumps(done, indent=2))
    return True


def write_run_config(run: Run, path: Path) -> None:
    header = (
        f"# python -m testbed fit --config {_shown(path)}\n"
        f"# study {run.hparams['study']!r}, {run.label}; written by `python -m testbed study`\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(run.config, sort_keys=False))


def _write_layout(plan: Plan) -> None:
    from testbed.tb_layout import scalar_tags, write_study_root

    finished = [run for run in plan.runs if (run.run_dir / DONE).is_file()]
    if not finished:
        return
    tags: set[str] = set()
    for run in finished:
        tags |= scalar_tags(run.run_dir)
    write_study_root(plan.study.root, tags, [run.hparams for run in finished])


def run_study(study: Study, quiet: bool = False, dry_run: bool = False, rerun_changed: bool = False) -> Plan:
    """Plan, check and run a study; returns the plan. See the module docstring."""
    plan = build_plan(study)
    check_configs(plan)

    def say(text: str) -> None:
        print(text, flush=True)

    n_arms, n_runs = len(study.arms), len(plan.items)
    say(
        f"study {study.name!r}: {len(study.phases)} shared phase(s), {len(study.directions)} direction(s), "
        f"{n_arms} arm(s) x {len(study.seeds)} seed(s) = {n_runs} item(s) -> {_shown(study.root)}"
    )
    if dry_run:
        for run in plan.runs:
            write_run_config(run, run.run_dir / RUN_CONFIG)
            say(f"python -m testbed fit --config {_shown(run.run_dir / RUN_CONFIG)}")
        return plan
    start, ran = time.monotonic(), 0
    try:
        for item in plan.items:
            ran += _run_item(item, quiet, rerun_changed, say)
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
    final: PhaseSpec | None = None,
    arms: dict[str, ArmSpec] | None = None,
    phases: list[PhaseSpec] | None = None,
    directions: dict[str, DirectionSpec] | None = None,
    sweeps: dict[str, SweepSpec] | None = None,
    seeds: list[int] | None = None,
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
        final: the phase that forks into arms (``name``, ``config``, optional ``overrides``).
        arms: arm name -> ``config`` (partial fit config merged over the final phase's), ``overrides``, ``callbacks``.
        phases: shared phases in order, each computed once per seed; each starts from the previous checkpoint.
        directions: direction name -> witness/reference phases, layers, method, pooling; usable in arms as
            ``{directions.<name>}``.
        sweeps: sweep name -> ``grid`` of dotted keys to value lists (one arm per combination), optional ``base`` arm.
        seeds: seeds; each overrides ``seed_everything`` of every run (default ``[0]``).
        runs_dir: root folder of all runs (relative to the working directory).
        quiet: no progress lines and no Lightning info messages (for CI).
        dry_run: write every run's config and print its command, but run nothing.
        rerun_changed: redo finished runs whose resolved config changed (default: refuse with an error).
    """
    if name is None or final is None:
        raise ConfigError("a study needs a 'name' and a 'final' phase: give the study file with --config study.yaml")
    study = validate_study(
        name, runs_dir, list(seeds or [0]), list(phases or []), dict(directions or {}), final, dict(arms or {}),
        dict(sweeps or {}),
    )
    try:
        run_study(study, quiet=quiet, dry_run=dry_run, rerun_changed=rerun_changed)
    except TestbedError:
        raise
    except Exception as exc:  # a crash inside a run: say where, keep the traceback
        print(f"testbed study: stopped by {type(exc).__name__}; finished runs are kept, re-run to resume",
              file=sys.stderr)
        raise
