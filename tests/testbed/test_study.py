"""The study runner on the project's quadratic toy: a tiny history (pretrain → align → finetune) with a v_rev
direction between the shared phases and the arms, two arms and two seeds; resume, skip, refusal of changed
configs, broken configs, the TensorBoard side-by-side layout, and the report's numbers against the event files."""

from __future__ import annotations

import io
import json
import os
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import yaml

from testbed import errors
from testbed.errors import ConfigError
from testbed.study import layout

TOY = {
    "seed_everything": 0,
    "model": {
        "class_path": "toy_models.quadratic.QuadraticToy",
        "init_args": {"dim": 6, "rank": 2, "sharpness": 4.0, "coupling": 0.5, "lr": 0.01},
    },
    "data": {"class_path": "toy_models.quadratic.QuadraticData", "init_args": {"dim": 6, "epoch_length": 50}},
    "trainer": {"max_steps": 5, "log_every_n_steps": 1, "num_sanity_val_steps": 0, "limit_val_batches": 0,
                "callbacks": [{"class_path": "testbed.interventions.CurvatureMonitor",
                               "init_args": {"subspace": {"d": 2}, "every_n_steps": 1, "fit_window": [1, 2]}}]},
}


def write_study(folder: Path, name: str = "tiny", **changes: object) -> Path:
    """Phase configs + a study file in ``folder``; ``changes`` replace top-level study keys."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toy.yaml").write_text(yaml.safe_dump(TOY))
    study = {
        "name": name,
        "runs_dir": str(folder / "runs"),
        "seeds": [0, 1],
        "phases": [
            {"name": "pretrain", "config": "toy.yaml", "overrides": {"trainer.max_steps": 4}},
            {"name": "align", "config": "toy.yaml", "overrides": {"trainer.max_steps": 3}},
        ],
        "directions": {"vrev": {"witness": "pretrain", "reference": "align", "layers": ["blocks.0.readout"]}},
        "final": {"name": "finetune", "config": "toy.yaml"},
        "arms": {
            "plain": {},
            "monitored": {
                "overrides": {"model.init_args.coupling": 1.0},
                "callbacks": [{"class_path": "testbed.interventions.ReversionMonitor",
                               "init_args": {"direction": {"path": "{directions.vrev}"}}}],
            },
        },
    }
    study.update(changes)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def run_study(path: Path, *extra: str) -> str:
    """``python -m testbed study --config PATH --quiet true ...`` in-process; returns what it printed."""
    from testbed.__main__ import run_verb

    out = io.StringIO()
    with redirect_stdout(out):
        run_verb(["study", "--config", str(path), "--quiet", "true", *extra])
    return out.getvalue()


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp("study")
    path = write_study(folder)
    return path, folder / "runs" / "tiny", run_study(path)


def done(run_dir: Path) -> dict:
    return json.loads((run_dir / "DONE.json").read_text())


def test_layout_commands_and_phase_chaining(study: tuple[Path, Path, str]) -> None:
    _, root, printed = study
    for seed in (0, 1):
        for version in (f"_shared/pretrain/seed={seed}", f"_shared/align/seed={seed}", f"plain/seed={seed}",
                        f"monitored/seed={seed}"):
            run_dir = root / version
            last = run_dir / "checkpoints" / "last.ckpt"
            assert last.is_file()
            # Lightning's own checkpoint of the final step is reused (a hard link), not saved a second time
            assert any(p != last and os.path.samefile(p, last) for p in last.parent.iterdir())
            assert f"python -m testbed fit --config {run_dir / 'run_config.yaml'}" in printed
            config = yaml.safe_load((run_dir / "run_config.yaml").read_text())
            assert config["seed_everything"] == seed
            assert config["trainer"]["logger"]["init_args"]["version"] == version
        align = yaml.safe_load((root / f"_shared/align/seed={seed}/run_config.yaml").read_text())
        ckpt = "checkpoints/last.ckpt"
        assert align["model"]["init_args"]["init_from"] == str(root / f"_shared/pretrain/seed={seed}" / ckpt)
        arm = yaml.safe_load((root / f"monitored/seed={seed}/run_config.yaml").read_text())
        assert arm["model"]["init_args"]["init_from"] == str(root / f"_shared/align/seed={seed}" / ckpt)
        assert arm["model"]["init_args"]["coupling"] == 1.0
        vrev = root / f"_shared/_directions/seed={seed}/vrev.pt"
        assert vrev.is_file()
        assert arm["trainer"]["callbacks"][-1]["init_args"]["direction"]["path"] == str(vrev)
        assert done(root / f"plain/seed={seed}")["global_step"] == 5
    assert printed.count("python -m testbed fit --config") == 8
    assert "compute direction 'vrev' seed 0" in printed
    # the arm with the direction callback logged the reversion metrics under the shared tag scheme
    from testbed.study.tensorboard import scalar_tags

    assert any(t.startswith("reversion/") for t in scalar_tags(root / "monitored/seed=0"))


def test_run_folders_round_trip_through_the_layout(study: tuple[Path, Path, str]) -> None:
    """Every folder the runner wrote parses back (``layout.parse_run``) to the run recorded in it, and rebuilds
    (``layout.run_dir``) to itself; the logger version in its config is the key's version."""
    _, root, _ = study
    finished = sorted(p.parent for p in root.rglob("DONE.json"))
    assert len(finished) == 8
    for folder in finished:
        key = layout.parse_run(root, folder)
        record = done(folder)
        assert layout.run_dir(root, key) == folder
        assert (key.seed, key.phase if key.shared else key.arm) == (record["seed"], record["phase"] if
                                                                    record["arm"] is None else record["arm"])
        assert layout.is_finished(folder)
        assert Path(record["checkpoint"]) == layout.checkpoint_file(folder)
        config = yaml.safe_load(layout.run_config_file(folder).read_text())
        assert config["trainer"]["logger"]["init_args"]["version"] == key.version
    for seed in (0, 1):
        assert layout.direction_file(root, "vrev", seed).is_file()
        assert json.loads(layout.direction_done_file(root, "vrev", seed).read_text())["seed"] == seed


