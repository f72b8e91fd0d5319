"""The quadratic toy: the quartic law, the regimes, λ·c² scaling, the probe protocol and bad knobs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from testbed.errors import ConfigError
from tests.helpers.paths import EXPERIMENTS
from tests.helpers.toy_descent import descend as descend_params
from theory.quartic import exact_alignment_loss_gd
from toy_models.geometry import QuarticMonitor
from toy_models.quadratic import QuadraticData, QuadraticToy

FAST = {"dim": 16, "rank": 2, "sharpness": 10.0, "coupling": 0.5, "ft_spectrum": (0.2, 1.0), "lr": 5e-4}


def descend(model: QuadraticToy, steps: int) -> QuarticMonitor:
    """Plain GD on the fine-tune loss (what the trainer does), measured every step."""
    return descend_params(model, steps, model.parameters())


def scalars(run_dir, name: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir)).Reload()
    return [(e.step, e.value) for e in acc.Scalars(name)]


def test_quartic_config_meets_acceptance(run_cli, tmp_path):
    """The headline config: exponent 4 ± 0.1 and measured/predicted within 10%, every tag logged every step."""
    assert run_cli(["fit", "--config", "experiments/toy_regimes/quartic.yaml"]) == 0
    run = tmp_path / "runs" / "quartic" / "aic_holds"
    ((_, exponent),) = scalars(run, "fit/exponent")
    ((_, ratio),) = scalars(run, "fit/coefficient_ratio")
    assert exponent == pytest.approx(4.0, abs=0.1)
    assert ratio == pytest.approx(1.0, abs=0.1)
    for name in ("align/loss", "geometry/disp_in_S", "geometry/disp_out_S", "theory/align_loss_pred"):
        steps = [step for step, _ in scalars(run, name)]
        assert steps == list(range(1, 201)), name  # TensorBoard step = number of updates done
    assert len(scalars(run, "theory/ratio")) == 199  # after step 1 P_S δ is exactly zero: no ratio of round-off
    slopes = scalars(run, "fit/loglog_slope")
    assert len(slopes) == 200 - 20  # from the second point of the window [20, 200] on
    assert slopes[-1][1] == pytest.approx(exponent, abs=1e-4)


def test_trainer_matches_exact_gradient_descent():
    """The measured alignment loss equals theory's closed form for GD on the same landscape."""
    model = QuadraticToy(**FAST, fit_window=(10, 60))
    monitor = descend(model, 60)
    exact = exact_alignment_loss_gd(
        model.sharpness, model.U.numpy(), model.H.numpy(), model.g0.numpy(), model.lr, np.arange(1, 61)
    )
    measured = np.array([monitor.losses[n] for n in range(1, 61)])
    np.testing.assert_allclose(measured[1:], exact[1:], rtol=1e-9)  # step 1 is round-off of an exact zero


@pytest.mark.parametrize(
    ("violation", "coupling", "exponent"),
    [(0.0, 0.5, 4.0), (0.1, 0.5, 2.0)],
)
def test_regime_exponents(violation, coupling, exponent):
    model = QuadraticToy(**{**FAST, "coupling": coupling}, orthogonality_violation=violation, fit_window=(20, 150))
    summary = descend(model, 150).summary()
    assert summary.exponent == pytest.approx(exponent, abs=0.1)
    assert summary.coefficient_ratio == pytest.approx(1.0, abs=0.05)


def test_no_coupling_keeps_alignment_loss_at_numerical_zero():
    model = QuadraticToy(**{**FAST, "coupling": 0.0}, fit_window=(20, 150))
    monitor = descend(model, 150)
    summary = monitor.summary()
    assert summary.points == 0 and math.isnan(summary.exponent)
    assert summary.max_loss < 1e-28  # vs ~1e-6 with coupling 0.5 over the same steps
    assert summary.max_in_fraction < 1e-13


