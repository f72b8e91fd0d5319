"""The quadratic toy through the shared curvature monitor: the quartic law, the regimes, λ·c² scaling, the exact S and
λ recovered from its safety set, the probe protocol and bad knobs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from testbed.errors import ConfigError
from tests.helpers.curvature import delta_u, run_monitored
from tests.helpers.paths import EXPERIMENTS
from theory.quartic import exact_alignment_loss_gd, gamma_f_weighted, leading_law_gd
from toy_models.quadratic import QuadraticData, QuadraticToy

FAST = {"dim": 16, "rank": 2, "sharpness": 10.0, "coupling": 0.5, "ft_spectrum": (0.2, 1.0), "lr": 5e-4}


def descend(model: QuadraticToy, steps: int, window: tuple[int, int] = (10, 60), **monitor):
    """The trainer's plain GD on the fine-tune loss, measured every step by the shared curvature monitor (d = k)."""
    return run_monitored(model, QuadraticData(dim=model.dim), steps, subspace={"d": model.rank}, fit_window=window,
                         theory_order=2, **monitor)  # fmt: skip


def scalars(run_dir, name: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir)).Reload()
    return [(e.step, e.value) for e in acc.Scalars(name)]


def test_quartic_config_meets_acceptance(tmp_path, monkeypatch):
    """The headline config: the shared monitor recovers S and λ and reproduces the toy-specific figures of before
    (exponent 3.997118965193815, measured/predicted 1.0008069134770001); every tag logged every step."""
    from experiments.inprocess import fit
    from experiments.toy_regimes.recovery import CONFIG, recovery

    monkeypatch.chdir(tmp_path)
    r = recovery(fit([CONFIG], save_dir=str(tmp_path / "runs")))
    assert r["max_angle"] < 1e-6 and r["max_lambda_rel_error"] < 1e-6
    assert r["exponent"] == pytest.approx(3.997118965193815, abs=1e-9)
    assert r["coefficient_ratio"] == pytest.approx(1.0008069134770001, abs=1e-9)
    assert r["verdict"].startswith("AIC holds; leading exponent 4")
    run = tmp_path / "runs" / "quartic" / "aic_holds"
    ((_, exponent),) = scalars(run, "curvature/exponent")
    assert exponent == pytest.approx(3.997118965193815, abs=1e-6)
    for name in ("curvature/delta_u", "curvature/disp_in_S", "curvature/disp_f", "curvature/series_pred"):
        steps = [step for step, _ in scalars(run, name)]
        assert steps == list(range(1, 201)), name  # TensorBoard step = number of updates done
    assert len(scalars(run, "curvature/ratio")) == 199  # after step 1 P_S δ is exactly zero: no ratio of round-off
    slopes = scalars(run, "curvature/loglog_slope")
    assert len(slopes) == 200 - 20  # from the second point of the window [20, 200] on
    assert slopes[-1][1] == pytest.approx(exponent, abs=1e-4)
    assert scalars(run, "curvature/aic_holds") == [(0, 1.0)] and scalars(run, "curvature/aic_exponent") == [(0, 4.0)]


def test_trainer_matches_exact_gradient_descent():
    """Δu measured by the shared monitor equals theory's closed form for GD on the same landscape."""
    model = QuadraticToy(**FAST)
    exact = exact_alignment_loss_gd(
        model.sharpness, model.U.numpy(), model.H.numpy(), model.g0.numpy(), model.lr, np.arange(1, 61)
    )
    du = delta_u(descend(model, 60))
    measured = np.array([du[n] for n in range(1, 61)])
    np.testing.assert_allclose(measured[1:], exact[1:], rtol=1e-9)  # step 1 is round-off of an exact zero