def test_printed_command_reproduces_the_run(study: tuple[Path, Path, str], tmp_path: Path,
                                            run_cli: object) -> None:
    """Each phase stays a plain fit: the written config, run alone, gives the study's numbers (same seed)."""
    _, root, _ = study
    run_dir = root / "plain/seed=1"
    code = run_cli(["fit", "--config", str(run_dir / "run_config.yaml"),
                    f"--trainer.logger.init_args.save_dir={tmp_path / 'again'}"])
    assert code == 0
    from testbed.report import read_scalars

    alone = read_scalars(tmp_path / "again" / "tiny" / "plain" / "seed=1")
    in_study = read_scalars(run_dir)
    np.testing.assert_array_equal(alone["curvature/delta_u"][1], in_study["curvature/delta_u"][1])
    assert alone["curvature/delta_u"][1][-1] == pytest.approx(done(run_dir)["metrics"]["curvature/delta_u"], rel=1e-6)


def test_rerun_skips_finished_runs(study: tuple[Path, Path, str]) -> None:
    path, root, _ = study
    events_before = sorted(p.name for p in root.rglob("events.out.tfevents.*") if "study_layout" not in p.name)
    printed = run_study(path)
    assert printed.count(": finished earlier") == 10  # 4 shared runs + 2 directions + 4 arm runs
    assert "ran 0, skipped 10" in printed
    assert "python -m testbed fit" not in printed
    events_after = sorted(p.name for p in root.rglob("events.out.tfevents.*") if "study_layout" not in p.name)
    assert events_after == events_before


def test_interrupted_run_is_redone_alone_and_deterministically(study: tuple[Path, Path, str]) -> None:
    path, root, _ = study
    run_dir = root / "monitored/seed=0"
    before = done(run_dir)
    (run_dir / "DONE.json").unlink()  # as if the process died before the end of this run
    printed = run_study(path)
    assert "restart (unfinished): phase 'finetune' arm 'monitored' seed 0" in printed
    assert "ran 1, skipped 9" in printed
    after = done(run_dir)
    assert after["metrics"] == before["metrics"]
    assert after["fingerprint"] == before["fingerprint"]


def test_changed_config_is_refused_then_redone_on_request(study: tuple[Path, Path, str], tmp_path: Path) -> None:
    path, root, _ = study
    data = yaml.safe_load(path.read_text())
    data["arms"]["plain"] = {"overrides": {"model.init_args.lr": 0.02}}
    changed = tmp_path / "study.yaml"
    changed.write_text(yaml.safe_dump(data))
    shutil.copy(path.parent / "toy.yaml", tmp_path / "toy.yaml")
    with pytest.raises(ConfigError, match=r"phase 'finetune' arm 'plain' seed 0 finished earlier with a different"):
        run_study(changed)
    assert done(root / "plain/seed=0")["metrics"]  # untouched


