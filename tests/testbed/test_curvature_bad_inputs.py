"""Bad input to the curvature account through the real CLI: one ``testbed: error:`` line, exit status 2, nothing left
behind (the run folder the logger had started is removed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.gravity_runs import DATA, MODEL


def _config(tmp: Path, model: str = "toy_models.gravity.GravityMLP", data: dict | None = None,
            monitor: dict | None = None, max_steps: int = 2) -> Path:  # fmt: skip
    config = {
        "seed_everything": 0,
        "model": {"class_path": model, "init_args": dict(MODEL)},
        "data": {"class_path": "toy_models.gravity.GravityData", "init_args": {**DATA, **(data or {})}},
        "trainer": {
            "max_steps": max_steps, "accelerator": "cpu", "num_sanity_val_steps": 0, "limit_val_batches": 0,
            "enable_progress_bar": False, "log_every_n_steps": 1,
            "callbacks": [{"class_path": "testbed.interventions.CurvatureMonitor",
                           "init_args": {"subspace": {"d": 4}, "every_n_steps": 1, "fit_window": [1, 2],
                                         **(monitor or {})}}],
            "logger": {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": "runs", "name": "bad"}},
        },
    }  # fmt: skip
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _llm_config(tmp: Path) -> Path:
    (tmp / "train.jsonl").write_text(json.dumps({"prompt": "list item 1", "response": "ok"}) + "\n")
    (tmp / "safety.jsonl").write_text("\n")
    config = yaml.safe_load(_config(tmp).read_text())
    config["model"] = {"class_path": "testbed.llm.CausalLMModule",
                       "init_args": {"model": "gpt2", "model_config": {"n_layer": 1, "n_head": 2, "n_embd": 8}}}
    config["data"] = {"class_path": "testbed.llm.data.JsonlDataModule",
                      "init_args": {"train_path": str(tmp / "train.jsonl"), "safety_path": str(tmp / "safety.jsonl"),
                                    "batch_size": 1, "max_length": 16}}  # fmt: skip
    path = tmp / "llm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _tiny_config(tmp: Path) -> Path:
    """A model and data without the curvature protocol (TinyRegressor takes none of the gravity model's arguments)."""
    config = yaml.safe_load(_config(tmp).read_text())
    config["model"] = {"class_path": "testbed.testing.TinyRegressor"}
    config["data"] = {"class_path": "testbed.testing.TinyData"}
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


CASES = {
    "d_not_below_n": (lambda t: _config(t, data={"safety_size": 4}), "d=4 must be below the number of safety examples"),
    "d_not_below_parameters": (lambda t: _config(t, data={"safety_size": 600}, monitor={"subspace": {"d": 500}}),
                               "d=500 must be below the number of trainable parameters (467)"),
    "empty_safety_set": (_llm_config, "safety.jsonl: no examples"),
    "no_safety_set": (lambda t: _tiny_config(t), "TinyData has no safety set"),
    "no_trainable_parameters": (lambda t: _config(t, model="tests.helpers.curvature.FrozenGravity"),
                                "has no trainable parameters"),
    "non_finite_per_example_gradients": (lambda t: _config(t, model="tests.helpers.curvature.NaNSafetyGravity"),
                                         "per-example gradient of safety example"),
    "fit_window_outside_the_run": (lambda t: _config(t, monitor={"fit_window": [5, 10]}),
                                   "fit_window [5, 10] lies outside the run (max_steps=2)"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case, run_cli, capsys, tmp_path):
    make, message = CASES[case]
    path = make(tmp_path)
    assert run_cli(["fit", "--config", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert err[-1].startswith("testbed: error:") and message in err[-1], err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.*")), "a half-written run"