def test_diagnostics_are_the_exact_aic_quantities():
    """ε/‖g‖ = the set violation, γ = theory's F-weighted coupling, and at step 2 Δu is exactly γ²η⁴n²(n−1)²/8."""
    model = QuadraticToy(**FAST, orthogonality_violation=0.05)
    monitor = descend(model, 2, window=(1, 2))
    U, H, g0 = model.U.numpy(), model.H.numpy(), model.g0.numpy()
    d = monitor.diagnostics
    assert d.eps_rel == pytest.approx(0.05, rel=1e-9)
    assert d.gamma == pytest.approx(gamma_f_weighted(model.sharpness, U, H, g0), rel=1e-9)
    assert monitor.subspace.trace == pytest.approx(model.rank * model.sharpness, rel=1e-12)  # F = λ U Uᵀ: no tail
    assert monitor.subspace.tail == pytest.approx(0.0, abs=1e-9)
    orthogonal = descend(QuadraticToy(**FAST), 2, window=(1, 2))
    law = leading_law_gd(orthogonal.diagnostics.gamma, model.lr, 2)
    assert delta_u(orthogonal)[2] == pytest.approx(law, rel=1e-9)  # exact at n <= 2: no extra factor λ


@pytest.mark.parametrize(
    ("violation", "coupling", "exponent"),
    [(0.0, 0.5, 4.0), (0.1, 0.5, 2.0)],
)
def test_regime_exponents(violation, coupling, exponent):
    model = QuadraticToy(**{**FAST, "coupling": coupling}, orthogonality_violation=violation)
    summary = descend(model, 150, window=(20, 150)).summary()
    assert summary["curvature/exponent"] == pytest.approx(exponent, abs=0.1)
    assert summary["curvature/coefficient_ratio"] == pytest.approx(1.0, abs=0.05)


def test_no_coupling_keeps_alignment_loss_at_numerical_zero():
    monitor = descend(QuadraticToy(**{**FAST, "coupling": 0.0}), 150, window=(20, 150))
    summary = monitor.summary()
    assert summary["curvature/fit_points"] == 0 and math.isnan(summary["curvature/exponent"])
    assert summary["curvature/max_delta_u"] < 1e-28  # vs ~1e-6 with coupling 0.5 over the same steps
    assert max(r["curvature/disp_in_S"] / r["curvature/disp_norm"] for r in monitor.history) < 1e-13
    assert monitor.diagnostics.verdict.exponent is None  # orthogonal but uncoupled: no t⁴ term


def test_coefficient_scales_as_sharpness_times_coupling_squared():
    grid = [(lam, c) for lam in (2.0, 8.0) for c in (0.2, 0.4)]
    coeffs = []
    for lam, c in grid:
        du = delta_u(descend(QuadraticToy(**{**FAST, "sharpness": lam, "coupling": c}), 80, window=(20, 80)))
        steps = np.arange(20, 81)
        coeffs.append(np.exp(np.mean(np.log([du[n] for n in steps]) - 4 * np.log(steps))))
    design = np.array([[math.log(lam), math.log(c), 1.0] for lam, c in grid])
    (a, b, _), *_ = np.linalg.lstsq(design, np.log(coeffs), rcond=None)
    assert a == pytest.approx(1.0, abs=1e-6)  # λ only scales the measured loss
    assert b == pytest.approx(2.0, abs=0.05)


def test_safety_set_reproduces_the_alignment_loss_and_its_fisher():
    """mean_j ℓ_j = A(θ) for any θ, and the scores' Fisher is λ U Uᵀ (a tight frame of N >= d vectors)."""
    model, data = QuadraticToy(**FAST), QuadraticData(dim=16, safety_size=20)
    w = data.safety_batch()
    torch.testing.assert_close(w.T @ w / 20, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-12)
    with torch.no_grad():
        model.theta.copy_(torch.randn(16, dtype=torch.float64))
    torch.testing.assert_close(model.safety_losses(w).mean(), model.alignment_loss(), rtol=1e-12, atol=0)
    with pytest.raises(ConfigError, match="safety_size=8 must be >= dim=16"):
        QuadraticData(dim=16, safety_size=8)


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
    assert aic["curvature/exponent"] == pytest.approx(4.0, abs=0.01)
    assert aic["curvature/coefficient_ratio"] == pytest.approx(1.0, abs=0.01)
    assert broken["curvature/exponent"] == pytest.approx(2.0, abs=0.05) and broken["theory/exponent"] == 2
    assert broken["curvature/aic_exponent"] == 2
    assert "curvature/exponent" not in uncoupled and uncoupled["curvature/max_delta_u"] < 1e-30
