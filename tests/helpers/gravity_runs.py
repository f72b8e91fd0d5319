"""A tiny blocked fine-tune of the gravity toy (config + direction file) for the resume and DDP tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers.paths import REPO_ROOT

REPO = REPO_ROOT

MODEL = {"input_dim": 8, "hidden": 16, "depth": 2, "num_classes": 2, "optimizer": {"lr": 0.01}}
DATA = {"phase": "finetune", "n_train": 64, "n_val": 16, "batch_size": 16, "probe_size": 16,
        "world": {"dim": 8, "num_classes": 2}}
LAYER = "blocks.1.hidden"


def write_direction(path: Path, seed: int = 0) -> Path:
    """A direction file that fits the tiny gravity model and probe set (a seeded random direction)."""
    from testbed.directions import random_directions
    from toy_models.gravity import GravityData, GravityMLP, GravitySettings

    model = GravityMLP(**{**MODEL, "optimizer": None})
    data = GravityData(**{**DATA, "world": GravitySettings(**DATA["world"])})
    random_directions(model, data.probe_batch(), [LAYER], seed=seed).save(path)
    return path


def finetune_config(
    path: Path,
    direction: Path,
    *,
    max_steps: int = 12,
    blocker: str = "UpdateProjectionBlocker",
    blocker_args: dict | None = None,
    data: dict | None = None,
    trainer: dict | None = None,
    callbacks: list[dict] | None = None,
    seed: int = 7,
) -> Path:
    """Write a blocked fine-tune config (monitor every 2 steps + ``blocker``) and return its path."""
    cbs = [
        {"class_path": "testbed.interventions.ReversionMonitor",
         "init_args": {"direction": {"path": str(direction)}, "every_n_steps": 2}},
        {"class_path": f"testbed.interventions.{blocker}",
         "init_args": {"direction": {"path": str(direction)}, **(blocker_args or {})}},
        *(callbacks or []),
    ]
    config = {
        "seed_everything": seed,
        "model": {"class_path": "toy_models.gravity.GravityMLP", "init_args": dict(MODEL)},
        "data": {"class_path": "toy_models.gravity.GravityData", "init_args": {**DATA, **(data or {})}},
        "trainer": {
            "max_steps": max_steps,
            "accelerator": "cpu",
            "num_sanity_val_steps": 0,
            "limit_val_batches": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "logger": False,
            "callbacks": cbs,
            **(trainer or {}),
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_testbed(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m testbed ARGS`` in a subprocess (``tests.helpers`` importable, one thread per process)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