def test_broken_phase_config_stops_before_running_and_names_the_phase(study: tuple[Path, Path, str],
                                                                      tmp_path: Path) -> None:
    path, root, _ = study
    data = yaml.safe_load(path.read_text())
    broken = {**TOY, "model": {**TOY["model"], "init_args": {**TOY["model"]["init_args"], "no_such_knob": 1}}}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    shutil.copy(path.parent / "toy.yaml", tmp_path / "toy.yaml")
    data["phases"][1]["config"] = "broken.yaml"
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(data))
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("DONE.json")}
    with pytest.raises(ConfigError, match=r"phase 'align': invalid fit config.*no_such_knob"):
        run_study(tmp_path / "study.yaml")
    assert {p: p.stat().st_mtime_ns for p in root.rglob("DONE.json")} == stamps


def test_direction_with_an_unknown_layer_stops_the_study_naming_it(study: tuple[Path, Path, str],
                                                                    tmp_path: Path) -> None:
    path, root, _ = study
    data = yaml.safe_load(path.read_text())
    data["directions"]["bad"] = {"witness": "pretrain", "reference": "align", "layers": ["blocks.9.nope"]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(data))
    shutil.copy(path.parent / "toy.yaml", tmp_path / "toy.yaml")
    with pytest.raises(errors.TestbedError, match=r"study stopped at direction 'bad' seed 0: .*blocks.9.nope"):
        run_study(tmp_path / "study.yaml")
    assert not (root / "_shared/_directions/seed=0/bad.pt").exists()
    assert (root / "_shared/_directions/seed=0/vrev.pt").is_file()


def test_phase_failing_at_run_time_stops_the_study_and_keeps_finished_runs(tmp_path: Path) -> None:
    """The final phase's model does not fit the shared phase's checkpoint (dim 8 vs 6): caught when it loads."""
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump({**TOY, "model": {**TOY["model"], "init_args": {
        **TOY["model"]["init_args"], "dim": 8}}, "data": {**TOY["data"], "init_args": {"dim": 8}}}))
    path = write_study(tmp_path, name="fails", seeds=[0], directions={},
                       phases=[{"name": "pretrain", "config": "toy.yaml", "overrides": {"trainer.max_steps": 2}}],
                       final={"name": "finetune", "config": "wide.yaml"}, arms={"plain": {}})
    with pytest.raises(errors.TestbedError, match=r"study stopped at phase 'finetune' arm 'plain' seed 0: init_from="):
        run_study(path)
    root = tmp_path / "runs" / "fails"
    assert done(root / "_shared/pretrain/seed=0")["global_step"] == 2
    assert not (root / "plain/seed=0/DONE.json").exists()


def test_study_file_errors_name_the_culprit(tmp_path: Path) -> None:
    bad_ref = write_study(tmp_path, arms={"x": {"callbacks": [{"class_path": "a.B", "init_args": {
        "p": "{directions.nope}"}}]}})
    with pytest.raises(ConfigError, match=r"arm 'x': placeholder \{directions.nope\} names no direction"):
        run_study(bad_ref)
    bad_witness = write_study(tmp_path, directions={"v": {"witness": "finetune", "reference": "align",
                                                          "layers": ["blocks.0.readout"]}})
    with pytest.raises(ConfigError, match=r"direction 'v': witness 'finetune' is not a shared phase"):
        run_study(bad_witness)
    twice = write_study(tmp_path, phases=[{"name": "p", "config": "toy.yaml"}, {"name": "p", "config": "toy.yaml"}],
                        directions={})
    with pytest.raises(ConfigError, match="phase names must be distinct"):
        run_study(twice)
    (tmp_path / "bad.yaml").write_text("a: [1\nb: 2\n")
    bad_yaml = write_study(tmp_path, phases=[{"name": "p", "config": "bad.yaml"}], directions={}, arms={"a": {}})
    with pytest.raises(ConfigError, match=r"phase 'p': .*bad.yaml is not valid YAML \(line 2, column 2\)"):
        run_study(bad_yaml)


