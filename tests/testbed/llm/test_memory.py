"""The pre-fit memory estimate counts the curvature account's per-example gradients: N safety examples × T trained
parameters × 4 bytes, for the largest Fisher-subspace callback (none for a random control)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.interventions import CurvatureMonitor, SubspaceBlocker
from testbed.llm.data import SafetyWorldDataModule
from testbed.llm.memory import estimate_memory, per_example_gradient_bytes, size


def test_per_example_gradients_are_n_by_p_by_four_bytes() -> None:
    data = SafetyWorldDataModule(safety_size=20)
    monitor = CurvatureMonitor(subspace={"d": 4, "n": 10}, fit_window=(1, 20))
    blocker = SubspaceBlocker(subspace={"d": 4})  # n unset: the whole safety batch (20)
    control = SubspaceBlocker(subspace={"d": 4, "method": "random"})
    assert per_example_gradient_bytes([monitor], 1000) == 10 * 1000 * 4
    assert per_example_gradient_bytes([monitor, blocker, control], 1000, data) == 20 * 1000 * 4  # the largest G
    assert per_example_gradient_bytes([monitor], 1000, float64=True) == 10 * 1000 * 8
    assert per_example_gradient_bytes([control], 1000, data) == 0
    plain = estimate_memory(1000, 100, 8, 2, 10, 2, 4)
    with_g = estimate_memory(1000, 100, 8, 2, 10, 2, 4, per_example_gradients=4000)
    assert with_g.total == plain.total + 4000 and "per-example gradients 0.0 MiB" in with_g.describe()
    assert "per-example" not in plain.describe()


def test_the_causal_lm_estimate_counts_them(tiny_gpt2) -> None:
    module, _ = tiny_gpt2(lora={"r": 2})
    data = SafetyWorldDataModule(safety_size=12)
    trained = sum(p.numel() for _, p in module.trainable_parameters())
    line = module.describe_memory("32-true", data, [CurvatureMonitor(subspace={"d": 4})])
    assert f"per-example gradients {size(12 * trained * 4)}" in line
    assert "per-example" not in module.describe_memory("32-true", data)


def test_fit_prints_them(run_cli, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monitor = {"class_path": "testbed.interventions.CurvatureMonitor",
               "init_args": {"subspace": {"d": 2, "n": 4}, "every_n_steps": 1, "fit_window": [1, 2]}}
    config = {"model": {"class_path": "testbed.llm.CausalLMModule",
                        "init_args": {"model": "gpt2", "lora": {"r": 2}}},
              "data": {"class_path": "testbed.llm.SafetyWorldDataModule",
                       "init_args": {"batch_size": 4, "safety_size": 4}},
              "trainer": {"max_steps": 2, "logger": False, "enable_checkpointing": False, "callbacks": [monitor],
                          "enable_progress_bar": False, "limit_val_batches": 0}}  # fmt: skip
    (tmp_path / "fit.yaml").write_text(json.dumps(config))
    with caplog.at_level("INFO"):
        assert run_cli(["fit", "--config", str(tmp_path / "fit.yaml")]) == 0
    line = next(r.getMessage() for r in caplog.records if "memory estimate" in r.getMessage())
    assert "per-example gradients" in line
