"""``python -m testbed`` on the toys: fit/validate/test verbs, determinism, and one clear error for bad configs."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

QUARTIC = "experiments/toy_regimes/quartic.yaml"
NEURAL = "experiments/neural_toy/neural.yaml"
SHORT = ["--trainer.max_steps", "15", "--trainer.callbacks.init_args.fit_window", "[5, 15]"]


def all_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir)).Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_same_seed_gives_identical_logged_metrics(run_cli, tmp_path):
    for version in ("a", "b"):
        assert run_cli(["fit", "--config", NEURAL, *SHORT, "--trainer.logger.init_args.version", version]) == 0
    a, b = (all_scalars(tmp_path / "runs" / "neural_toy" / v) for v in ("a", "b"))
    assert {"curvature/delta_u", "curvature/disp_in_S", "curvature/ratio", "curvature/loglog_slope",
            "curvature/exponent", "curvature/gamma"} <= set(a)
    assert a == b


def test_validate_and_test_verbs(run_cli, capsys):
    assert run_cli(["validate", "--config", QUARTIC, "--trainer.limit_val_batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "val/align_loss" in out and "val/ft_loss" in out
    assert run_cli(["test", "--config", NEURAL, "--trainer.limit_test_batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "test/align_loss" in out and "test/ft_loss" in out


def test_fit_then_validate_from_the_checkpoint(run_cli, tmp_path, capsys):
    assert run_cli(["fit", "--config", QUARTIC, *SHORT]) == 0
    ckpt = next((tmp_path / "runs" / "quartic" / "aic_holds" / "checkpoints").glob("*.ckpt"))
    capsys.readouterr()
    args = ["validate", "--config", QUARTIC, "--trainer.limit_val_batches", "1", "--ckpt_path", str(ckpt)]
    assert run_cli(args) == 0
    out = capsys.readouterr().out
    assert "val/align_loss" in out  # the fine-tuned θ has left the aligned minimum


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.class_path", "toy_models.quadratic.NoSuchToy"], "NoSuchToy"),
        (["--model.init_args.rank", "32"], "rank k must satisfy 1 <= k < dim"),
        (["--model.init_args.sharpness", "-1"], "sharpness must be positive"),
        (["--model.init_args.lr", "10"], "gradient descent diverges"),
        (["--data.init_args.dim", "16"], "data.init_args.dim=16 differs from model.init_args.dim=32"),
    ],
)
def test_bad_config_is_one_clear_error(run_cli, capsys, tmp_path, args, message):
    assert run_cli(["fit", "--config", QUARTIC, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("testbed: error:") and message in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not list((tmp_path / "runs").glob("**/checkpoints/*.ckpt"))  # nothing half-written


def test_neural_subspace_not_below_alignment_examples_is_one_clear_error(run_cli, capsys, tmp_path):
    assert run_cli(["fit", "--config", NEURAL, "--trainer.callbacks.init_args.subspace.d", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("testbed: error:") and "d=8 must be below the number of safety examples N=8" in err[-1]
    assert not (tmp_path / "runs").exists()  # refused before the first step: nothing left behind


def test_fit_keeps_the_config_callbacks_and_adds_the_reliability_defaults(tmp_path, monkeypatch):
    """Under a subcommand the CLI reads the trainer section through its public config, not the flat one."""
    from pytorch_lightning.callbacks import ModelSummary

    from testbed.checkpoint_io import ResumableRng, SafeCheckpointIO
    from testbed.cli import TestbedCLI
    from testbed.guards import NonFiniteGuard
    from tests.helpers.paths import REPO_ROOT

    monkeypatch.chdir(tmp_path)
    cli = TestbedCLI(args=["fit", "--config", str(REPO_ROOT / QUARTIC), "--trainer.max_steps", "2",
                           "--trainer.callbacks.init_args.fit_window", "[1, 2]", "--trainer.logger", "false",
                           "--trainer.callbacks+=pytorch_lightning.callbacks.ModelSummary"])  # fmt: skip
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert kinds.index(ModelSummary) < kinds.index(NonFiniteGuard) < kinds.index(ResumableRng)
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)
    assert cli.trainer.global_step == 2
