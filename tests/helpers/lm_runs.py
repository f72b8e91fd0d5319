"""A tiny GPT-2 fine-tune on JSONL data (safety-world words, so the tokenizer round-trips) with the monitor, update
projection and ``DumpState``, for the tests that compare multi-process runs with one process."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from testbed.testing import TEST_LM_CONFIGS

LAYER = "blocks.1.resid_post"


def lm_args(tmp_path: Path, lora: bool = True, optimizer: dict | None = None) -> tuple[dict, dict]:
    """(model, data) init args; writes 8 equal-length training examples and 6 probe prompts under ``tmp_path``.

    Equal lengths make every rank's token-mean loss average to the global token mean.
    """
    rows = [{"prompt": f"how do i fix the t{i}obj1", "response": f"tell me how to make a t{i}obj0"} for i in range(8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    probes = [{"prompt": f"tell me how to clean a t{i}obj2"} for i in range(6)]
    (tmp_path / "harm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probes))
    model = {"model": "gpt2", "model_config": dict(TEST_LM_CONFIGS["gpt2"]), "optimizer": optimizer or {"lr": 0.01},
             **({"lora": {"r": 2}} if lora else {})}  # fmt: skip
    data = {"train_path": str(tmp_path / "train.jsonl"), "harmful_path": str(tmp_path / "harm.jsonl"),
            "max_length": 32, "probe_size": 6}  # fmt: skip
    return model, data


def write_lm_direction(tmp_path: Path, model: dict, data: dict) -> Path:
    """A seeded random direction at ``LAYER`` that fits the model and probe set."""
    from testbed.directions import random_directions
    from testbed.llm import CausalLMModule
    from testbed.llm.data import JsonlDataModule

    path = tmp_path / "v.pt"
    random_directions(CausalLMModule(**model), JsonlDataModule(**data).probe_batch(), [LAYER]).save(path)
    return path


def lm_config(tmp_path: Path, name: str, args: tuple[dict, dict], batch_size: int, **trainer) -> Path:
    """A 4-step fit config (monitor every 2 steps, update projection, ``DumpState`` into ``tmp_path/name``)."""
    model, data = args
    direction = {"direction": {"path": str(tmp_path / "v.pt")}}
    callbacks = [
        {"class_path": "testbed.interventions.ReversionMonitor", "init_args": {**direction, "every_n_steps": 2}},
        {"class_path": "testbed.interventions.UpdateProjectionBlocker", "init_args": direction},
        {"class_path": "tests.helpers.callbacks.DumpState", "init_args": {"out": str(tmp_path / name)}},
    ]
    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "limit_val_batches": 0,
             "num_sanity_val_steps": 0}  # fmt: skip
    config = {
        "seed_everything": 3,
        "model": {"class_path": "testbed.llm.CausalLMModule", "init_args": model},
        "data": {"class_path": "testbed.llm.data.JsonlDataModule", "init_args": {**data, "batch_size": batch_size}},
        "trainer": {"max_steps": 4, "accelerator": "cpu", **quiet, "callbacks": callbacks, **trainer},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
