"""The neural toy: Lanczos against a dense Hessian, the benign task design, and the early exponent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from testbed.errors import ConfigError
from tests.helpers.toy_descent import descend as descend_params
from toy_models.data import TaskSettings, make_tasks
from toy_models.geometry import QuarticMonitor
from toy_models.neural import FlatMLP, NeuralToy, NeuralToyData, fit_to_minimum, hvp_operator, lanczos_top, mse


def descend(model: NeuralToy, steps: int) -> QuarticMonitor:
    """Full-batch GD on the fine-tune task (what the trainer does), measured every step."""
    model.estimates = model.estimate()
    return descend_params(model, steps, model.net.parameters())


@pytest.fixture(scope="module")
def benign() -> tuple[NeuralToy, QuarticMonitor]:
    model = NeuralToy(fit_window=(10, 40))
    model.prepare(NeuralToyData())
    return model, descend(model, 40)


def test_lanczos_matches_dense_hessian_on_tiny_net():
    tasks = make_tasks(TaskSettings(ambient_dim=4, manifold_dim=2, n_align=4, n_finetune=6, seed=3))
    net = FlatMLP(4, 3, 1, seed=1)  # 19 parameters
    theta = net.flat()
    dense = torch.func.hessian(lambda t: mse(net, t, tasks.x_align, tasks.y_align))(theta)
    vals_dense, vecs_dense = torch.linalg.eigh(dense)
    vals, vecs = lanczos_top(hvp_operator(net, theta, tasks.x_align, tasks.y_align), theta.numel(), 3, 19)
    torch.testing.assert_close(vals, vals_dense.flip(0)[:3], rtol=1e-9, atol=1e-12)
    top = vecs_dense[:, -3:]
    torch.testing.assert_close(vecs @ vecs.T, top @ top.T, rtol=0, atol=1e-8)  # same subspace
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_alignment_fit_reaches_an_interpolating_minimum():
    tasks = make_tasks(TaskSettings(n_align=8, seed=0))
    net = FlatMLP(8, 16, 2, seed=0)
    before = float(mse(net, net.flat(), tasks.x_align, tasks.y_align))
    after = fit_to_minimum(net, tasks.x_align, tasks.y_align, iters=30)
    assert before > 1e-2 and after < 1e-20


def test_benign_design_makes_g0_orthogonal_with_coupling(benign):
    model, _ = benign
    e = model.estimates
    assert e.orthogonality < 1e-9  # g0 ⊥ S to round-off
    assert e.coupling > 0.1  # ... yet the fine-tune Hessian pushes g0 into S
    assert np.all(np.diff(e.lam) <= 0) and e.lam[0] > 1.0


def test_neural_exponent_is_four_and_theory_within_ten_percent(benign):
    _, monitor = benign
    summary = monitor.summary()
    assert summary.exponent == pytest.approx(4.0, abs=0.1)
    assert 0.85 < summary.coefficient_ratio < 1.05  # measured 0.925: the alignment loss is not quadratic


def test_departures_from_the_quadratic_model_multiply_to_the_ratio(benign):
    model, monitor = benign
    steps = np.arange(10, 41)
    quad, true_on_quad = model.quadratic_model_run(40)
    measured = np.array([monitor.losses[n] for n in steps])
    parts = [quad[steps] / monitor.predicted[steps], true_on_quad[steps] / quad[steps], measured / true_on_quad[steps]]
    gm = [float(np.exp(np.mean(np.log(p)))) for p in parts]
    assert gm[0] == pytest.approx(1.0, abs=0.02)  # series truncation is small this early
    assert gm[1] < 0.97  # the non-quadratic alignment loss is the main departure
    assert np.prod(gm) == pytest.approx(monitor.summary().coefficient_ratio, rel=1e-9)


def test_raw_task_breaks_orthogonality_and_the_exponent_drops_to_two():
    model = NeuralToy(orthogonality_violation=1.0, fit_window=(2, 20))
    model.prepare(NeuralToyData())
    summary = descend(model, 20).summary()
    assert model.estimates.orthogonality > 0.5
    assert summary.exponent == pytest.approx(2.0, abs=0.1)


def test_same_seeds_give_identical_estimates():
    a, b = NeuralToy(width=8, rank=4), NeuralToy(width=8, rank=4)
    a.prepare(NeuralToyData())
    b.prepare(NeuralToyData())
    ea, eb = a.estimate(), b.estimate()
    assert np.array_equal(ea.lam, eb.lam) and np.array_equal(ea.g0, eb.g0) and ea.c4 == eb.c4


def test_rank_above_alignment_examples_is_a_config_error():
    with pytest.raises(ConfigError, match="exceeds n_align"):
        NeuralToy(rank=9).prepare(NeuralToyData(TaskSettings(n_align=8)))


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
    assert benign["predicted_exponent"] == 4 and benign["exponent"] == pytest.approx(4.0, abs=0.1)
    assert raw["predicted_exponent"] == 2 and raw["exponent"] == pytest.approx(2.0, abs=0.1)
    assert benign["c4_measured"] == pytest.approx(benign["c4_theory"], rel=0.25)