def test_dry_run_writes_configs_and_runs_nothing(tmp_path: Path) -> None:
    placeholders = {"overrides": {"trainer.default_root_dir": "{phases.align.ckpt}"}, "callbacks": [
        {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": {"dirpath": "{run_dir}/extra"}}]}
    path = write_study(tmp_path, name="dry", directions={}, arms={"a": placeholders},
                       sweeps={"grid": {"base": "a", "grid": {"model.init_args.sharpness": [1.0, 2.0],
                                                              "model.init_args.coupling": [0.0, 0.5]}}})
    printed = run_study(path, "--dry_run", "true")
    root = tmp_path / "runs" / "dry"
    configs = sorted(root.rglob("run_config.yaml"))
    assert len(configs) == 2 * (2 + 5)  # seeds x (2 shared phases + arm a + 4 sweep points)
    assert printed.count("python -m testbed fit --config") == len(configs)
    point = yaml.safe_load((root / "grid/sharpness=2,coupling=0.5/seed=1/run_config.yaml").read_text())
    assert point["model"]["init_args"]["sharpness"] == 2.0 and point["model"]["init_args"]["coupling"] == 0.5
    assert not list(root.rglob("DONE.json"))
    arm = yaml.safe_load((root / "a/seed=1/run_config.yaml").read_text())["trainer"]
    assert arm["default_root_dir"] == str(root / "_shared/align/seed=1/checkpoints/last.ckpt")
    assert arm["callbacks"][-1]["init_args"]["dirpath"] == str(root / "a/seed=1") + "/extra"


MONITOR = {"class_path": "testbed.interventions.ReversionMonitor",
           "init_args": {"direction": {"path": "{directions.vrev}"}, "every_n_steps": 2}}
BLOCKER = {"class_path": "testbed.interventions.UpdateProjectionBlocker",
           "init_args": {"direction": {"path": "{directions.vrev}", "random": True, "random_seed": "{seed}"}}}


def _dry_run_configs(folder: Path, final: dict, arms: dict) -> dict[str, dict]:
    path = write_study(folder, name="inherit", final=final, arms=arms,
                       sweeps={"grid": {"base": "blocked", "grid": {"model.init_args.sharpness": [1.0, 2.0]}}})
    run_study(path, "--dry_run", "true")
    root = folder / "runs" / "inherit"
    return {str(p.relative_to(root)): yaml.safe_load(p.read_text()) for p in sorted(root.rglob("run_config.yaml"))}


def test_arms_get_the_final_phase_callbacks_before_their_own(tmp_path: Path) -> None:
    final = {"name": "finetune", "config": "toy.yaml", "callbacks": [MONITOR]}
    inherited = _dry_run_configs(tmp_path / "a", final, {"plain": {}, "blocked": {"callbacks": [BLOCKER]}})
    root = tmp_path / "a" / "runs" / "inherit"
    for arm, expected in (("plain", ["ReversionMonitor"]), ("blocked", ["ReversionMonitor", "UpdateProjectionBlocker"]),
                          ("grid/sharpness=2", ["ReversionMonitor", "UpdateProjectionBlocker"])):
        for seed in (0, 1):
            callbacks = inherited[f"{arm}/seed={seed}/run_config.yaml"]["trainer"]["callbacks"][1:]  # after toy.yaml's
            assert [cb["class_path"].rsplit(".", 1)[1] for cb in callbacks] == expected
            assert callbacks[0]["init_args"]["direction"]["path"] == str(layout.direction_file(root, "vrev", seed))
            assert callbacks[-1]["init_args"].get("random_seed", seed) == seed
    # the same study with the monitor written in every arm resolves to the very same run configs
    repeated = _dry_run_configs(tmp_path / "b", {"name": "finetune", "config": "toy.yaml"},
                                {"plain": {"callbacks": [MONITOR]}, "blocked": {"callbacks": [MONITOR, BLOCKER]}})
    as_text = {k: json.dumps(v).replace(str(tmp_path / "b"), str(tmp_path / "a")) for k, v in repeated.items()}
    assert as_text == {k: json.dumps(v) for k, v in inherited.items()}


def test_a_sweep_can_set_a_value_inside_the_base_arms_callback(tmp_path: Path) -> None:
    blocker = {**BLOCKER, "init_args": {**BLOCKER["init_args"], "projection": {"every_n_steps": 1}}}
    key = "callbacks.0.init_args.projection.every_n_steps"
    path = write_study(tmp_path, name="cb", arms={"blocked": {"callbacks": [blocker]}},
                       sweeps={"every": {"base": "blocked", "grid": {key: [2, 5]}}})
    run_study(path, "--dry_run", "true")
    root = tmp_path / "runs" / "cb"
    for value in (2, 5):
        callbacks = yaml.safe_load((root / f"every/every_n_steps={value}/seed=0/run_config.yaml").read_text())[
            "trainer"]["callbacks"]
        assert callbacks[-1]["init_args"]["projection"]["every_n_steps"] == value
    base = yaml.safe_load((root / "blocked/seed=0/run_config.yaml").read_text())["trainer"]["callbacks"]
    assert base[-1]["init_args"]["projection"]["every_n_steps"] == 1  # the base arm keeps its own value
    beyond = write_study(tmp_path, name="cb2", arms={"blocked": {"callbacks": [blocker]}},
                         sweeps={"bad": {"base": "blocked", "grid": {"callbacks.3.init_args.x": [1]}}})
    with pytest.raises(ConfigError, match=r"sweep 'bad' \(the base arm's callbacks\): override 'callbacks.3"):
        run_study(beyond)


def test_final_phase_callbacks_are_checked(tmp_path: Path) -> None:
    unknown = write_study(tmp_path, final={"name": "finetune", "config": "toy.yaml", "callbacks": [
        {"class_path": "a.B", "init_args": {"p": "{directions.nope}"}}]})
    with pytest.raises(ConfigError, match=r"phase 'finetune': placeholder \{directions.nope\} names no direction"):
        run_study(unknown)
    no_class = write_study(tmp_path, final={"name": "finetune", "config": "toy.yaml", "callbacks": [{"x": 1}]})
    with pytest.raises(ConfigError, match=r"phase 'finetune': each callback needs a class_path"):
        run_study(no_class)


def test_tensorboard_layout_and_hparams(study: tuple[Path, Path, str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, root, _ = study
    acc = EventAccumulator(str(root), size_guidance={"tensors": 0})
    acc.Reload()
    layout = layout_pb2.Layout.FromString(acc.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for cat in layout.category for chart in cat.chart}
    assert charts["curvature/delta_u"] == [r"^curvature/delta_u$"]
    assert any(title.startswith("reversion/") for title in charts)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        acc.SummaryMetadata("_hparams_/experiment").plugin_data.content).experiment
    assert "curvature/delta_u" in {m.name.tag for m in experiment.metric_infos}
    assert {"arm", "seed", "phase"} <= {h.name for h in experiment.hparam_infos}
    run = EventAccumulator(str(root / "monitored/seed=1"))
    run.Reload()
    session = plugin_data_pb2.HParamsPluginData.FromString(
        run.SummaryMetadata("_hparams_/session_start_info").plugin_data.content).session_start_info
    assert session.hparams["arm"].string_value == "monitored"
    assert session.hparams["seed"].number_value == 1.0
    assert session.hparams["model.coupling"].number_value == 1.0
    assert session.hparams["model.class_path"].string_value == "toy_models.quadratic.QuadraticToy"


def test_report_numbers_equal_the_event_files(study: tuple[Path, Path, str], tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from testbed.report import build_report

    _, root, _ = study
    payload = build_report(root, steps=[2, 4], loglog=["curvature/delta_u"], out=tmp_path, plots=False)
    assert {(r["arm"], r["seed"]) for r in payload["runs"]} == {("plain", 0), ("plain", 1), ("monitored", 0),
                                                                ("monitored", 1)}
    for row in payload["summary"]:
        if row["metric"] != "curvature/delta_u":
            continue
        direct = []
        for seed in (0, 1):
            acc = EventAccumulator(str(root / row["arm"] / f"seed={seed}"))
            acc.Reload()
            direct.append([e.value for e in acc.Scalars("curvature/delta_u") if e.step <= row["step"]][-1])
        assert row["mean"] == pytest.approx(np.mean(direct), rel=1e-12)
        assert row["std"] == pytest.approx(np.std(direct, ddof=1), rel=1e-9, abs=1e-300)
    assert {(r["arm"], r["step"]) for r in payload["summary"] if r["metric"] == "curvature/delta_u"} == {
        ("plain", 2), ("plain", 4), ("monitored", 2), ("monitored", 4)}


def test_progress_line_names_the_run_step_and_loss() -> None:
    from types import SimpleNamespace

    import torch

    from testbed.study.progress import StudyProgress

    stream = io.StringIO()
    progress = StudyProgress("[3/12] phase 'finetune' arm 'plain' seed 1", every_s=0.0, stream=stream)
    trainer = SimpleNamespace(global_step=0, max_steps=10, estimated_stepping_batches=10, callback_metrics={})
    progress.on_train_start(trainer, None)
    trainer.global_step, trainer.callback_metrics = 3, {"train/loss": torch.tensor(0.25), "val/x": torch.tensor(1.0)}
    progress.on_train_batch_end(trainer)
    progress.on_train_end(trainer, None)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[3/12] phase 'finetune' arm 'plain' seed 1  step 0/10 (0%)")
    assert lines[-1].startswith("[3/12] phase 'finetune' arm 'plain' seed 1  step 3/10 (30%)  train/loss=0.25  (")
    assert len(lines) == 3
