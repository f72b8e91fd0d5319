"""Non-finite state anywhere: weights after the last step and in every checkpoint (nothing non-finite is ever saved
under a name that looks finished), metrics written straight to the logger, and the checkpoint writer itself."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from testbed.checkpoint_io import SafeCheckpointIO
from testbed.guards import NonFiniteError
from testbed.io import load_torch_file
from testbed.report import read_scalars
from testbed.step_log import log_at_step
from testbed.testing import TinyData, TinyRegressor, quiet_trainer
from tests.helpers.gravity_runs import DATA, MODEL


def _config(path: Path, callbacks: list[dict], max_steps: int = 2, **trainer) -> Path:
    config = {
        "seed_everything": 0,
        "model": {"class_path": "toy_models.gravity.GravityMLP", "init_args": dict(MODEL)},
        "data": {"class_path": "toy_models.gravity.GravityData", "init_args": dict(DATA)},
        "trainer": {"max_steps": max_steps, "num_sanity_val_steps": 0, "limit_val_batches": 0,
                    "enable_progress_bar": False, "log_every_n_steps": 1, "callbacks": callbacks,
                    "logger": {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "runs", "name": "nf", "version": "v"}}, **trainer},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _poison(step: int) -> dict:
    return {"class_path": "tests.helpers.hostile.PoisonWeight", "init_args": {"step": step}}


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("testbed: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_weights_made_non_finite_by_the_last_step_fail_the_run_and_are_not_saved(tmp_path, run_cli, capsys):
    assert run_cli(["fit", "--config", str(_config(tmp_path / "c.yaml", [_poison(2)]))]) == 2
    message = _error(capsys)
    assert "non-finite" in message and "after step 2" in message and "= inf" in message
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_checkpoint_is_never_written_with_non_finite_weights(tmp_path, run_cli, capsys):
    every_step = {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(tmp_path / "ckpts"), "every_n_train_steps": 1, "save_top_k": -1,
                                "filename": "{step}"}}
    assert run_cli(["fit", "--config", str(_config(tmp_path / "c.yaml", [every_step, _poison(2)], 4))]) == 2
    assert "state in the checkpoint after step 2; nothing saved" in _error(capsys)
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["step=1.ckpt"]
    saved = load_torch_file(tmp_path / "ckpts" / "step=1.ckpt")["state_dict"]
    assert all(bool(torch.isfinite(t).all()) for t in saved.values())


def test_a_study_run_with_non_finite_final_weights_is_not_marked_done(tmp_path, run_cli, capsys):
    config = _config(tmp_path / "c.yaml", [])
    study = {"name": "nf", "runs_dir": str(tmp_path / "runs"), "seeds": [0],
             "final": {"name": "finetune", "config": str(config), "callbacks": [_poison(2)]}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert run_cli(["study", "--config", str(tmp_path / "study.yaml"), "--quiet", "true"]) == 2
    assert "non-finite" in _error(capsys)
    run = tmp_path / "runs" / "nf" / "finetune" / "seed=0"
    assert not (run / "DONE.json").exists() and not list(run.rglob("*.ckpt"))


def test_a_metric_written_straight_to_the_logger_is_checked(tmp_path, run_cli, capsys):
    logs_nan = {"class_path": "tests.helpers.hostile.LogValue", "init_args": {"step": 1, "tag": "probe/value"}}
    assert run_cli(["fit", "--config", str(_config(tmp_path / "c.yaml", [logs_nan]))]) == 2
    assert "non-finite logged metric at step 1: probe/value = nan" in _error(capsys)
    assert "probe/value" not in read_scalars(tmp_path / "runs" / "nf" / "v")


def test_log_at_step_refuses_non_finite_values_before_writing_any():
    written = []

    class Recorder:
        def log_metrics(self, metrics, step):
            written.append((metrics, step))

    trainer = quiet_trainer(1)
    trainer.fit(TinyRegressor(), TinyData())
    trainer.loggers = [Recorder()]  # type: ignore[list-item]
    assert log_at_step(trainer, {"a": 1.0}) == {"a": 1.0} and written == [({"a": 1.0}, 1)]
    for bad in (math.nan, math.inf, -math.inf, torch.tensor(math.nan)):
        with pytest.raises(NonFiniteError, match="non-finite logged metric at step 1: b"):
            log_at_step(trainer, {"a": 2.0, "b": bad})
    assert written == [({"a": 1.0}, 1)]


def test_the_checkpoint_writer_refuses_non_finite_weights(tmp_path):
    with pytest.raises(NonFiniteError, match="w = nan"):
        SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.tensor([1.0, math.nan])}}, tmp_path / "x.ckpt")
    assert not list(tmp_path.iterdir())


def test_the_causal_lm_divergence_goes_through_the_guard(tiny_gpt2):
    """No FloatingPointError from the module: the guard's NonFiniteError, reduced across processes, stops the run."""
    from torch.utils.data import DataLoader

    module, tokenizer = tiny_gpt2()
    module.optimizer_settings.lr = 1e30
    module.optimizer_settings.name = "sgd"
    batch = {"input_ids": torch.ones(2, 6, dtype=torch.long) * 5, "attention_mask": torch.ones(2, 6, dtype=torch.long),
             "labels": torch.ones(2, 6, dtype=torch.long) * 5}
    from testbed.guards import NonFiniteGuard

    trainer = quiet_trainer(6, callbacks=[NonFiniteGuard()])
    with pytest.raises(NonFiniteError, match="non-finite training loss at step"):
        trainer.fit(module, DataLoader([batch] * 8, batch_size=None))
