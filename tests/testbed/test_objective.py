"""The one-sided reversion objective (block / push, absolute / relative, per example / mean) and projection blockers
that hold a set of constraints (per probe input or per cluster), including a constraint that degenerates."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from testbed.errors import ConfigError
from testbed.interventions import (
    DirectionSource,
    ObjectiveSettings,
    ProjectionSettings,
    RepresentationPenalty,
    ReversionObjective,
    UpdateProjectionBlocker,
)
from testbed.interventions.projection import probe_groups
from testbed.probes import ProbeSet
from tests.helpers.reversion import LAYER, FirstOrderRecorder, data, module_history, trainer
from toy_models.gravity import GravityMLP

history = pytest.fixture(scope="module", name="history")(module_history)


def fine_tune(history: Any, callbacks: list[pl.Callback], steps: int = 12) -> tuple[GravityMLP, float]:
    """(the fine-tuned model, the mean probe representation's final motion along v_rev at LAYER)."""
    aligned, path = history
    model = copy.deepcopy(aligned)
    pl.seed_everything(0)
    trainer(steps, callbacks).fit(model, data())
    probe = ProbeSet(data().probe_batch())
    vector = torch.load(path, weights_only=True)["vectors"][LAYER]
    drift = probe.mean(model, [LAYER])[LAYER] - probe.mean(aligned, [LAYER])[LAYER]
    return model, float(drift @ vector)


def objective(history: Any, **settings: Any) -> ReversionObjective:
    return ReversionObjective(DirectionSource(str(history[1]), layers=[LAYER]), ObjectiveSettings(**settings))


def test_block_opposes_and_push_favours_motion_toward_the_witness(history: Any) -> None:
    _, plain = fine_tune(history, [])
    _, blocked = fine_tune(history, [objective(history, strength=1.0)])
    _, pushed = fine_tune(history, [objective(history, strength=-1.0)])
    assert plain > 0.01  # the toy's fine-tune drifts toward the stand-in witness
    assert blocked < 0.5 * plain < plain < pushed
    _, control = fine_tune(history, [ReversionObjective(DirectionSource(str(history[1]), random=True, random_seed=3),
                                                        ObjectiveSettings(strength=1.0))])  # fmt: skip
    assert control > 0.5 * plain  # the same strength on a random direction does not block


def test_zero_strength_leaves_training_bit_identical(history: Any) -> None:
    plain, _ = fine_tune(history, [], steps=4)
    off, _ = fine_tune(history, [objective(history, strength=0.0)], steps=4)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), off.parameters(), strict=True))


@pytest.mark.parametrize("per_example", [True, False])
def test_relative_strength_sets_the_gradient_ratio(history: Any, per_example: bool) -> None:
    blocker = objective(history, strength=0.25, scale="relative", per_example=per_example, margin=1.0)
    seen: list[dict[str, float]] = []

    class Keep(pl.Callback):
        def on_before_optimizer_step(self, *args: Any) -> None:
            seen.append({k: float(v) for k, v in blocker._logs.items()})

    fine_tune(history, [blocker, Keep()], steps=3)
    ratios = [s["intervention/objective_grad_ratio"] for s in seen]
    assert ratios == pytest.approx([0.25] * 3, rel=1e-4)  # margin 1: the hinge acts from the first step
    assert all(0.0 < s["intervention/objective_active"] <= 1.0 for s in seen)


def test_absolute_strength_scales_the_objective_gradient(history: Any) -> None:
    weak, strong = (objective(history, strength=s, scale="absolute", margin=1.0) for s in (0.5, 1.0))
    grads = []
    for blocker in (weak, strong):
        fine_tune(history, [blocker], steps=1)
        grads.append(float(blocker._logs.get("intervention/objective_grad_ratio", 0.0) or 0.0))
    assert grads[1] == pytest.approx(2 * grads[0], rel=1e-5)


def test_per_example_hinge_counts_each_input(history: Any) -> None:
    aligned, _ = history
    blocker = objective(history, strength=1.0, per_example=True)
    model = copy.deepcopy(aligned)
    trainer(2, [blocker]).fit(model, data())
    assert blocker.reference_reps[LAYER].shape == (32, 16)  # one reference per probe input
    motion = blocker.motion(model)[LAYER].detach()
    assert motion.shape == (32,)
    value, active = blocker.objective(model)
    assert float(value.detach()) == pytest.approx(float(torch.relu(motion).mean()), rel=1e-6)
    assert float(active) == pytest.approx(float((motion > 0).double().mean()))
    state = blocker.state_dict()
    again = objective(history, strength=1.0)
    again.load_state_dict(state)
    again.restore(state)
    assert torch.equal(again.reference_reps[LAYER], state["reference_reps"][LAYER])


