"""The curvature account under DDP: two CPU processes (gloo) give the subspace, the AIC diagnostics, the monitor's
measurements and the blocked weights of one process with the same global batch.

Each process computes every per-example gradient of the (shared) safety batch but sums its Gram-matrix entries and
projections over its own slice of the parameter coordinates, and one all-reduce adds the slices; the first fine-tune
gradient and its Hessian product are averaged over the processes' halves of the batch, as DDP averages gradients.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.compare import assert_nested_close
from tests.helpers.gravity_runs import finetune_config, run_testbed, write_direction

CURVATURE = [
    {"class_path": "testbed.interventions.CurvatureMonitor",
     "init_args": {"subspace": {"d": 6}, "every_n_steps": 1, "fit_window": [1, 4]}},
    {"class_path": "testbed.interventions.SubspaceBlocker", "init_args": {"subspace": {"d": 6}}},
]  # fmt: skip


def test_two_processes_give_the_single_process_subspace_diagnostics_and_weights(tmp_path: Path, run_cli,
                                                                                single_threaded):  # fmt: skip
    compare_one_and_two_processes(tmp_path, run_cli)


def compare_one_and_two_processes(tmp_path: Path, run_cli) -> None:
    direction = write_direction(tmp_path / "vrev.pt")

    def callbacks(out: str) -> list[dict]:
        return [*CURVATURE, {"class_path": "tests.helpers.curvature.DumpCurvature",
                             "init_args": {"out": str(tmp_path / out)}}]  # fmt: skip

    data = {"n_train": 32, "safety_size": 24}
    single = finetune_config(tmp_path / "single.yaml", direction, max_steps=4, data={**data, "batch_size": 32},
                             callbacks=callbacks("single"))
    assert run_cli(["fit", "--config", str(single)]) == 0
    ddp = finetune_config(tmp_path / "ddp.yaml", direction, max_steps=4, data={**data, "batch_size": 16},
                          callbacks=callbacks("ddp"), trainer={"devices": 2, "strategy": "ddp"})
    result = run_testbed(["fit", "--config", str(ddp)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    one = json.loads((tmp_path / "single" / "rank0.json").read_text())
    assert one["world_size"] == 1 and len(one["history"]) == 4
    size = one["partition"][1]
    slices = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text())["partition"] for r in (0, 1)]
    assert slices == [[0, size // 2, 2], [size // 2, size, 2]]  # each process sums over its half of the coordinates
    assert max(r["curvature/disp_in_S"] for r in one["history"]) < 1e-5  # blocked: no motion in S
    for rank in (0, 1):
        got = json.loads((tmp_path / "ddp" / f"rank{rank}.json").read_text())
        assert got["world_size"] == 2
        for key in ("basis", "eigenvalues", "trace", "diagnostics", "blocker_basis"):
            assert_nested_close(one[key], got[key], f"rank{rank}.{key}", rtol=1e-4, atol=1e-5)
        assert_nested_close(one["params"], got["params"], f"rank{rank}.params", rtol=1e-4, atol=1e-5)
        assert_nested_close(one["history"], got["history"], f"rank{rank}.history", rtol=1e-3, atol=1e-5)