def test_coefficient_scales_as_sharpness_times_coupling_squared():
    grid = [(lam, c) for lam in (2.0, 8.0) for c in (0.2, 0.4)]
    coeffs = []
    for lam, c in grid:
        model = QuadraticToy(**{**FAST, "sharpness": lam, "coupling": c}, fit_window=(20, 80))
        losses = descend(model, 80).losses
        steps = np.arange(20, 81)
        coeffs.append(np.exp(np.mean(np.log([losses[n] for n in steps]) - 4 * np.log(steps))))
    design = np.array([[math.log(lam), math.log(c), 1.0] for lam, c in grid])
    (a, b, _), *_ = np.linalg.lstsq(design, np.log(coeffs), rcond=None)
    assert a == pytest.approx(1.0, abs=1e-6)  # λ only scales the measured loss
    assert b == pytest.approx(2.0, abs=0.05)


def test_probe_layers_expose_parameters():
    model = QuadraticToy(**FAST)
    with torch.no_grad():
        model.theta.copy_(torch.arange(16, dtype=torch.float64))
    probe = QuadraticData(dim=16, probe_size=3).probe_batch()
    reps = model.representations(probe, ["blocks.0.theta", "blocks.0.readout"])
    assert torch.equal(reps["blocks.0.theta"], model.theta.detach().expand(3, -1))
    torch.testing.assert_close(reps["blocks.0.readout"], probe * model.theta.detach())
    with pytest.raises(ConfigError, match="unknown layer name"):
        model.representations(probe, ["blocks.1.theta"])


def test_landscape_is_a_function_of_its_seed():
    a, b, c = QuadraticToy(**FAST), QuadraticToy(**FAST), QuadraticToy(**FAST, landscape_seed=1)
    assert torch.equal(a.H, b.H) and torch.equal(a.g0, b.g0)
    assert not torch.equal(a.H, c.H)
    assert float(torch.linalg.vector_norm(a.U.T @ a.g0)) < 1e-12  # ε = 0: g0 ⊥ S


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"dim": 4, "rank": 4}, "rank k must satisfy 1 <= k < dim"),
        ({"rank": 0}, "rank k must satisfy"),
        ({"sharpness": -1.0}, "sharpness must be positive"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"lr": 5.0}, "gradient descent diverges"),
        ({"orthogonality_violation": 1.5}, "orthogonality_violation must lie in"),
        ({"ft_spectrum": (1.0, 0.5)}, "ft_spectrum"),
        ({"coupling": -0.1}, "coupling must be >= 0"),
    ],
)
def test_impossible_knobs_raise_config_error(knobs, message):
    with pytest.raises(ConfigError, match=message):
        QuadraticToy(**{**FAST, **knobs})


@pytest.mark.slow
def test_sweep_and_regimes_study_meet_acceptance(tmp_path, monkeypatch):
    """The 3 × 3 scaling sweep and the regimes study (one seed), through the same CLI path as the commands."""
    from experiments.toy_regimes.scaling import scaling_fit, sweep
    from testbed.__main__ import main
    from testbed.report import read_scalars

    monkeypatch.chdir(tmp_path)
    fit = scaling_fit(sweep([2.0, 5.0, 10.0], [0.1, 0.25, 0.5], save_dir=str(tmp_path)))
    assert fit["lambda_exponent"] == pytest.approx(1.0, abs=0.01)
    assert fit["coupling_exponent"] == pytest.approx(2.0, abs=0.02)
    assert fit["r2"] > 0.999
    study = EXPERIMENTS / "toy_regimes" / "study.yaml"
    main(["study", "--config", str(study), "--runs_dir", str(tmp_path / "runs"), "--seeds", "[0]", "--quiet", "true"])

    def last(arm: str) -> dict[str, float]:
        return {tag: float(values[-1]) for tag, (_, values) in read_scalars(tmp_path / "runs" / "toy_regimes" / arm /
                                                                            "seed=0").items()}  # fmt: skip

    aic, broken, uncoupled = last("aic_holds"), last("orthogonality_broken"), last("no_coupling")
    assert aic["fit/exponent"] == pytest.approx(4.0, abs=0.01)
    assert aic["fit/coefficient_ratio"] == pytest.approx(1.0, abs=0.01)
    assert broken["fit/exponent"] == pytest.approx(2.0, abs=0.05) and broken["theory/exponent"] == 2
    assert "fit/exponent" not in uncoupled and uncoupled["align/max_loss"] < 1e-30