def test_objective_settings_are_validated() -> None:
    for bad, match in [({"strength": float("nan")}, "strength must be a finite number"),
                       ({"scale": "log"}, "objective scale"), ({"power": 3}, "objective power"),
                       ({"margin": -1.0}, "objective margin"), ({"per_example": "yes"}, "per_example")]:  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            ObjectiveSettings(**bad)
    assert ObjectiveSettings(strength=-2.0).sign == -1.0 and ObjectiveSettings(strength=0.0).sign == 0.0


def test_representation_penalty_is_the_absolute_mean_objective(history: Any) -> None:
    penalty = RepresentationPenalty(str(history[1]), strength=3.0, power=1)
    assert (penalty.settings.scale, penalty.settings.per_example, penalty.settings.power) == ("absolute", False, 1)
    with pytest.raises(ConfigError, match="strength must be a finite number > 0"):
        RepresentationPenalty(str(history[1]), strength=-1.0)


# ---- projection blockers holding a set of constraints ---------------------------------------------------------------
def recorded(history: Any, projection: ProjectionSettings | None, per_example: bool) -> list[float]:
    aligned, path = history
    recorder = FirstOrderRecorder(path, [LAYER], per_example=per_example)
    blockers = [] if projection is None else [UpdateProjectionBlocker(DirectionSource(str(path), layers=[LAYER]),
                                                                      projection)]  # fmt: skip
    pl.seed_everything(0)
    trainer(3, [recorder, *blockers]).fit(copy.deepcopy(aligned), data())
    return recorder.ratios


def test_mean_constraint_lets_single_inputs_move_and_example_constraints_do_not(history: Any) -> None:
    mean_rows = recorded(history, ProjectionSettings(), per_example=True)
    examples = recorded(history, ProjectionSettings(constraints="examples"), per_example=True)
    assert max(abs(r) for r in recorded(history, ProjectionSettings(), per_example=False)) < 1e-6
    assert max(abs(r) for r in mean_rows) > 1e-3  # the mean is held, single inputs still move along v_rev
    assert max(abs(r) for r in examples) < 1e-5  # every input is held to first order


def test_cluster_constraints_hold_each_cluster_mean(history: Any) -> None:
    probe = ProbeSet(data().probe_batch())
    features = probe.read(history[0], [LAYER])[LAYER]
    groups = probe_groups(probe, "clusters", 4, features)
    assert 1 <= len(groups) <= 4 and sum(g.size for g in groups) == probe.size
    assert [g.fingerprint for g in groups] == [g.fingerprint for g in probe_groups(probe, "clusters", 4, features)]
    blocker = UpdateProjectionBlocker(DirectionSource(str(history[1]), layers=[LAYER]),
                                      ProjectionSettings(constraints="clusters", rank=4))
    trainer(2, [blocker]).fit(copy.deepcopy(history[0]), data())
    assert blocker.jacobians.shape[0] == len(blocker.groups) <= 4
    assert 1 <= blocker._rank <= blocker.jacobians.shape[0]


def test_a_degenerate_constraint_says_so(history: Any, tmp_path: Path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = copy.deepcopy(history[0])
    for p in model.blocks[0].parameters():  # blocks.0.hidden no longer depends on what trains: J = 0
        p.requires_grad_(False)
    blocker = UpdateProjectionBlocker(DirectionSource(str(history[1]), layers=["blocks.0.hidden"]))
    logger = TensorBoardLogger(str(tmp_path), name="d", version="v")
    with pytest.warns(UserWarning, match="constraint degenerated at step 0.*nothing is removed"):
        trainer(2, [blocker], logger=logger, log_every_n_steps=1).fit(model, data())
    events = EventAccumulator(str(tmp_path / "d" / "v")).Reload()
    assert [e.value for e in events.Scalars("intervention/constraint_rank")] == [0.0, 0.0]
    assert [e.value for e in events.Scalars("intervention/update_removed_norm")] == [0.0, 0.0]


def test_projection_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="constraints must be one of"):
        ProjectionSettings(constraints="all")
    with pytest.raises(ConfigError, match="rank must be a positive integer"):
        ProjectionSettings(constraints="clusters", rank=0)
