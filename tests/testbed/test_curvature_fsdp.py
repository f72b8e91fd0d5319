"""The curvature account under FSDP2: two CPU processes (gloo, ``fully_shard``) give one process's subspace,
diagnostics, logged ``curvature/*`` values and blocked weights.

Each FSDP2 process holds half of every parameter's rows. Both run every per-example backward pass over the whole
safety batch (ordinary backward: torch.func and double backward do not run on sharded modules) and keep their slices
of the gradients; the Gram matrix, projections and norms are partial sums plus an all-reduce; H g is a finite
difference of gradients (the single process is told to use the same, so the numbers compare), the first fine-tune
gradient being averaged over the processes' halves of the batch by FSDP's reduce-scatter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.compare import assert_nested_close
from tests.helpers.gravity_runs import finetune_config, run_testbed, write_direction

FSDP2 = {"class_path": "testbed.sharding.FSDP2Strategy"}


def _callbacks(out: Path, hvp: str, method: str, d: int) -> list[dict]:
    subspace = {"d": d, "hvp": hvp, "method": method, "trace_samples": 64}
    return [
        {"class_path": "testbed.interventions.CurvatureMonitor",
         "init_args": {"subspace": subspace, "every_n_steps": 1, "fit_window": [1, 3]}},
        {"class_path": "testbed.interventions.SubspaceBlocker", "init_args": {"subspace": subspace}},
        {"class_path": "tests.helpers.curvature.DumpCurvature", "init_args": {"out": str(out)}},
    ]  # fmt: skip


SLOPE = "curvature/loglog_slope"


def _logged(run: dict, without: str | None = None) -> list[dict]:
    """The logged values of each measurement (without ``without``), or only the log-log slope when it is None."""
    if without is None:
        return [r.get(SLOPE) for r in run["history"]]
    return [{k: v for k, v in r.items() if k != without} for r in run["history"]]


def _compare(tmp_path: Path, run_cli, method: str, d: int, tol: float = 1e-5, slope_tol: float = 1e-5) -> None:
    """One process (batch 32) against two FSDP2 processes (16 each): S, λ, diagnostics, logged values, weights."""
    from testbed.curvature import principal_angles

    direction = write_direction(tmp_path / "vrev.pt")
    data = {"n_train": 32, "safety_size": 24}
    single = finetune_config(tmp_path / "single.yaml", direction, max_steps=3, data={**data, "batch_size": 32},
                             callbacks=_callbacks(tmp_path / "single", "finite_difference", method, d))  # fmt: skip
    assert run_cli(["fit", "--config", str(single)]) == 0
    sharded = finetune_config(tmp_path / "fsdp.yaml", direction, max_steps=3, data={**data, "batch_size": 16},
                              callbacks=_callbacks(tmp_path / "fsdp", "auto", method, d),
                              trainer={"devices": 2, "strategy": FSDP2})  # fmt: skip
    result = run_testbed(["fit", "--config", str(sharded)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "H g by finite differences of gradients (double backward unsupported: FSDP2-sharded parameters)" in \
        result.stdout  # fmt: skip

    one = json.loads((tmp_path / "single" / "rank0.json").read_text())
    assert one["world_size"] == 1 and len(one["history"]) == 3
    assert max(r["curvature/disp_in_S"] for r in one["history"]) < 1e-5  # blocked: no motion in S
    basis = torch.tensor(one["basis"]).view(d, -1)
    for rank in (0, 1):
        got = json.loads((tmp_path / "fsdp" / f"rank{rank}.json").read_text())
        assert got["world_size"] == 2 and got["partition"][2] == 2
        if method == "fisher":
            assert "not vmap: torch.func does not run on FSDP2-sharded parameters" in got["how"]
        angles = principal_angles(basis, torch.tensor(got["basis"]).view(d, -1))
        assert float(angles.max()) < tol, angles
        assert_nested_close(one["eigenvalues"], got["eigenvalues"], f"rank{rank}.eigenvalues", rtol=tol, atol=0)
        for key in ("scalars", "diagnostics", "diagnostic_scalars", "params"):
            assert_nested_close(one[key], got[key], f"rank{rank}.{key}", rtol=tol, atol=tol)
        assert_nested_close(_logged(one, SLOPE), _logged(got, SLOPE), f"rank{rank}.history", rtol=tol, atol=tol)
        assert_nested_close(_logged(one), _logged(got), f"rank{rank}.slope", rtol=slope_tol, atol=0)



def test_fsdp2_two_processes_give_the_single_process_curvature_account(tmp_path: Path, run_cli, single_threaded):
    _compare(tmp_path, run_cli, "fisher", 6)


@pytest.mark.slow
def test_fsdp2_hessian_subspace_matches_one_process(tmp_path: Path, run_cli, single_threaded):
    """Lanczos on finite-difference products in float32: each product carries ~1e-5 relative round-off (the
    gradients' float32 error over the step h), which the Krylov iteration passes on, hence 1e-4. The random start and
    Hutchinson vectors are drawn whole and sliced, so both runs use the same ones. The log-log slope of Δu over steps
    1-3 divides those differences by log(3), a small number: 1e-3."""
    _compare(tmp_path, run_cli, "hessian", 1, tol=1e-4, slope_tol=1e-3)


@pytest.mark.slow
def test_fsdp2_resume_restores_the_whole_subspace_from_the_checkpoint(tmp_path: Path):
    """Checkpoints hold the whole S and θ* (gathered from the shards); a resumed FSDP2 run slices them again and
    continues to the uninterrupted run's numbers."""
    direction = write_direction(tmp_path / "vrev.pt")
    data = {"n_train": 32, "safety_size": 24, "batch_size": 16}
    trainer = {"devices": 2, "strategy": FSDP2}

    def config(name: str, steps: int, extra: list[dict]) -> Path:
        return finetune_config(tmp_path / f"{name}.yaml", direction, max_steps=steps, data=data,
                               callbacks=[*_callbacks(tmp_path / name, "auto", "fisher", 6), *extra],
                               trainer={**trainer, "enable_checkpointing": bool(extra)})  # fmt: skip

    rng = {"class_path": "testbed.checkpoint_io.ResumableRng"}
    ckpt = {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(tmp_path / "ckpt"), "every_n_train_steps": 2, "save_top_k": -1}}  # fmt: skip
    for name, steps, extra in (("whole", 4, []), ("first", 2, [ckpt, rng]), ("resumed", 4, [ckpt, rng])):
        resume = ["--ckpt_path", str(next((tmp_path / "ckpt").glob("*step=2.ckpt")))] if name == "resumed" else []
        result = run_testbed(["fit", "--config", str(config(name, steps, extra)), *resume], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    whole = json.loads((tmp_path / "whole" / "rank0.json").read_text())
    for rank in (0, 1):
        got = json.loads((tmp_path / "resumed" / f"rank{rank}.json").read_text())
        for key in ("basis", "eigenvalues", "diagnostics", "params", "history"):
            assert_nested_close(whole[key], got[key], f"rank{rank}.{key}", rtol=1e-5, atol=1e-6)
