"""Bad input, tried systematically through the real CLI (``python -m testbed ...`` in-process).

Each case must exit non-zero with one clear ``testbed: error: ...`` line holding the case's key words, and leave
nothing behind in the working folder (no run folder, config, checkpoint, direction or report file).
"""

from __future__ import annotations

import json
import math
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
    rows = [{"prompt": f"please help me {verb}", "response": "sure ."} for verb in ("fix", "clean", "build")]
    (root / "good.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
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
    _hostile_inputs(root, configs)
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


def _bad_direction(root: Path, name: str, change: Callable[[dict], None]) -> str:
    raw = torch.load(root / "vrev.pt", weights_only=True)
    change(raw)
    torch.save(raw, root / f"{name}.pt")
    return str(root / f"{name}.pt")


def _hostile_inputs(root: Path, configs: dict) -> None:
    """The inputs of issue 14's list: non-finite and zero directions, non-UTF-8 files, repeated keys, a tokenizer
    without EOS, over-long prompts, a diverging causal LM, a resume checkpoint of another width."""
    from testbed.llm.tokenizer import build_word_tokenizer
    from toy_models.gravity import GravityMLP

    scale = {"nan": math.nan, "inf": math.inf, "zero": 0.0}
    for name, factor in scale.items():
        path = _bad_direction(root, f"vrev_{name}", lambda raw, f=factor: raw["vectors"].update(
            {k: v * f for k, v in raw["vectors"].items()}))
        configs[f"vrev_{name}"] = _fit(callbacks=[_blocker("UpdateProjectionBlocker", path)])
    path = _bad_direction(root, "vrev_strings", lambda raw: raw["vectors"].update({LAYER: "not a tensor"}))
    configs["vrev_strings"] = _fit(callbacks=[_blocker("ReversionMonitor", path)])
    path = _bad_direction(root, "vrev_widths", lambda raw: raw["metadata"].update({"widths": 3}))
    configs["vrev_widths"] = _fit(callbacks=[_blocker("ReversionMonitor", path)])
    (root / "latin1.jsonl").write_bytes('{"prompt": "café", "response": "ok"}\n'.encode("latin-1"))
    configs["jsonl_latin1"] = _llm(root, train_path=str(root / "latin1.jsonl"))
    no_eos = build_word_tokenizer(["list", "item", "ok"])
    no_eos.eos_token = None
    no_eos.save_pretrained(root / "no_eos_tokenizer")
    configs["tokenizer_no_eos"] = _llm(root, tokenizer_path=str(root / "no_eos_tokenizer"))
    (root / "long.jsonl").write_text(json.dumps({"prompt": " ".join(["red"] * 60), "response": "ok"}) + "\n")
    configs["prompt_too_long"] = _llm(root, train_path=str(root / "long.jsonl"), max_length=256, probe_size=1)
    llm = _llm(root)
    llm["model"]["init_args"]["optimizer"] = {"name": "sgd", "lr": 1e30}
    llm["trainer"]["max_steps"] = 6
    configs["llm_diverging"] = llm
    judge = {"class_path": "testbed.judging.HarmfulnessCallback",
             "init_args": {"judges": [{"class_path": "testbed.llm.judges.HarmfulnessJudge",
                                       "init_args": {"batch_size": 0}}]}}
    configs["judge_batch_zero"] = {**_llm(root), "trainer": {**_llm(root)["trainer"], "callbacks": [judge]}}
    wide = GravityMLP(**{**MODEL, "hidden": 32, "optimizer": None})
    torch.save({"state_dict": wide.state_dict(), "global_step": 1}, root / "wide_full.ckpt")
    (root / "latin1.yaml").write_bytes(yaml.safe_dump(_fit()).encode() + "# café\n".encode("latin-1"))
    (root / "twice.yaml").write_text(yaml.safe_dump(_fit(), sort_keys=False) + "seed_everything: 3\n")
    phase = str(root / "tiny.yaml")
    study = {"name": "bad_study", "seeds": [], "final": {"name": "finetune", "config": phase}}
    (root / "study_no_seeds.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    study = {"name": "bad_study", "seeds": [0], "final": {"name": "finetune", "config": phase}}
    (root / "study_twice.yaml").write_text(yaml.safe_dump(study, sort_keys=False) + "seeds: [1]\n")
    (root / "overlay_twice.yaml").write_text("trainer:\n  max_steps: 1\n  max_steps: 2\n")
    study = {**study, "overlays": [str(root / "overlay_twice.yaml")]}
    (root / "study_overlay_twice.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    (root / "spec_twice.yaml").write_text("rows: [a]\ncolumns: [{kind: value, tag: t, step: 1, step: 2}]\n")
    refused = {"name": "refused", "seeds": [0],
               "final": {"name": "finetune", "config": phase, "overrides": {"trainer.log_every_n_steps": 0}}}
    (root / "study_run_refused.yaml").write_text(yaml.safe_dump(refused, sort_keys=False))
    (root / "study_null_runs_dir.yaml").write_text(yaml.safe_dump({**refused, "runs_dir": None}, sort_keys=False))
    (root / "study_big_seed.yaml").write_text(yaml.safe_dump({**study, "seeds": [2**32]}, sort_keys=False))
    _dataset_inputs(root, configs)


def _dataset_inputs(root: Path, configs: dict) -> None:
    """Inputs of the real-data modules (``DatasetDataModule`` over ``testbed.llm.formats``)."""
    (root / "latin1.csv").write_bytes("goal,target\nhow do i hurt people café,sure .\n".encode("latin-1"))
    (root / "ragged.csv").write_bytes(b"goal,target\nhow do i hurt people,sure .,extra,fields\n")

    def dataset(**data_args) -> dict:
        config = _llm(root)
        config["data"] = {"class_path": "testbed.llm.DatasetDataModule",
                          "init_args": {"train": {"path": str(root / "good.jsonl")}, "batch_size": 2,
                                        "max_length": 32, "probe_size": 2, **data_args}}
        return config

    configs["dataset_prompt_format_field"] = dataset(prompt_format="{prompt} {other}")
    configs["dataset_prompt_format_brace"] = dataset(prompt_format="{prompt} {")
    configs["dataset_csv_not_utf8"] = dataset(harmful={"path": str(root / "latin1.csv"), "format": "advbench"})
    configs["dataset_csv_ragged"] = dataset(harmful={"path": str(root / "ragged.csv"), "format": "advbench"})
    configs["dataset_limit_zero"] = dataset(harmful={"path": str(root / "good.jsonl"), "limit": 0})
    configs["dataset_columns_unknown_role"] = dataset(train={"path": str(root / "good.jsonl"),
                                                             "columns": {"answer": "response"}})


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

OPT = "--model.init_args.optimizer"
HOSTILE_CASES = [
    # numbers: non-finite, out of range, wrong shape
    Case("lr_nan", fit("tiny", f"{OPT}.lr=nan"), ("lr",)),
    Case("lr_inf", fit("tiny", f"{OPT}.lr=inf"), ("lr",)),
    Case("lr_negative", fit("tiny", f"{OPT}.lr=-0.1"), ("lr", "-0.1")),
    Case("weight_decay_nan", fit("tiny", f"{OPT}.weight_decay=nan"), ("weight_decay",)),
    Case("weight_decay_negative", fit("tiny", f"{OPT}.weight_decay=-1"), ("weight_decay", "-1")),
    Case("betas_out_of_range", fit("tiny", f"{OPT}.betas=[1.5, 0.9]"), ("betas", "1.5")),
    Case("betas_three", fit("tiny", f"{OPT}.betas=[0.5, 0.9, 0.9]"), ("betas",)),
    Case("momentum_one", fit("tiny", f"{OPT}.name=sgd", f"{OPT}.momentum=1.0"), ("momentum", "1.0")),
    Case("seed_too_large", fit("tiny", "--seed_everything=4294967296"), ("seed_everything", "4294967295")),
    Case("seed_negative", fit("tiny", "--seed_everything=-1"), ("seed_everything", "-1")),
    Case("data_seed_past_64_bits", fit("tiny", "--data.init_args.data_seed=18446744073709551616"),
         ("data_seed", "4294967295")),  # found by the fuzz test (probe_seed=2**64 overflowed torch's generator)
    Case("world_seed_negative", fit("tiny", "--data.init_args.world.world_seed=-3"), ("world_seed", "-3")),
    # wrong types inside nested settings
    Case("null_for_an_int", fit("tiny", "--model.init_args.hidden=null"), ("model.init_args.hidden", "null")),
    Case("null_in_a_settings_dataclass", fit("tiny", "--data.init_args.world.dim=null"), ("world", "dim", "None")),
    Case("size_too_large_to_index", fit("tiny", "--model.init_args.hidden=9223372036854775807"), ("overflow",)),
    Case("model_built_for_other_data", fit("tiny", "--model.init_args.input_dim=3"), ("does not fit the data",)),
    Case("world_wrong_type", fit("tiny", "--data.init_args.world.dim=abc"), ("dim", "abc")),
    Case("model_config_wrong_type", fit("llm_diverging", "--model.init_args.model_config.n_embd=abc"),
         ("n_embd", "abc")),
    Case("model_config_negative", fit("llm_diverging", "--model.init_args.model_config.n_embd=-4"), ("model_config",)),
    Case("lora_wrong_type", fit("llm_diverging", "--model.init_args.lora.r=abc"), ("r", "abc")),
    Case("lora_unknown_key", fit("llm_diverging", "--model.init_args.lora.rank=4"), ("rank",)),
    # checkpoints and direction files
    Case("resume_other_width", fit("tiny", "--ckpt_path={d}/wide_full.ckpt"), ("wide_full.ckpt", "does not fit")),
    Case("vrev_nan", fit("vrev_nan"), ("vrev_nan.pt", "blocks.1.hidden", "NaN")),
    Case("vrev_inf", fit("vrev_inf"), ("vrev_inf.pt", "blocks.1.hidden", "inf")),
    Case("vrev_zero", fit("vrev_zero"), ("vrev_zero.pt", "blocks.1.hidden", "zero")),
    Case("vrev_not_tensors", fit("vrev_strings"), ("vrev_strings.pt", "blocks.1.hidden", "tensor")),
    Case("vrev_malformed_widths", fit("vrev_widths"), ("vrev_widths.pt", "damaged")),
    # text files, tokenizers, prompts
    Case("config_not_utf8", fit("latin1"), ("latin1.yaml", "UTF-8")),
    Case("jsonl_not_utf8", fit("jsonl_latin1"), ("latin1.jsonl", "UTF-8")),
    Case("tokenizer_without_eos", fit("tokenizer_no_eos"), ("no_eos_tokenizer", "end-of-sequence")),
    Case("prompt_longer_than_context", fit("prompt_too_long"), ("62 tokens", "max_length=48")),
    Case("judge_batch_size_zero", fit("judge_batch_zero"), ("batch_size", "0")),
    Case("llm_loss_diverges", fit("llm_diverging"), ("non-finite training loss", "nan"), keeps_logs=True),
    # report filters and output paths
    Case("report_bad_arms_regex", lambda d: ["report", str(d), "--arms", "(unclosed"], ("--arms", "(unclosed")),
    Case("report_bad_tags_regex", lambda d: ["report", str(d), "--tags", "[x"], ("--tags", "[x")),
    Case("report_out_is_a_file", lambda d: ["report", str(d), "--out", str(d / "good.jsonl")], ("good.jsonl", "file")),
    Case("logger_folder_is_a_file", fit("tiny", "--trainer.logger.init_args.save_dir={d}/good.jsonl"),
         ("good.jsonl", "file")),
    Case("vrev_out_is_a_folder",
         lambda d: ["vrev", "--config_path", str(d / "tiny.yaml"), "--witness_ckpt", str(d / "weights.pt"),
                    "--reference_ckpt", str(d / "weights.pt"), "--layers", f"[{LAYER}]", "--out", str(d)],
         ("--out", "folder")),
    # studies and repeated YAML keys
    Case("study_empty_seeds", lambda d: ["study", "--config", str(d / "study_no_seeds.yaml")], ("seeds", "[]")),
    Case("fit_config_key_twice", fit("twice"), ("twice.yaml", "seed_everything", "duplicate")),
    Case("study_key_twice", lambda d: ["study", "--config", str(d / "study_twice.yaml")], ("seeds", "duplicate")),
    Case("overlay_key_twice", lambda d: ["study", "--config", str(d / "study_overlay_twice.yaml")],
         ("overlay_twice.yaml", "max_steps", "duplicate")),
    Case("study_run_refused_in_set_up", lambda d: ["study", "--config", str(d / "study_run_refused.yaml")],
         ("log_every_n_steps", "0")),
    Case("study_null_runs_dir", lambda d: ["study", "--config", str(d / "study_null_runs_dir.yaml")],
         ("runs_dir", "null")),
    Case("study_seed_too_large", lambda d: ["study", "--config", str(d / "study_big_seed.yaml")],
         ("seed", "4294967296")),
    # the real-data modules
    Case("dataset_prompt_format_field", fit("dataset_prompt_format_field"), ("prompt_format", "other")),
    Case("dataset_prompt_format_brace", fit("dataset_prompt_format_brace"), ("prompt_format",)),
    Case("dataset_csv_not_utf8", fit("dataset_csv_not_utf8"), ("latin1.csv",)),
    Case("dataset_csv_ragged", fit("dataset_csv_ragged"), ("ragged.csv", "row 1")),
    Case("dataset_limit_zero", fit("dataset_limit_zero"), ("limit", "0")),
    Case("dataset_columns_unknown_role", fit("dataset_columns_unknown_role"), ("answer",)),
    Case("report_spec_key_twice", lambda d: ["report", str(d), "--spec", str(d / "spec_twice.yaml")],
         ("spec_twice.yaml", "step", "duplicate")),
]
CASES += HOSTILE_CASES


def test_at_least_twenty_cases() -> None:
    assert len(CASES) >= 20 and len({c.name for c in CASES}) == len(CASES)
    assert len(HOSTILE_CASES) >= 30


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
