"""Bad input, tried systematically through the real CLI (``python -m testbed ...`` in-process).

Each case must exit non-zero with one clear ``testbed: error: ...`` line holding the case's key words, and leave
nothing behind in the working folder (no run folder, config, checkpoint, direction or report file).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from testbed.directions import random_directions
from testbed.testing import TinyData, TinyRegressor
from tests.helpers.gravity_runs import DATA, LAYER, MODEL, write_direction

GRAVITY_MODEL = {"class_path": "toy_models.gravity.GravityMLP", "init_args": dict(MODEL)}
GRAVITY_DATA = {"class_path": "toy_models.gravity.GravityData", "init_args": dict(DATA)}


def _fit(model: dict | None = None, data: dict | None = None, callbacks: list | None = None, **trainer) -> dict:
    return {
        "seed_everything": 0,
        "model": model or GRAVITY_MODEL,
        "data": data or GRAVITY_DATA,
        "trainer": {
            "max_steps": 2, "accelerator": "cpu", "num_sanity_val_steps": 0, "limit_val_batches": 0,
            "enable_progress_bar": False, "log_every_n_steps": 1, "callbacks": callbacks or [],
            "logger": {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": "runs", "name": "bad"}},
            **trainer,
        },
    }


def _blocker(kind: str, direction: str, **args) -> dict:
    direction_keys = {k: args.pop(k) for k in ("layers", "random") if k in args}
    projection = {k: args.pop(k) for k in ("every_n_steps", "one_sided") if k in args and "Blocker" in kind}
    init_args = {"direction": {"path": direction, **direction_keys}, **args}
    if projection:
        init_args["projection"] = projection
    return {"class_path": f"testbed.interventions.{kind}", "init_args": init_args}


def _llm(inputs: Path, **data_args) -> dict:
    model = {"class_path": "testbed.llm.CausalLMModule",
             "init_args": {"model": "gpt2", "model_config": {"n_layer": 1, "n_head": 2, "n_embd": 16,
                                                             "n_positions": 48}}}
    data = {"class_path": "testbed.llm.data.JsonlDataModule",
            "init_args": {"train_path": str(inputs / "good.jsonl"), "batch_size": 2, "max_length": 32,
                          "probe_size": 2, **data_args}}
    return _fit(model=model, data=data)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All the bad (and the few good) files the cases point at, outside the folder the CLI runs in."""
    root = tmp_path_factory.mktemp("inputs")
    write_direction(root / "vrev.pt")
    from toy_models.gravity import GravityData, GravityMLP, GravitySettings

    wide = GravityMLP(**{**MODEL, "hidden": 32, "optimizer": None})
    data = GravityData(**{**DATA, "world": GravitySettings(**DATA["world"])})
    random_directions(wide, data.probe_batch(), [LAYER]).save(root / "vrev_wide.pt")
    random_directions(TinyRegressor(width=8), TinyData(width=8).probe_batch(), ["blocks.0.hidden"]).save(
        root / "vrev_other_model.pt")
    torch.save(wide.state_dict(), root / "weights_wide.pt")
    torch.save(GravityMLP(**{**MODEL, "optimizer": None}).state_dict(), root / "weights.pt")
    (root / "garbage.ckpt").write_text("this is not a checkpoint\n")
    torch.save({"state_dict": GravityMLP(**{**MODEL, "optimizer": None}).state_dict()}, root / "full.ckpt")
    (root / "truncated.ckpt").write_bytes((root / "full.ckpt").read_bytes()[:600])
    (root / "good.jsonl").write_text("".join(json.dumps({"prompt": f"list item {i}", "response": "ok"}) + "\n"
                                             for i in range(3)))
    (root / "malformed.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": \n')
    (root / "missing_field.jsonl").write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    (root / "empty.jsonl").write_text("\n")

    configs = {
        "tiny": _fit(),
        "unknown_callback": _fit(callbacks=[{"class_path": "testbed.interventions.NoSuchBlocker"}]),
        "vrev_wrong_width": _fit(callbacks=[_blocker("UpdateProjectionBlocker", str(root / "vrev_wide.pt"))]),
        "vrev_other_model": _fit(callbacks=[_blocker("UpdateProjectionBlocker", str(root / "vrev_other_model.pt"))]),
        "vrev_missing": _fit(callbacks=[_blocker("ReversionMonitor", str(root / "nowhere_vrev.pt"))]),
        "vrev_not_direction": _fit(callbacks=[_blocker("UpdateProjectionBlocker", str(root / "weights.pt"))]),
        "blocker_unknown_layer": _fit(callbacks=[_blocker("UpdateProjectionBlocker", str(root / "vrev.pt"),
                                                          layers=["blocks.7.hidden"])]),
        "clamp_bad_mode": _fit(callbacks=[_blocker("ActivationClamp", str(root / "vrev.pt"), mode="sideways")]),
        "penalty_negative": _fit(callbacks=[_blocker("RepresentationPenalty", str(root / "vrev.pt"), strength=-1.0)]),
        "blocker_zero_cadence": _fit(callbacks=[_blocker("UpdateProjectionBlocker", str(root / "vrev.pt"),
                                                         every_n_steps=0)]),
        "clamp_shift_ddp": _fit(callbacks=[_blocker("ActivationClamp", str(root / "vrev.pt"), mode="shift")],
                                devices=2, strategy="ddp"),
        "empty_data": _fit(data={**GRAVITY_DATA, "init_args": {**DATA, "n_train": 0}}),
        "diverging": _fit(model={**GRAVITY_MODEL, "init_args": {**MODEL, "optimizer": {"name": "sgd", "lr": 1e30}}},
                          max_steps=6),
        "nan_metric": _fit(model={"class_path": "testbed.testing.TinyRegressor",
                                  "init_args": {"poison_metric_at_step": 2}},
                           data={"class_path": "testbed.testing.TinyData"}, max_steps=6),
        "nan_representation": _fit(model={"class_path": "testbed.testing.TinyRegressor"},
                                   data={"class_path": "testbed.testing.TinyData",
                                         "init_args": {"poison_probe": True}}, max_steps=6,
                                   callbacks=[{"class_path": "testbed.guards.NonFiniteGuard",
                                               "init_args": {"representation_every_n_steps": 2}}]),
        "jsonl_malformed": _llm(root, train_path=str(root / "malformed.jsonl")),
        "jsonl_missing_field": _llm(root, train_path=str(root / "missing_field.jsonl")),
        "jsonl_empty": _llm(root, train_path=str(root / "empty.jsonl")),
        "jsonl_missing": _llm(root, train_path=str(root / "nowhere.jsonl")),
        "probe_larger_than_data": _llm(root, probe_size=50),
        "quad_rank_ge_dim": _fit(model={"class_path": "toy_models.quadratic.QuadraticToy",
                                        "init_args": {"dim": 4, "rank": 4}},
                                 data={"class_path": "toy_models.quadratic.QuadraticData", "init_args": {"dim": 4}}),
        "quad_negative_sharpness": _fit(model={"class_path": "toy_models.quadratic.QuadraticToy",
                                               "init_args": {"dim": 8, "rank": 2, "sharpness": -1.0}},
                                        data={"class_path": "toy_models.quadratic.QuadraticData",
                                              "init_args": {"dim": 8}}),
    }
    for name, config in configs.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "bad_yaml.yaml").write_text("model: [unclosed\n  class_path: x\n")

    phase = str(root / "tiny.yaml")
    study = {"name": "bad_study", "seeds": [0], "phases": [{"name": "pretrain", "config": phase}],
             "directions": {"vrev": {"witness": "nope", "reference": "pretrain", "layers": [LAYER]}},
             "final": {"name": "finetune", "config": phase}, "arms": {"plain": {}}}
    (root / "study_missing_phase.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    study_nofile = {"name": "bad_study", "seeds": [0], "phases": [{"name": "pretrain", "config": "absent.yaml"}],
                    "final": {"name": "finetune", "config": phase}, "arms": {"plain": {}}}
    (root / "study_missing_config.yaml").write_text(yaml.safe_dump(study_nofile, sort_keys=False))
    return root


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Path], list[str]]
    says: tuple[str, ...]
    keeps_logs: bool = False  # a run that failed mid-training keeps its logs (they show where), never a checkpoint


