"""Reversion metrics: drift alignment numbers, shard reduction, the isotropic null, task and harm hooks."""

from __future__ import annotations

import math

import pytest
import torch

from testbed.errors import ConfigError
from testbed.judging import Judge, run_judge
from testbed.metrics import DriftAlignment, NullExceedance, level_name
from theory.null import cosine_null_threshold, sample_null_cosines


def test_drift_alignment_matches_the_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(16, generator=gen)
    v = v / v.norm()
    ref = torch.randn(16, generator=gen)
    reps = torch.randn(40, 16, generator=gen) + ref + 0.7 * v
    metric = DriftAlignment(v, ref)
    metric.update(reps)
    out = metric.compute()
    drift = reps.double().mean(0) - ref.double()
    along = drift @ v.double()
    assert out["cos"].item() == pytest.approx((along / drift.norm()).item(), abs=1e-6)
    assert out["along"].item() == pytest.approx(along.item(), abs=1e-6)
    assert out["orth_norm"].item() == pytest.approx(math.sqrt(drift.norm() ** 2 - along**2), abs=1e-6)
    assert out["cos"] > 0.3  # the planted drift along v shows


def test_sharded_updates_equal_one_update() -> None:
    gen = torch.Generator().manual_seed(1)
    v, ref, reps = torch.randn(8, generator=gen), torch.randn(8, generator=gen), torch.randn(30, 8, generator=gen)
    one = DriftAlignment(v, ref)
    one.update(reps)
    parts = DriftAlignment(v, ref)
    for shard in (reps[:7], reps[7:7], reps[7:20], reps[20:]):  # includes an empty shard
        parts.update(shard)
    for key, value in one.compute().items():
        torch.testing.assert_close(parts.compute()[key], value)
    # the states a DDP all-reduce would sum
    assert parts._reductions["rep_sum"].__name__ in ("dim_zero_sum", "sum")


def test_drift_alignment_refuses_bad_shapes() -> None:
    with pytest.raises(ConfigError, match="same width"):
        DriftAlignment(torch.ones(4), torch.ones(5))
    metric = DriftAlignment(torch.ones(4), torch.zeros(4))
    with pytest.raises(ConfigError, match="width 4"):
        metric.update(torch.ones(3, 5))
    with pytest.raises(ConfigError, match="before any"):
        metric.compute()


@pytest.mark.parametrize("width", [16, 64, 256])
def test_null_threshold_matches_monte_carlo(width: int) -> None:
    samples = torch.from_numpy(sample_null_cosines(width, 200_000, seed=width))
    for p in (0.99, 0.999):
        thr = cosine_null_threshold(width, p)
        frac = (samples > thr).double().mean().item()
        sd = math.sqrt((1 - p) * p / samples.numel())
        assert abs(frac - (1 - p)) < 4 * sd, (width, p, frac)
    metric = NullExceedance(width)
    metric.update(samples)
    out = metric.compute()
    assert out["steps"] == samples.numel()
    assert out["exceed_frac_p99"].item() == pytest.approx(0.01, abs=4 * math.sqrt(0.0099 / samples.numel()))
    assert out["exceed_frac_p999"].item() == pytest.approx(0.001, abs=4 * math.sqrt(0.000999 / samples.numel()))
    assert metric.threshold(0.99) == pytest.approx(cosine_null_threshold(width, 0.99))


def test_null_indicators_per_step() -> None:
    metric = NullExceedance(64)
    thr99, thr999 = metric.threshold(0.99), metric.threshold(0.999)
    assert 0 < thr99 < thr999 < 1
    assert metric.indicators(0.5 * (thr99 + thr999)).tolist() == [1.0, 0.0]
    for cos in (0.9, -0.2, thr99 + 1e-6):
        metric.update(cos)
    out = metric.compute()
    assert out["exceed_count_p99"].item() == 2 and out["exceed_count_p999"].item() == 1
    assert level_name(0.99) == "p99" and level_name(0.999) == "p999"


def test_judges_run_side_effect_free() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train()
    seen = {}

    class Recording(Judge):
        def __call__(self, module: torch.nn.Module, datamodule: object) -> dict[str, float]:
            seen["training"] = module.training
            seen["grad"] = torch.is_grad_enabled()
            seen["data"] = datamodule
            torch.rand(5)  # consumes randomness inside the isolated RNG
            return {"harmfulness": 0.25, "harmfulness_ci_high": 0.4}

    class Constant(Judge):
        name = "answered"

        def __call__(self, module: torch.nn.Module, datamodule: object) -> float:
            return 0.5

    torch.manual_seed(0)
    out = run_judge(Recording(), model, "data")
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))
    assert out == {"harmfulness": 0.25, "harmfulness_ci_high": 0.4}
    assert seen == {"training": False, "grad": False, "data": "data"} and model.training
    assert run_judge(Constant(), model, None) == {"answered": 0.5}
