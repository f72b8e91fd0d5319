"""The neural toy through the shared curvature monitor: the benign task design, the early exponent against the
figures the toy-specific code gave (3.997, measured/predicted 0.925), Fisher against Hessian subspaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from testbed.curvature import SubspaceSettings, estimate_subspace, principal_angles
from testbed.errors import ConfigError
from tests.helpers.curvature import delta_u, run_monitored
from toy_models.data import TaskSettings, make_tasks
from toy_models.neural import FlatMLP, NeuralToy, NeuralToyData, fit_to_minimum, mse


def descend(model: NeuralToy, steps: int, window: tuple[int, int], d: int = 7):
    """Full-batch GD on the fine-tune task (what the trainer does), measured every step by the shared monitor."""
    return run_monitored(model, NeuralToyData(), steps, subspace={"d": d}, fit_window=window, theory_order=2)


@pytest.fixture(scope="module")
def benign():
    model = NeuralToy()
    return model, descend(model, 50, (10, 50))


def test_alignment_fit_reaches_an_interpolating_minimum():
    tasks = make_tasks(TaskSettings(n_align=8, seed=0))
    net = FlatMLP(8, 16, 2, seed=0)
    before = float(mse(net, net.flat(), tasks.x_align, tasks.y_align))
    after = fit_to_minimum(net, tasks.x_align, tasks.y_align, iters=30)
    assert before > 1e-2 and after < 1e-20


def test_benign_design_makes_g0_orthogonal_with_coupling(benign):
    _, monitor = benign
    d, lam = monitor.diagnostics, monitor.subspace.eigenvalues.numpy()
    assert d.eps_rel < 1e-9  # g0 ⊥ S to round-off
    assert d.gamma > 0 and d.verdict.conditions["coupled"]  # ... yet the fine-tune Hessian pushes g0 into S
    assert d.verdict.exponent == 4
    assert np.all(np.diff(lam) <= 0) and lam[0] > 1.0


def test_neural_exponent_and_ratio_match_the_toy_specific_figures(benign):
    summary = benign[1].summary()
    assert summary["curvature/exponent"] == pytest.approx(3.997, abs=0.05)
    assert summary["curvature/coefficient_ratio"] == pytest.approx(0.925, rel=0.10)  # the loss is not quadratic


def test_fisher_and_hessian_subspaces_agree_at_the_interpolating_minimum():
    """At θ0 the residuals vanish, so the Gauss–Newton Fisher is the alignment Hessian: same S, same λ."""
    model = NeuralToy()
    data = NeuralToyData()
    model.prepare(data)
    fisher = estimate_subspace(model, data.safety_batch(), SubspaceSettings(d=7))
    hessian = estimate_subspace(model, data.safety_batch(), SubspaceSettings(d=7, method="hessian"))
    assert float(principal_angles(fisher.basis, hessian.basis).max()) < 1e-8
    torch.testing.assert_close(fisher.eigenvalues, hessian.eigenvalues, rtol=1e-8, atol=1e-12)


def test_departures_from_the_quadratic_model_multiply_to_the_ratio(benign):
    model, monitor = benign
    steps = np.arange(10, 51)
    quad, true_on_quad = model.quadratic_model_run(monitor.subspace.basis, monitor.subspace.eigenvalues, 50)
    du = delta_u(monitor)
    measured = np.array([du[n] for n in steps])
    parts = [quad[steps] / monitor.series[steps], true_on_quad[steps] / quad[steps], measured / true_on_quad[steps]]
    gm = [float(np.exp(np.mean(np.log(p)))) for p in parts]
    assert gm[0] == pytest.approx(1.0, abs=0.02)  # series truncation is small this early
    assert gm[1] < 0.97  # the non-quadratic alignment loss is the main departure
    assert np.prod(gm) == pytest.approx(monitor.summary()["curvature/coefficient_ratio"], rel=1e-9)


def test_raw_task_breaks_orthogonality_and_the_exponent_drops_to_two():
    monitor = descend(NeuralToy(orthogonality_violation=1.0), 20, (2, 20))
    assert monitor.diagnostics.eps_rel > 0.5 and monitor.diagnostics.verdict.exponent == 2
    assert monitor.summary()["curvature/exponent"] == pytest.approx(2.0, abs=0.1)


def test_same_seeds_give_identical_subspaces():
    a, b = NeuralToy(width=8), NeuralToy(width=8)
    for model in (a, b):
        model.prepare(NeuralToyData())
    sa, sb = (estimate_subspace(m, NeuralToyData().safety_batch(), SubspaceSettings(d=4)) for m in (a, b))
    assert torch.equal(sa.basis, sb.basis) and torch.equal(sa.eigenvalues, sb.eigenvalues)


def test_d_not_below_the_alignment_examples_is_a_config_error():
    model = NeuralToy()
    model.prepare(NeuralToyData())
    with pytest.raises(ConfigError, match="d=8 must be below the number of safety examples N=8"):
        estimate_subspace(model, NeuralToyData().safety_batch(), SubspaceSettings(d=8))


def test_probe_layers(benign):
    model, _ = benign
    probe = NeuralToyData().probe_batch()
    reps = model.representations(probe, model.layer_names())
    assert [tuple(v.shape) for v in reps.values()] == [(16, 16), (16, 16), (16, 1)]


@pytest.mark.slow
def test_neural_report_side_by_side(tmp_path, monkeypatch):
    from experiments.inprocess import fit
    from experiments.neural_toy.decompose import CONFIGS, side_by_side

    monkeypatch.chdir(tmp_path)
    benign, raw = (side_by_side(fit(c, save_dir=str(tmp_path))) for c in CONFIGS)
    assert benign["predicted_exponent"] == 4 and benign["exponent"] == pytest.approx(3.997, abs=0.05)
    assert raw["predicted_exponent"] == 2 and raw["exponent"] == pytest.approx(2.0, abs=0.1)
    assert benign["c4_measured"] == pytest.approx(benign["c4_theory"], rel=0.25)
    assert benign["ratio_series"] == pytest.approx(0.925, rel=0.10)
    assert benign["fisher_hessian_max_angle"] < 1e-8
