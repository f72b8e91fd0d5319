"""The curvature callbacks on the gravity toy: the monitor leaves training alone and records S with the run, the
blocker holds the motion in S at round-off under AdamW (its random control in its own subspace), one-sided blocking,
shared estimation, and an exact resume."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from testbed.checkpoint_io import ResumableRng
from testbed.curvature import Subspace, SubspaceSettings
from testbed.errors import ConfigError
from testbed.interventions import CurvatureMonitor, SubspaceBlocker
from testbed.interventions.flat import flatten, trainable_parameters
from testbed.optim import OptimizerSettings
from testbed.report import read_scalars
from testbed.testing import quiet_trainer
from toy_models.gravity import GravityData, GravityMLP

SUBSPACE = {"d": 8}


def model() -> GravityMLP:
    torch.manual_seed(0)
    return GravityMLP(hidden=16, optimizer=OptimizerSettings(lr=1e-2))


def data() -> GravityData:
    return GravityData(phase="finetune", n_train=96, batch_size=32, probe_size=16, safety_size=32, refusal_frac=0.05)


def fit(module: GravityMLP, callbacks: list[pl.Callback], steps: int = 6, **kwargs: Any) -> GravityMLP:
    pl.seed_everything(3, verbose=False)
    quiet_trainer(steps, callbacks, deterministic=True, **kwargs).fit(module, data())
    return module


def monitor(**kwargs: Any) -> CurvatureMonitor:
    return CurvatureMonitor(**{"subspace": SUBSPACE, "every_n_steps": 2, "fit_window": [1, 6], **kwargs})


def test_monitor_never_touches_training():
    plain, watched = fit(model(), []), fit(model(), [monitor()])
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), watched.parameters(), strict=True))


def test_monitor_logs_the_diagnostics_and_writes_the_subspace(tmp_path: Path):
    callback = monitor()
    fit(model(), [callback], logger=TensorBoardLogger(tmp_path, name="run", version="v"), log_every_n_steps=1)
    scalars = read_scalars(tmp_path / "run" / "v")
    at_zero = {t for t, (steps, _) in scalars.items() if steps[0] == 0}
    assert {"curvature/lambda_d", "curvature/trace", "curvature/tail", "curvature/eps_rel", "curvature/gamma",
            "curvature/aic_holds", "curvature/safety_grad_norm"} <= at_zero  # fmt: skip
    assert list(scalars["curvature/delta_u"][0]) == [1, 2, 4, 6]
    assert {"curvature/exponent", "curvature/exponent_low", "curvature/exponent_high"} <= set(scalars)
    saved, extra = Subspace.load(tmp_path / "run" / "v" / "curvature.pt")
    assert torch.equal(saved.basis, callback.subspace.basis) and saved.n == 32 and saved.method == "fisher"
    assert extra["diagnostics"]["gamma"] == pytest.approx(callback.diagnostics.gamma)
    assert "AIC" in extra["diagnostics"]["verdict"]
    # Δu at the first step is ∇u·δ + ½‖F^{1/2}P_S δ‖² to first order: the linear term carries the sign here
    first = callback.history[0]
    assert math.copysign(1, first["curvature/delta_u"]) == math.copysign(1, first["curvature/linear_pred"])


def _delta_u_on(rows_: list[int], start: GravityMLP, trained: GravityMLP, safety: Any) -> float:
    from testbed.curvature import safety_loss
    from testbed.probes import map_batch, probe_mode

    picked = map_batch(safety, lambda t: t[rows_])
    with probe_mode(start), probe_mode(trained):
        return float(safety_loss(trained, picked) - safety_loss(start, picked))


def test_measure_n_measures_delta_u_on_examples_spread_over_the_safety_set_with_the_same_subspace():
    everything, spread, default = monitor(measure_n="all"), monitor(measure_n=8), monitor()
    start = model()
    fit(copy.deepcopy(start), [everything])
    fit(copy.deepcopy(start), [default])
    trained = fit(copy.deepcopy(start), [spread])
    assert torch.equal(everything.subspace.basis, spread.subspace.basis)  # S still comes from all 32 safety examples
    last = spread.history[-1]["curvature/delta_u"]
    assert last == pytest.approx(_delta_u_on([0, 4, 8, 12, 16, 20, 24, 28], start, trained, spread.safety), rel=1e-6)
    assert everything.history[-1]["curvature/delta_u"] == pytest.approx(
        _delta_u_on(list(range(32)), start, trained, spread.safety), rel=1e-6)
    # the default: 16 of the 32, every other one
    assert default.history[-1]["curvature/delta_u"] == pytest.approx(
        _delta_u_on(list(range(0, 32, 2)), start, trained, spread.safety), rel=1e-6)
    assert last != pytest.approx(everything.history[-1]["curvature/delta_u"], rel=1e-3)
    with pytest.raises(ConfigError, match="measure_n=33 exceeds the safety set"):
        fit(model(), [monitor(measure_n=33)])


def test_delta_u_is_the_same_measured_a_chunk_of_examples_at_a_time():
    whole, chunked = monitor(measure_n="all"), monitor(measure_n="all", subspace={**SUBSPACE, "chunk_size": 5})
    start = model()
    fit(copy.deepcopy(start), [whole])
    fit(copy.deepcopy(start), [chunked])
    for a, b in zip(whole.history, chunked.history, strict=True):
        assert a["curvature/delta_u"] == pytest.approx(b["curvature/delta_u"], rel=1e-5, abs=1e-9)
        assert a["curvature/linear_pred"] == pytest.approx(b["curvature/linear_pred"], rel=1e-4, abs=1e-9)


def test_a_resume_refuses_a_different_number_of_measured_examples(tmp_path: Path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)
    fit(model(), [monitor(measure_n="all"), ckpt], steps=2, enable_checkpointing=True)
    trainer = quiet_trainer(4, [monitor(), copy.deepcopy(ckpt)], enable_checkpointing=True)
    with pytest.raises(ConfigError, match="measured Δu on 32 safety examples, this run on 16"):
        trainer.fit(model(), data(), ckpt_path=str(next(tmp_path.glob("*.ckpt"))))


def test_blocker_holds_the_motion_in_S_under_adamw_and_shares_the_estimate():
    watch, block = monitor(every_n_steps=1), SubspaceBlocker(SUBSPACE)
    fit(model(), [watch, block])
    assert block.shared_from == "CurvatureMonitor" and block.subspace is watch.subspace
    assert max(r["curvature/disp_in_S"] / r["curvature/disp_norm"] for r in watch.history) < 1e-5
    plain = monitor(every_n_steps=1)
    fit(model(), [plain])
    assert max(r["curvature/disp_in_S"] / r["curvature/disp_norm"] for r in plain.history) > 0.05


def test_random_control_blocks_its_own_random_subspace():
    control = SubspaceBlocker({"d": 8, "method": "random", "seed": 5})
    module = fit(model(), [control])
    basis = control.subspace.basis
    torch.testing.assert_close(basis @ basis.T, torch.eye(8), rtol=0, atol=1e-5)
    params = trainable_parameters(module)
    delta = flatten(params, params) - control.theta_star
    assert float((basis @ delta).norm()) < 1e-5 * float(delta.norm())
    assert control.subspace.method == "random" and math.isnan(float(control.subspace.eigenvalues[0]))


def test_one_sided_removes_only_components_that_raise_the_safety_model():
    blocker = SubspaceBlocker(SUBSPACE, one_sided=True)
    basis = torch.eye(3, 5)
    blocker.subspace = Subspace(basis, torch.tensor([2.0, 2.0, 0.0]), 4.0, 10, "fisher")
    blocker.partition, blocker.theta_star = None, torch.zeros(5)
    blocker.slope_at_start = torch.tensor([1.0, -1.0, 0.5])
    # at θ* (c = 0) the quadratic model changes by b_i a_i + λ_i a_i²/2 along each coordinate
    a = torch.tensor([0.1, 0.1, -0.1])
    removed = blocker.removed_coords(torch.zeros(5), a)
    torch.testing.assert_close(removed, torch.tensor([0.1, 0.0, 0.0]))  # -0.1 + 0.01 < 0 and -0.05 < 0 are kept
    with pytest.raises(ConfigError, match="one-sided blocking needs"):
        SubspaceBlocker({"d": 8, "method": "random"}, one_sided=True)


def test_one_sided_blocker_never_raises_the_safety_model_in_S():
    watch, block = monitor(every_n_steps=1), SubspaceBlocker(SUBSPACE, one_sided=True)
    fit(model(), [watch, block], steps=8)
    lam, b = block.subspace.eigenvalues, block.slope_at_start
    params = trainable_parameters(block._module)
    c = block.subspace.coords(flatten(params, params) - block.theta_star)
    assert float((b * c + 0.5 * lam * c**2).sum()) <= 1e-6  # the model on S did not rise from θ*


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subspace": {"method": "random"}}, "measures an estimated subspace"),
        ({"fit_window": [3, 3]}, "fit_window must be"),
        ({"every_n_steps": 10, "fit_window": [2, 9]}, "fewer than two measured steps"),
        ({"subspace": {"d": 4, "extra": 1}}, "unknown subspace setting"),
        ({"measure_n": 0, "every_n_steps": 2}, "measure_n must be a positive integer, all, or null"),
        ({"measure_n": "some", "every_n_steps": 2}, "measure_n must be a positive integer, all, or null"),
    ],
)
def test_monitor_settings_are_checked_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CurvatureMonitor(**{"fit_window": [1, 6], **kwargs})


def test_resume_restores_the_subspace_and_the_fit(tmp_path: Path):
    whole = monitor(every_n_steps=1, fit_window=[1, 3])
    fit(model(), [whole, SubspaceBlocker(SUBSPACE)], steps=6)
    first = monitor(every_n_steps=1, fit_window=[1, 3])
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    module = model()
    fit(module, [first, SubspaceBlocker(SUBSPACE), ckpt, ResumableRng()], steps=3, enable_checkpointing=True)
    resumed = monitor(every_n_steps=1, fit_window=[1, 3])
    pl.seed_everything(3, verbose=False)
    trainer = quiet_trainer(6, [resumed, SubspaceBlocker(SUBSPACE), copy.deepcopy(ckpt), ResumableRng()],
                            deterministic=True, enable_checkpointing=True)  # fmt: skip
    trainer.fit(model(), data(), ckpt_path=str(next(tmp_path.glob("*.ckpt"))))
    assert torch.equal(resumed.subspace.basis, whole.subspace.basis)
    assert resumed.diagnostics.numbers == pytest.approx(whole.diagnostics.numbers)
    assert len(resumed.history) == len(whole.history) == 6
    for got, want in zip(resumed.history, whole.history, strict=True):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert resumed.summary() == pytest.approx(whole.summary(), rel=1e-6, nan_ok=True)


def test_settings_dataclass_is_shared():
    assert CurvatureMonitor({"d": 3}).settings == SubspaceBlocker({"d": 3}).settings
    assert SubspaceSettings(d=3) == CurvatureMonitor({"d": 3}).settings
