"""The resume rules of ``testbed.resume``: on ``--ckpt_path`` the config's values are applied (optimizer settings
reach the restored optimizer) or refused (model class, optimizer kind, weights that do not fit) with one line; the
checkpoint never silently replaces them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from testbed.io import load_torch_file
from testbed.resume import flat_settings
from tests.helpers.gravity_runs import DATA, MODEL


def _config(path: Path, model: dict | None = None, class_path: str = "toy_models.gravity.GravityMLP",
            max_steps: int = 4) -> Path:
    config = {
        "seed_everything": 0,
        "model": {"class_path": class_path, "init_args": model if model is not None else dict(MODEL)},
        "data": {"class_path": "toy_models.gravity.GravityData", "init_args": dict(DATA)},
        "trainer": {"max_steps": max_steps, "num_sanity_val_steps": 0, "limit_val_batches": 0,
                    "enable_progress_bar": False, "logger": False,
                    "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(path.parent / "ckpts"), "every_n_train_steps": 2,
                                                 "save_top_k": -1, "filename": "{step}"}}]},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def checkpoint(tmp_path, run_cli) -> Path:
    assert run_cli(["fit", "--config", str(_config(tmp_path / "first.yaml", max_steps=2))]) == 0
    return tmp_path / "ckpts" / "step=2.ckpt"


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("testbed: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_an_explicit_learning_rate_is_applied_to_the_restored_optimizer(tmp_path, run_cli, capsys, checkpoint):
    assert load_torch_file(checkpoint)["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.01)
    capsys.readouterr()
    faster = _config(tmp_path / "faster.yaml", {**MODEL, "optimizer": {"lr": 0.05, "weight_decay": 0.1}})
    assert run_cli(["fit", "--config", str(faster), "--ckpt_path", str(checkpoint)]) == 0
    err = capsys.readouterr().err
    assert "optimizer lr=0.05 (checkpoint: 0.01), optimizer weight_decay=0.1 (checkpoint: 0.0)" in err
    group = load_torch_file(tmp_path / "ckpts" / "step=4.ckpt")["optimizer_states"][0]["param_groups"][0]
    assert group["lr"] == pytest.approx(0.05) and group["weight_decay"] == pytest.approx(0.1)


def test_a_model_width_that_differs_is_refused_naming_it(tmp_path, run_cli, capsys, checkpoint):
    wider = _config(tmp_path / "wider.yaml", {**MODEL, "hidden": 32})
    assert run_cli(["fit", "--config", str(wider), "--ckpt_path", str(checkpoint)]) == 2
    message = _error(capsys)
    assert "does not fit GravityMLP" in message and "hidden=32 (checkpoint: 16)" in message
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["step=2.ckpt"]


def test_another_model_class_is_refused(tmp_path, run_cli, capsys, checkpoint):
    other = _config(tmp_path / "other.yaml", {"width": 8}, class_path="testbed.testing.TinyRegressor")
    assert run_cli(["fit", "--config", str(other), "--ckpt_path", str(checkpoint)]) == 2
    assert "holds a toy_models.gravity.GravityMLP, not the config's testbed.testing.TinyRegressor" in _error(capsys)


def test_another_optimizer_kind_is_refused(tmp_path, run_cli, capsys, checkpoint):
    sgd = _config(tmp_path / "sgd.yaml", {**MODEL, "optimizer": {"name": "sgd", "lr": 0.01}})
    assert run_cli(["fit", "--config", str(sgd), "--ckpt_path", str(checkpoint)]) == 2
    assert "optimizer state belongs to another optimizer than the config's SGD" in _error(capsys)
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["step=2.ckpt"]


def test_settings_compare_by_value_through_class_paths_and_tuples():
    nested = {"class_path": "x.Y", "init_args": {"betas": (0.9, 0.99), "opt": {"init_args": {"lr": 1}}}}
    assert flat_settings(nested) == {"class_path": "x.Y", "betas": [0.9, 0.99], "opt.lr": 1}
