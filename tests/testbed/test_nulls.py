"""The matched empirical null: null directions from unrelated history pairs, their file, the empirical-quantile
metric, the monitor's matched-null tags, and the study's plan for a matched-null direction."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from testbed.directions import Extraction, direction_from_representations
from testbed.errors import CheckpointError, ConfigError
from testbed.interventions import DirectionSource, ReversionMonitor
from testbed.metrics import EmpiricalNullExceedance
from testbed.nulls import load_null_directions, matched_null, null_pairs
from testbed.probes import ProbeSet
from testbed.study.plan import DirectionRun, build_plan
from tests.helpers.reversion import LAYER, data, make_history, trainer
from toy_models.gravity import GravityMLP


def reps(seed: int, shift: float = 0.0, n: int = 12, width: int = 6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {LAYER: torch.randn(n, width, generator=gen) + shift}


def test_null_pairs_are_every_unrelated_pair() -> None:
    histories = [(reps(1), reps(2)), (reps(3), reps(4)), (reps(5), reps(6))]
    pairs = null_pairs(histories)
    assert len(pairs) == 2 * 3 * 3
    assert [k for k, _, _ in pairs].count("other_history") == 3  # each other history's own (witness, reference)
    assert pairs[0][1] is histories[0][0] and pairs[0][2] is histories[0][1]
    assert pairs[1][1] is histories[0][1] and pairs[1][2] is histories[0][0]  # roles swapped


def test_matched_null_rows_are_unit_directions_of_the_pairs(tmp_path: Path) -> None:
    model = GravityMLP(hidden=6)
    own = direction_from_representations(model, ProbeSet(torch.zeros(12, 3)), reps(0, 1.0), reps(9),
                                         Extraction(pooling="mean"))  # fmt: skip
    histories = [(reps(1, 1.0), reps(2)), (reps(3, 1.0), reps(4))]
    null = matched_null(own, histories, samples=40, seed=7)
    rows = null.vectors[LAYER]
    assert rows.shape == (8 + 40, 6) and len(null.kinds) == 48
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(48))
    first = histories[0][0][LAYER].mean(0) - histories[0][1][LAYER].mean(0)
    torch.testing.assert_close(rows[0], (first / first.norm()).float())  # the other history's own v_rev
    again = matched_null(own, histories, samples=40, seed=7)
    assert torch.equal(again.vectors[LAYER], rows)  # seeded bootstrap
    path = null.save(tmp_path / "null.pt")
    loaded = load_null_directions(path, layers=[LAYER])
    assert torch.equal(loaded.vectors[LAYER], rows) and loaded.kinds == null.kinds
    with pytest.raises(ConfigError, match="needs other histories"):
        matched_null(own, [], samples=4, seed=0)
    with pytest.raises(ConfigError, match="no null directions at"):
        load_null_directions(path, layers=["blocks.9.hidden"])
    torch.save({"format": "something else"}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not a testbed null-direction file"):
        load_null_directions(tmp_path / "bad.pt")


def test_empirical_quantiles_and_exceedance() -> None:
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(500, 8, generator=gen)
    metric = EmpiricalNullExceedance(rows, levels=(0.9, 0.99))
    drift = torch.randn(8, generator=gen)
    rows64, drift64 = rows.double(), drift.double()
    cos = (rows64 / rows64.norm(dim=1, keepdim=True)) @ drift64 / drift64.norm()
    expected = np.quantile(cos.double().numpy(), [0.9, 0.99])
    quantiles, above = metric.exceedance(0.5, drift)
    np.testing.assert_allclose(quantiles.numpy(), expected, rtol=1e-10)
    assert above.tolist() == [float(0.5 > q) for q in expected]
    metric.update(above)
    metric.update(torch.tensor([1.0, 0.0]))
    out = metric.compute()
    assert float(out["exceed_frac_matched_p90"]) == pytest.approx((above[0].item() + 1) / 2)
    with pytest.raises(ConfigError, match="non-empty"):
        EmpiricalNullExceedance(torch.zeros(0, 8))


def test_monitor_logs_the_matched_null(tmp_path: Path) -> None:
    aligned, path = make_history(tmp_path)
    probe = ProbeSet(data().probe_batch())
    other = GravityMLP(hidden=16)
    histories = [(probe.read(other, [LAYER]), probe.read(aligned, [LAYER]))]
    from testbed.directions import load_direction

    null = matched_null(load_direction(path, layers=[LAYER]), histories, samples=50, seed=0).save(tmp_path / "n.pt")
    monitor = ReversionMonitor(DirectionSource(str(path), layers=[LAYER]), every_n_steps=2, matched_null=str(null))
    trainer(4, [monitor]).fit(copy.deepcopy(aligned), data())
    last = monitor.history[-1]
    for key in ("null_matched_p99", "exceeds_null_matched_p99", "exceed_frac_matched_p99", "exceeds_null_p99"):
        assert f"reversion/{key}/{LAYER}" in last
    assert last[f"reversion/exceeds_null_matched_p99/{LAYER}"] == float(
        last[f"reversion/cos_drift_vrev/{LAYER}"] > last[f"reversion/null_matched_p99/{LAYER}"])
    with pytest.raises(ConfigError, match="matched_null must be"):
        ReversionMonitor(str(path), matched_null="")


def _study(tmp_path: Path, seeds: list[int]) -> dict:
    from tests.helpers.paths import REPO_ROOT

    here = REPO_ROOT / "experiments" / "gravity_toy"
    study = yaml.safe_load((here / "study.yaml").read_text())
    for phase in [*study["phases"], study["final"]]:
        phase["config"] = str(here / phase["config"])
    study.pop("report", None)
    study["directions"]["null"] = {**study["directions"]["vrev"], "kind": "matched_null", "null_samples": 20}
    study.update(seeds=seeds, runs_dir=str(tmp_path / "runs"), arms={"plain": {}})
    return study


def test_plan_runs_every_seeds_shared_phases_before_a_matched_null(tmp_path: Path) -> None:
    from jsonargparse.typing import Path_fr

    from testbed.study.spec import ArmSpec, DirectionSpec, FinalPhaseSpec, PhaseSpec, validate_study

    spec = _study(tmp_path, [0, 1, 2])

    def phase(entry: dict, cls: type = PhaseSpec):
        return cls(**{**entry, "config": Path_fr(entry["config"])})

    def make(seeds: list[int]):
        directions = {k: DirectionSpec(**v) for k, v in spec["directions"].items()}
        return validate_study(spec["name"], spec["runs_dir"], seeds, [phase(p) for p in spec["phases"]],
                              directions, phase(spec["final"], FinalPhaseSpec), {"plain": ArmSpec()}, {})

    plan = build_plan(make([0, 1, 2]))
    kinds = [type(item).__name__ + (f":{item.phase}" if hasattr(item, "phase") else "") for item in plan.items]
    assert kinds[:6] == ["Run:pretrain", "Run:align"] * 3  # every seed's shared phases first
    nulls = [item for item in plan.items if isinstance(item, DirectionRun) and item.name == "null"]
    assert [sorted(w.seed for w, _ in item.others) for item in nulls] == [[1, 2], [0, 2], [0, 1]]
    with pytest.raises(ConfigError, match="at least two seeds"):
        make([0])
    with pytest.raises(ConfigError, match="null_samples is a setting of matched_null"):
        DirectionSpec(witness="a", reference="b", layers=[LAYER], null_samples=5)
