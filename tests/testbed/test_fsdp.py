"""The reversion layer under FSDP2: two CPU processes (gloo, ``fully_shard``) give the numbers of one process.

The tiny gravity fine-tune takes its whole training set (32 examples) as one global batch: one plain process sees
all 32; each of two FSDP2 processes (``testbed.sharding.FSDP2Strategy``) sees 16 and holds half of every parameter's
rows. The monitor reads the probe through the sharded model, the update projection takes J by an ordinary backward
pass and sums its inner products across the shards, so the blocked weights and every logged drift statistic must
match the single process up to float round-off. Interventions whose algebra is not shard-aware are refused before
``fit`` with a message naming the strategies that would run them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.compare import assert_nested_close
from tests.helpers.gravity_runs import finetune_config, run_testbed, write_direction

FSDP2 = {"class_path": "testbed.sharding.FSDP2Strategy"}


def _run(tmp_path: Path, name: str, direction: Path, batch_size: int, **trainer) -> Path:
    dump = {"class_path": "tests.helpers.callbacks.DumpState", "init_args": {"out": str(tmp_path / name)}}
    return finetune_config(tmp_path / f"{name}.yaml", direction, max_steps=6, callbacks=[dump], trainer=trainer,
                           data={"n_train": 32, "batch_size": batch_size})  # fmt: skip


def test_blocked_finetune_fsdp2_two_processes_match_one(tmp_path: Path, run_cli) -> None:
    direction = write_direction(tmp_path / "vrev.pt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_cli(["fit", "--config", str(_run(tmp_path, "single", direction, 32))]) == 0
    finally:
        torch.set_num_threads(threads)
    sharded = _run(tmp_path, "fsdp", direction, 16, devices=2, strategy=FSDP2)
    result = run_testbed(["fit", "--config", str(sharded)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    one = json.loads((tmp_path / "single" / "rank0.json").read_text())
    history = one["callbacks"]["ReversionMonitor"]["history"]
    assert [int(r["step"]) for r in history] == [1, 2, 4, 6]
    assert all(abs(r["reversion/cos_drift_vrev/blocks.1.hidden"]) > 1e-4 for r in history)
    assert max(abs(x) for x in one["callbacks"]["UpdateProjectionBlocker"]["basis"]) > 0  # a real Jacobian basis
    for rank in (0, 1):
        got = json.loads((tmp_path / "fsdp" / f"rank{rank}.json").read_text())
        assert got["world_size"] == 2
        assert_nested_close(one["params"], got["params"], f"rank{rank}.params", rtol=1e-4, atol=1e-5)
        logged = [{k: v for k, v in r.items() if k.startswith("reversion/")}
                  for r in got["callbacks"]["ReversionMonitor"]["history"]]  # fmt: skip
        expected = [{k: v for k, v in r.items() if k in logged[0]} for r in history]
        assert_nested_close(expected, logged, f"rank{rank}.history", rtol=1e-4, atol=1e-5)
