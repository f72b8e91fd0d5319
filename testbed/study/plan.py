"""The plan of a study: every run's fully resolved fit config, worked out before the first run starts.

Per seed: each shared phase (starting from the previous phase's last checkpoint through ``model.init_args.init_from``),
then each direction (from two shared phases' checkpoints), then the final phase once per arm. An arm's config is the
final phase's config with its overrides, the arm's partial config and overrides on top, then the final phase's
callbacks followed by the arm's. Each item carries a fingerprint of everything its result depends on, so a finished
run can be told apart from one whose config has changed since. A ``matched_null`` direction also reads the other
seeds' checkpoints, so in a study that has one every seed's shared phases run first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError
from testbed.study import layout
from testbed.study.config_algebra import apply_overrides, deep_merge, load_yaml_mapping, placeholders_in, substitute
from testbed.study.layout import RunKey
from testbed.study.spec import ArmSpec, DirectionSpec, PhaseSpec, Study
from testbed.study.tensorboard import scalar_hparams

__all__ = ["Run", "DirectionRun", "Plan", "build_plan", "fingerprint"]


@dataclass
class Run:
    """One fit run of the study (a shared phase or an arm, for one seed), fully resolved before anything runs.

    Attributes:
        phase: the phase it runs.
        arm: the arm, or ``None`` for a shared phase.
        key: its place in the layout (``testbed.study.layout``).
        run_dir: its folder.
        config: the resolved fit config.
        fingerprint: hash of the config and of everything it starts from.
        hparams: what TensorBoard's HParams view shows for it.
        index: its position in the plan (1-based), for progress lines.
        total: the number of items in the plan.
    """

    phase: str
    arm: str | None
    seed: int
    key: RunKey
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
        return layout.checkpoint_file(self.run_dir)

    @property
    def marker(self) -> Path:
        return layout.done_file(self.run_dir)

    @property
    def config_file(self) -> Path:
        return layout.run_config_file(self.run_dir)


@dataclass
class DirectionRun:
    """One direction file for one seed, computed from two shared phases' checkpoints (and, for a matched null, from
    the other seeds' pairs in ``others``)."""

    name: str
    spec: DirectionSpec
    seed: int
    out: Path
    marker: Path
    witness: Run
    reference: Run
    fingerprint: str
    index: int = 0
    total: int = 0
    others: list[tuple[Run, Run]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"direction {self.name!r} seed {self.seed}"


@dataclass
class Plan:
    """A study and its items in the order they run."""

    study: Study
    items: list[Run | DirectionRun] = field(default_factory=list)

    @property
    def runs(self) -> list[Run]:
        return [item for item in self.items if isinstance(item, Run)]


def fingerprint(payload: Any) -> str:
    """A short stable hash of a JSON-able payload (key order ignored)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _logger(study: Study, key: RunKey) -> dict[str, Any]:
    return {
        "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
        "init_args": {
            "save_dir": str(study.runs_dir), "name": study.name, "version": key.version, "default_hp_metric": False
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
    """Study/phase/arm/seed, the model's and data's scalar settings (``model.sharpness``) and any other numeric
    override (``trainer.max_steps``)."""
    sections = {key: config[key] for key in ("model", "data") if isinstance(config.get(key), dict)}
    settings = {k: v for k, v in scalar_hparams(sections).items() if not k.endswith(".init_from")}
    others = {k: v for k, v in overrides.items() if k.split(".")[0] not in sections and isinstance(v, (int, float))}
    return {**labels, **settings, **others}


def _with_overlays(study: Study, config: Path, owner: str) -> dict[str, Any]:
    """A phase's config with the study's overlays merged in, in order."""
    merged = load_yaml_mapping(config, owner)
    for overlay in study.overlays:
        merged = deep_merge(merged, load_yaml_mapping(overlay, f"overlay {overlay.name}"))
    return merged


def _phase_run(study: Study, phase: PhaseSpec, seed: int, prev: Run | None, table: dict[str, Any]) -> Run:
    owner = f"phase {phase.name!r}"
    key = RunKey.of_shared(phase.name, seed)
    run_dir = layout.check_inside(study.root, layout.run_dir(study.root, key), owner)
    merged = apply_overrides(_with_overlays(study, Path(phase.config.absolute), owner), phase.overrides, owner)
    table = {**table, "seed": seed, "run_dir": str(run_dir)}
    config = _resolve(merged, owner, seed, run_dir, prev.checkpoint if prev else None, table)
    config = _with_trainer(config, _logger(study, key), [])
    fp = fingerprint([config, prev.fingerprint if prev else None])
    hp = _hparams(config, phase.overrides, study=study.name, phase=phase.name, arm=layout.SHARED, seed=seed)
    return Run(phase.name, None, seed, key, run_dir, config, fp, hp)


def _arm_run(
    study: Study, arm_name: str, arm: ArmSpec, seed: int, prev: Run | None, table: dict[str, Any], deps: list[str]
) -> Run:
    final = study.final
    owner = f"phase {final.name!r} arm {arm_name!r}"
    key = RunKey(arm_name, seed)
    run_dir = layout.check_inside(study.root, layout.run_dir(study.root, key), owner)
    merged = _with_overlays(study, Path(final.config.absolute), f"phase {final.name!r}")
    merged = apply_overrides(merged, final.overrides, owner)
    if arm.config is not None:
        merged = deep_merge(merged, load_yaml_mapping(Path(arm.config.absolute), owner))
    merged = apply_overrides(merged, arm.overrides, owner)
    table = {**table, "seed": seed, "run_dir": str(run_dir)}
    config = _resolve(merged, owner, seed, run_dir, prev.checkpoint if prev else None, table)
    callbacks = substitute([*final.callbacks, *arm.callbacks], table)
    config = _with_trainer(config, _logger(study, key), callbacks)
    fp = fingerprint([config, deps])
    overrides = {**final.overrides, **study.arm_values.get(arm_name, {})}
    hp = _hparams(config, overrides, study=study.name, phase=final.name, arm=arm_name, seed=seed)
    return Run(final.name, arm_name, seed, key, run_dir, config, fp, hp)


def build_plan(study: Study) -> Plan:
    """Resolve every run of the study.

    Raises:
        ConfigError: naming the phase or arm whose config cannot be resolved, before anything runs.
    """
    plan = Plan(study)
    shared: dict[int, dict[str, Run]] = {}
    tables: dict[int, dict[str, Any]] = {}
    for seed in study.seeds:
        prev: Run | None = None
        shared[seed], tables[seed] = {}, {}
        for phase in study.phases:
            prev = _phase_run(study, phase, seed, prev, tables[seed])
            shared[seed][phase.name] = prev
            tables[seed][f"phases.{phase.name}.ckpt"] = str(prev.checkpoint)
    phases = {seed: list(runs.values()) for seed, runs in shared.items()}
    cross = any(spec.kind == "matched_null" for spec in study.directions.values())
    if cross:  # every seed's checkpoints exist before any matched null is computed
        plan.items.extend(run for seed in study.seeds for run in phases[seed])
    for seed in study.seeds:
        if not cross:
            plan.items.extend(phases[seed])
        table = tables[seed]
        prev = phases[seed][-1] if phases[seed] else None
        deps: list[str] = [prev.fingerprint] if prev else []
        for name, spec in study.directions.items():
            out = layout.check_inside(study.root, layout.direction_file(study.root, name, seed), f"direction {name!r}")
            marker = layout.direction_done_file(study.root, name, seed)
            witness, reference = shared[seed][spec.witness], shared[seed][spec.reference]
            others = [(shared[s][spec.witness], shared[s][spec.reference]) for s in study.seeds if s != seed
                      ] if spec.kind == "matched_null" else []  # fmt: skip
            settings = {k: v for k, v in vars(spec).items() if v is not None}
            fp = fingerprint([settings, witness.fingerprint, reference.fingerprint]
                             + ([[(w.fingerprint, r.fingerprint) for w, r in others]] if others else []))
            plan.items.append(DirectionRun(name, spec, seed, out, marker, witness, reference, fp, others=others))
            table[f"directions.{name}"] = str(out)
            deps.append(fp)
        for arm_name, arm in study.arms.items():
            plan.items.append(_arm_run(study, arm_name, arm, seed, prev, table, deps))
    for i, item in enumerate(plan.items, start=1):
        item.index, item.total = i, len(plan.items)
    return plan
