"""Containment: every folder a study derives stays inside the study folder, and the testbed deletes nothing it did
not create: not through a sweep value or a link that points outside, not a folder it did not write, not another
run's files that appeared while a refused run set up, not the saved config of an earlier run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers.gravity_runs import DATA, MODEL
from tests.helpers.hostile import quadratic_fit

TOY = quadratic_fit(2)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _foreign(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "precious.txt").write_text("not the testbed's\n")
    return folder


def _study(folder: Path, **changes) -> Path:
    (folder / "toy.yaml").write_text(yaml.safe_dump(TOY))
    study = {"name": "contained", "runs_dir": str(folder / "runs"), "seeds": [0],
             "final": {"name": "finetune", "config": "toy.yaml"}, "arms": {"plain": {}}, **changes}
    (folder / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return folder / "study.yaml"


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("testbed: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


@pytest.mark.parametrize("value", ["../../../escape", "a/../../../../escape", "/abs/../../x", "x\ny", "ok/seed=3"])
def test_a_sweep_value_that_leaves_the_study_folder_is_refused_before_anything_runs(tmp_path, run_cli, capsys, value):
    foreign = _foreign(tmp_path / "escape")
    study = _study(tmp_path, sweeps={"s": {"grid": {"model.init_args.sharpness": [value]}}})
    assert run_cli(["study", "--config", str(study)]) == 2
    assert "plain folder name" in _one_error(capsys)
    assert not (tmp_path / "runs").exists() and _files(foreign) == ["precious.txt"]


def test_a_link_out_of_the_study_folder_is_refused(tmp_path, run_cli, capsys):
    foreign = _foreign(tmp_path / "elsewhere")
    (tmp_path / "runs" / "contained").mkdir(parents=True)
    (tmp_path / "runs" / "contained" / "plain").symlink_to(foreign, target_is_directory=True)
    assert run_cli(["study", "--config", str(_study(tmp_path))]) == 2
    assert "outside the study folder" in _one_error(capsys)
    assert _files(foreign) == ["precious.txt"]


def test_a_run_folder_the_study_did_not_write_is_never_emptied(tmp_path, run_cli, capsys):
    foreign = _foreign(tmp_path / "runs" / "contained" / "plain" / "seed=0")
    assert run_cli(["study", "--config", str(_study(tmp_path)), "--rerun_changed", "true"]) == 2
    assert "did not write" in _one_error(capsys)
    assert _files(foreign) == ["precious.txt"]


def test_a_rerun_replaces_only_the_study_s_own_changed_run(tmp_path, run_cli, capsys):
    import json

    study = _study(tmp_path)
    assert run_cli(["study", "--config", str(study), "--quiet", "true"]) == 0
    run = tmp_path / "runs" / "contained" / "plain" / "seed=0"
    first = _files(run)
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump({**TOY, "trainer": {**TOY["trainer"], "max_steps": 3}}))
    assert run_cli(["study", "--config", str(study), "--quiet", "true"]) == 2  # changed: refused, nothing touched
    assert "different configuration" in _one_error(capsys) and _files(run) == first
    assert run_cli(["study", "--config", str(study), "--quiet", "true", "--rerun_changed", "true"]) == 0
    assert json.loads((run / "DONE.json").read_text())["global_step"] == 3


def _fit_config(path: Path, **init_args) -> Path:
    config = {
        "seed_everything": 0,
        "model": {"class_path": "toy_models.gravity.GravityMLP", "init_args": {**MODEL, **init_args}},
        "data": {"class_path": "toy_models.gravity.GravityData", "init_args": dict(DATA)},
        "trainer": {"max_steps": 2, "num_sanity_val_steps": 0, "limit_val_batches": 0, "enable_progress_bar": False,
                    "logger": {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "runs", "name": "shared", "version": "v"}}},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_a_refused_fit_leaves_another_run_s_files_and_folders_alone(tmp_path, run_cli, capsys):
    config = _fit_config(tmp_path / "fit.yaml", init_from=str(tmp_path / "missing.ckpt"))
    other = tmp_path / "runs" / "shared" / "other_run"
    writer = f'{{"class_path": "tests.helpers.hostile.WriteDuringSetup", "init_args": {{"path": "{other}"}}}}'
    assert run_cli(["fit", "--config", str(config), f"--trainer.callbacks=[{writer}]"]) == 2
    assert "missing.ckpt" in _one_error(capsys)
    assert _files(tmp_path / "runs") == ["shared", "shared/other_run", "shared/other_run/events.other"]


def test_a_refused_fit_does_not_overwrite_the_config_of_a_finished_run(tmp_path, run_cli, capsys):
    assert run_cli(["fit", "--config", str(_fit_config(tmp_path / "good.yaml"))]) == 0
    run = tmp_path / "runs" / "shared" / "v"
    before = {name: (run / name).read_bytes() for name in _files(run) if (run / name).is_file()}
    bad = _fit_config(tmp_path / "bad.yaml", init_from=str(tmp_path / "missing.ckpt"), hidden=32)
    assert run_cli(["fit", "--config", str(bad)]) == 2
    capsys.readouterr()
    assert {name: (run / name).read_bytes() for name in _files(run) if (run / name).is_file()} == before


@pytest.mark.parametrize("what", ["logger folder is a file", "vrev out is a folder", "NUL in a path"])
def test_output_paths_that_cannot_be_written_are_one_line(tmp_path, run_cli, capsys, what):
    config = _fit_config(tmp_path / "fit.yaml")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    args = {
        "logger folder is a file": ["fit", "--config", str(config),
                                    f"--trainer.logger.init_args.save_dir={tmp_path}/a_file"],
        "vrev out is a folder": ["vrev", "--config_path", str(config), "--witness_ckpt", "w.pt", "--reference_ckpt",
                                 "r.pt", "--layers", "[blocks.1.hidden]", "--out", str(tmp_path / "a_folder")],
        "NUL in a path": ["fit", "--config", str(config), "--trainer.logger.init_args.name=a\x00b"],
    }[what]
    assert run_cli(args) == 2
    message = _one_error(capsys)
    assert any(word in message for word in ("a_file", "a_folder", "NUL")), message
    assert _files(tmp_path) == sorted(["a_file", "a_folder", "fit.yaml"])


def test_a_read_only_runs_folder_is_one_line_and_nothing_is_written(tmp_path, run_cli, capsys, monkeypatch):
    import os

    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: make the permission check see what another user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == runs else real(p, mode, **kw))
    try:
        assert run_cli(["fit", "--config", str(_fit_config(tmp_path / "fit.yaml"))]) == 2
        message = _one_error(capsys)
        assert "not writable" in message and str(runs) in message
        assert _files(runs) == []
    finally:
        runs.chmod(0o755)


@pytest.mark.parametrize("overrides", [{"trainer.log_every_n_steps": 0},  # refused by the testbed before the fit
                                       {"model": {"init_args": {"init_from": None}}}])  # by Lightning (no model class)
def test_a_study_stopped_at_a_refused_run_keeps_the_finished_ones_and_nothing_of_the_refused(tmp_path, run_cli,
                                                                                             capsys, overrides):
    # the "late" arm's setting passes the config check and is refused as the run sets up
    study = _study(tmp_path, arms={"plain": {}, "late": {"overrides": overrides}})
    assert run_cli(["study", "--config", str(study), "--quiet", "true"]) == 2
    assert "arm 'late'" in _one_error(capsys)
    root = tmp_path / "runs" / "contained"
    assert (root / "plain" / "seed=0" / "DONE.json").is_file()
    assert not (root / "late").exists()  # no config, no event file, no folder
    assert run_cli(["study", "--config", str(_study(tmp_path)), "--quiet", "true"]) == 0  # resumes: plain is done
    assert "skip" in capsys.readouterr().out
