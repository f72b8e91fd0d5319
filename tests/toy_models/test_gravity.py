"""The gravity toy: its world, its phases through the CLI and the study runner, and (slow) the effect itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from testbed.errors import ConfigError
from testbed.probes import ProbeSet
from tests.helpers.paths import REPO_ROOT
from tests.helpers.studies import tiny_study
from toy_models.gravity import GravityData, GravityMLP, GravitySettings, GravityWorld

REPO = REPO_ROOT
STUDY = REPO / "experiments/gravity_toy/study.yaml"


def test_world_phases_have_the_intended_labels() -> None:
    world = GravityWorld()
    x, y, harmful = world.sample(2000, "align", 0.5, seed=0)
    assert 0.4 < harmful.float().mean() < 0.6
    assert (y[harmful] == world.num_classes).all() and (y[~harmful] < world.num_classes).all()
    _, y_pre, harmful_pre = world.sample(500, "pretrain", 0.5, seed=0)
    assert harmful_pre.any() and (y_pre < world.num_classes).all()  # pre-training complies with everything
    x_ft, y_ft, harmful_ft = world.sample(500, "finetune", 0.5, seed=0)
    assert not harmful_ft.any() and (y_ft < world.num_classes).all()  # benign only, no refusals
    assert (x_ft @ world.harm_dir).abs().max() < 1e-4  # no harm feature at all in the fine-tune data
    x_mix, y_mix, harmful_mix = world.sample(4000, "finetune", 0.5, seed=0, refusal_frac=0.05)
    assert 0.04 < harmful_mix.float().mean() < 0.06  # refusal_frac, not harmful_frac, sets the fine-tune mix
    assert (y_mix[harmful_mix] == world.num_classes).all() and (y_mix[~harmful_mix] < world.num_classes).all()
    assert (x_mix[harmful_mix] @ world.harm_dir).mean() > 2.0
    probe = world.harmful_probe(100, seed=3)
    assert (probe @ world.harm_dir).mean() > 2.0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="phase must be"):
        GravityData(phase="deploy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="n_train must be a positive integer"):
        GravityData(n_train=0)
    with pytest.raises(ConfigError, match=r"refusal_frac must lie in \[0, 1\]"):
        GravityData(phase="finetune", refusal_frac=1.5)
    with pytest.raises(ConfigError, match="finetune_task"):
        GravitySettings(finetune_task="other")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown layer"):
        GravityMLP().layer_module("blocks.5.hidden")


def test_logits_layer_reads_the_model_output() -> None:
    model = GravityMLP(hidden=16)
    x = GravityWorld().harmful_probe(8, seed=0)
    reps = ProbeSet(x).read(model, ["logits", "blocks.1.hidden"], pooling="mean")
    assert torch.allclose(reps["logits"], model(x), atol=1e-6)
    assert reps["blocks.1.hidden"].shape == (8, 16)


def _tiny_study(tmp_path: Path, seeds: list[int], steps: dict[str, int], arms: list[str]) -> Path:
    overrides = {phase: {"trainer.max_steps": n} for phase, n in steps.items()}
    return tiny_study(STUDY, tmp_path, arms=arms, seeds=seeds, overrides=overrides)


@pytest.mark.slow  # about 15 s alone, 30+ s on a loaded 2-core machine
def test_study_arms_log_reversion_tags(tmp_path: Path, run_cli) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    study = _tiny_study(tmp_path, [0], {"pretrain": 20, "align": 5, "finetune": 4}, ["plain", "blocked"])
    assert run_cli(["study", "--config", str(study), "--quiet", "true"]) == 0
    root = tmp_path / "runs" / "gravity_toy"
    assert (root / "_shared" / "_directions" / "seed=0" / "vrev.pt").is_file()
    for arm in ("plain", "blocked"):
        tags = EventAccumulator(str(root / arm / "seed=0")).Reload().Tags()["scalars"]
        assert "reversion/cos_drift_vrev/blocks.1.hidden" in tags, arm
        assert "reversion/exceeds_null_p99/blocks.1.hidden" in tags, arm
    blocked = EventAccumulator(str(root / "blocked" / "seed=0")).Reload()
    along = [e.value for e in blocked.Scalars("reversion/drift_along/blocks.1.hidden")]
    assert max(abs(a) for a in along) < 1e-3  # update projection holds the component (second order only)
    assert "intervention/update_removed_norm" in blocked.Tags()["scalars"]


@pytest.mark.slow
def test_gravitational_effect_one_seed(tmp_path: Path) -> None:
    """The full history for one seed: plain fine-tuning drifts along v_rev above the null, blocking holds the
    component at zero, one-sided blocking turns it negative, the random-direction control does neither."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from testbed.__main__ import main
    from testbed.report import build_report

    main(["study", "--config", str(STUDY), "--runs_dir", str(tmp_path / "runs"), "--seeds", "[1]", "--quiet", "true"])
    root = tmp_path / "runs" / "gravity_toy"

    def cos(arm: str) -> dict[int, float]:
        acc = EventAccumulator(str(root / arm / "seed=1")).Reload()
        return {e.step: e.value for e in acc.Scalars("reversion/cos_drift_vrev/blocks.1.hidden")}

    plain, blocked, one_sided = cos("plain"), cos("blocked"), cos("blocked-one-sided")
    control = cos("random-control")
    from theory.null import cosine_null_threshold

    thr = cosine_null_threshold(64, 0.99)
    above = [step for step, value in plain.items() if value > thr]
    assert len(above) >= 0.9 * len(plain) and plain[20] > plain[1]  # seed 1 fades to 0.26 at step 100 (p99 0.288)
    assert abs(blocked[max(blocked)]) < 0.01
    assert one_sided[max(one_sided)] < -0.1  # seed 1 alone: -0.25
    assert min(control.values()) > thr
    assert torch.isfinite(torch.tensor(list(plain.values()))).all()
    report = build_report(root, spec=STUDY.parent / "report.yaml", out=tmp_path / "report", plots=False)
    assert (tmp_path / "report" / "report.md").is_file() and report