def fit(config: str, *extra: str) -> Callable[[Path], list[str]]:
    return lambda d: ["fit", "--config", str(d / f"{config}.yaml"), *[a.format(d=d) for a in extra]]


CASES = [
    # unknown class paths, unknown keys, wrong types
    Case("unknown_model_class", fit("tiny", "--model.class_path=toy_models.gravity.NoSuchModel"), ("NoSuchModel",)),
    Case("unknown_callback_class", fit("unknown_callback"), ("NoSuchBlocker",)),
    Case("unknown_model_option", fit("tiny", "--model.init_args.hiddn=3"), ("hiddn",)),
    Case("wrong_type_steps", fit("tiny", "--trainer.max_steps=ten"), ("max_steps", "ten")),
    Case("wrong_type_lr", fit("tiny", "--model.init_args.optimizer.lr=fast"), ("lr", "fast")),
    Case("seed_not_integer", fit("tiny", "--seed_everything=abc"), ("seed_everything", "int")),
    Case("seed_float", fit("tiny", "--seed_everything=1.5"), ("seed_everything", "int")),
    Case("negative_steps", fit("tiny", "--trainer.max_steps=-5"), ("max_steps", "-5")),
    Case("zero_steps", fit("tiny", "--trainer.max_steps=0"), ("max_steps", "0")),
    # missing or broken files
    Case("config_missing", lambda d: ["fit", "--config", str(d / "nowhere.yaml")], ("nowhere.yaml",)),
    Case("config_not_yaml", fit("bad_yaml"), ("bad_yaml.yaml", "not valid YAML", "line 2")),
    Case("init_from_missing", fit("tiny", "--model.init_args.init_from={d}/missing.ckpt"),
         ("not found", "missing.ckpt")),
    Case("init_from_not_checkpoint", fit("tiny", "--model.init_args.init_from={d}/garbage.ckpt"),
         ("garbage.ckpt", "not a loadable")),
    Case("init_from_truncated", fit("tiny", "--model.init_args.init_from={d}/truncated.ckpt"),
         ("truncated.ckpt", "not a loadable")),
    Case("init_from_other_model", fit("tiny", "--model.init_args.init_from={d}/weights_wide.pt"),
         ("weights_wide.pt", "does not fit", "wrong shape")),
    Case("resume_missing", fit("tiny", "--ckpt_path={d}/missing.ckpt"), ("ckpt_path", "not found")),
    Case("resume_not_checkpoint", fit("tiny", "--ckpt_path={d}/garbage.ckpt"), ("garbage.ckpt", "not a checkpoint")),
    Case("resume_truncated_checkpoint", fit("tiny", "--ckpt_path={d}/truncated.ckpt"),
         ("truncated.ckpt", "not a checkpoint", "complete")),
    Case("resume_weights_only_file", fit("tiny", "--ckpt_path={d}/weights.pt"), ("weights.pt", "not a Lightning")),
    # direction (v_rev) files
    Case("vrev_wrong_width", fit("vrev_wrong_width"), ("vrev_wide.pt", "width")),
    Case("vrev_other_model", fit("vrev_other_model"), ("vrev_other_model.pt", "TinyRegressor", "GravityMLP")),
    Case("vrev_missing", fit("vrev_missing"), ("nowhere_vrev.pt", "not found")),
    Case("vrev_not_a_direction_file", fit("vrev_not_direction"), ("weights.pt", "not a testbed direction file")),
    Case("blocker_unknown_layer", fit("blocker_unknown_layer"), ("blocks.7.hidden",)),
    Case("vrev_verb_unknown_layer",
         lambda d: ["vrev", "--config_path", str(d / "tiny.yaml"), "--witness_ckpt", str(d / "weights.pt"),
                    "--reference_ckpt", str(d / "weights.pt"), "--layers", "[blocks.9.resid]", "--out", "v.pt"],
         ("blocks.9.resid", "valid layers", "blocks.0.hidden")),
    Case("vrev_verb_checkpoint_other_model",
         lambda d: ["vrev", "--config_path", str(d / "tiny.yaml"), "--witness_ckpt", str(d / "weights_wide.pt"),
                    "--reference_ckpt", str(d / "weights.pt"), "--layers", f"[{LAYER}]", "--out", "v.pt"],
         ("weights_wide.pt", "does not fit", "wrong shape")),
    # blocker settings
    Case("clamp_unknown_mode", fit("clamp_bad_mode"), ("mode", "sideways")),
    Case("penalty_negative_strength", fit("penalty_negative"), ("strength", "-1")),
    Case("blocker_zero_cadence", fit("blocker_zero_cadence"), ("every_n_steps", "0")),
    Case("clamp_shift_under_ddp", fit("clamp_shift_ddp"), ("ActivationClamp", "mode=shift", "ddp")),
    Case("fsdp_on_cpu", fit("tiny", "--trainer.strategy=fsdp"), ("fsdp", "GPU")),
    Case("deepspeed_not_installed", fit("tiny", "--trainer.strategy=deepspeed"), ("DeepSpeed", "install")),
    # data
    Case("empty_dataset", fit("empty_data"), ("n_train", "0")),
    Case("jsonl_malformed_line", fit("jsonl_malformed"), ("malformed.jsonl:2", "not valid JSON")),
    Case("jsonl_missing_field", fit("jsonl_missing_field"), ("missing_field.jsonl:2", "response")),
    Case("jsonl_empty", fit("jsonl_empty"), ("empty.jsonl", "no examples")),
    Case("jsonl_missing", fit("jsonl_missing"), ("nowhere.jsonl", "not found")),
    Case("probe_set_larger_than_data", fit("probe_larger_than_data"), ("probe_size", "50", "3")),
    # toy landscape settings
    Case("quadratic_rank_ge_dim", fit("quad_rank_ge_dim"), ("rank", "dim")),
    Case("quadratic_negative_sharpness", fit("quad_negative_sharpness"), ("sharpness", "-1")),
    # studies
    Case("study_missing_phase", lambda d: ["study", "--config", str(d / "study_missing_phase.yaml")],
         ("nope", "witness", "pretrain")),
    Case("study_phase_config_missing", lambda d: ["study", "--config", str(d / "study_missing_config.yaml")],
         ("absent.yaml", "does not exist")),
    # numbers going non-finite
    Case("diverging_loss", fit("diverging"), ("non-finite training loss at step 1", "loss = nan"), keeps_logs=True),
    Case("nan_logged_metric", fit("nan_metric"), ("non-finite logged metric at step 2", "train/poison = inf"),
         keeps_logs=True),
    Case("nan_probe_representation", fit("nan_representation"),
         ("non-finite probe representation after step 2", "representation/blocks.0.hidden"), keeps_logs=True),
]


def test_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20 and len({c.name for c in CASES}) == len(CASES)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_clearly(case: Case, inputs: Path, tmp_path: Path, run_cli, capsys) -> None:
    inputs_before = _files(inputs)
    code = run_cli(case.args(inputs))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("testbed: error:")]
    assert code != 0, f"{case.name}: exit code 0\n{err[-1500:]}"
    assert len(lines) == 1, f"{case.name}: expected one 'testbed: error:' line, got:\n{err[-3000:]}"
    message = lines[0]
    missing = [word for word in case.says if word.lower() not in message.lower()]
    assert not missing, f"{case.name}: message lacks {missing}: {message}"
    assert len(message) < 800, f"{case.name}: message too long: {message}"
    leftovers = [f for f in _files(tmp_path) if not f.startswith(".")]
    if case.keeps_logs:
        leftovers = [f for f in leftovers if f.endswith((".ckpt", ".pt", ".safetensors"))]
    assert leftovers == [], f"{case.name}: left files behind: {leftovers}"
    assert _files(inputs) == inputs_before, f"{case.name}: wrote next to its inputs"
    print(f"{case.name}: {message}")