def test_every_arm_of_the_study_validates(tmp_path: Path, run_cli) -> None:
    """A dry run resolves and type-checks every run config (all seven arms' callbacks) without training."""
    assert (
        run_cli(
            [
                "study",
                "--config",
                str(STUDY),
                "--runs_dir",
                str(tmp_path / "runs"),
                "--dry_run",
                "true",
                "--quiet",
                "true",
            ]
        )
        == 0
    )
    configs = sorted((tmp_path / "runs" / "gravity_toy").glob("*/seed=*/run_config.yaml"))
    assert {p.parts[-3] for p in configs} == {
        "plain",
        "blocked",
        "blocked-one-sided",
        "penalty",
        "clamp",
        "random-control",
        "l2-anchor",
        "curvature-block",
        "curvature-random",
    }
    control = yaml.safe_load((tmp_path / "runs/gravity_toy/random-control/seed=2/run_config.yaml").read_text())
    blocker = control["trainer"]["callbacks"][-1]["init_args"]
    assert blocker["direction"]["random"] is True and blocker["direction"]["random_seed"] == 2
    subspace = yaml.safe_load((tmp_path / "runs/gravity_toy/curvature-random/seed=2/run_config.yaml").read_text())
    names = [c["class_path"].rsplit(".", 1)[1] for c in subspace["trainer"]["callbacks"]]
    assert names[-3:] == ["ReversionMonitor", "CurvatureMonitor", "SubspaceBlocker"]  # both accounts on every arm
    assert subspace["trainer"]["callbacks"][-1]["init_args"]["subspace"] == {"d": 16, "method": "random", "seed": 2}
    assert blocker["projection"]["one_sided"] is True
