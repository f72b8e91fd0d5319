"""Kill a blocked fine-tune mid-phase, resume it with ``--ckpt_path``: the end state equals an uninterrupted run's.

The killed run is a real subprocess that SIGKILLs itself after step 6 (checkpoints every 4 steps, so the last one
is at step 4, an epoch boundary). The resumed run and the uninterrupted run use the same config and seed; their
step-12 checkpoints must agree: weights, optimizer state, the blocker's state (directions, reference means,
Jacobian rows and basis), the monitor's history and null counters, and the RNG state.
"""

from __future__ import annotations

from pathlib import Path

import torch

from testbed.io import load_torch_file
from tests.helpers.compare import assert_nested_close
from tests.helpers.gravity_runs import finetune_config, run_testbed, write_direction


def _checkpoint_callback(dirpath: Path) -> dict:
    return {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(dirpath), "every_n_train_steps": 4, "save_top_k": -1, "filename": "{step}"}}


def _callback_state(ckpt: dict, name: str) -> dict:
    states = [v for k, v in ckpt["callbacks"].items() if k.startswith(name)]
    assert len(states) == 1, f"{name} state not in checkpoint: {list(ckpt['callbacks'])}"
    return states[0]


def test_killed_blocked_finetune_resumes_to_the_uninterrupted_result(tmp_path, run_cli, single_threaded) -> None:
    direction = write_direction(tmp_path / "vrev.pt")
    full_cfg = finetune_config(tmp_path / "full.yaml", direction, callbacks=[_checkpoint_callback(tmp_path / "full")])
    assert run_cli(["fit", "--config", str(full_cfg)]) == 0

    killer = {"class_path": "tests.helpers.callbacks.KillAtStep", "init_args": {"step": 6}}
    killed_cfg = finetune_config(tmp_path / "killed.yaml", direction,
                                 callbacks=[_checkpoint_callback(tmp_path / "resumed"), killer])
    killed = run_testbed(["fit", "--config", str(killed_cfg)], cwd=tmp_path)
    assert killed.returncode == -9, killed.stderr[-2000:]  # died by SIGKILL mid-phase
    assert sorted(p.name for p in (tmp_path / "resumed").glob("*.ckpt")) == ["step=4.ckpt"]

    resume_cfg = finetune_config(tmp_path / "resume.yaml", direction,
                                 callbacks=[_checkpoint_callback(tmp_path / "resumed")])
    code = run_cli(["fit", "--config", str(resume_cfg), "--ckpt_path", str(tmp_path / "resumed" / "step=4.ckpt")])
    assert code == 0

    full = load_torch_file(tmp_path / "full" / "step=12.ckpt")
    resumed = load_torch_file(tmp_path / "resumed" / "step=12.ckpt")
    assert full["global_step"] == resumed["global_step"] == 12
    assert_nested_close(full["state_dict"], resumed["state_dict"], "state_dict")
    assert_nested_close(full["optimizer_states"], resumed["optimizer_states"], "optimizer_states")

    blocker_full = _callback_state(full, "UpdateProjectionBlocker")
    blocker_resumed = _callback_state(resumed, "UpdateProjectionBlocker")
    assert blocker_full["jacobians"] is not None and blocker_full["jacobians"].shape[0] == 1
    assert_nested_close(blocker_full, blocker_resumed, "UpdateProjectionBlocker")

    monitor_full = _callback_state(full, "ReversionMonitor")
    monitor_resumed = _callback_state(resumed, "ReversionMonitor")
    assert [int(r["step"]) for r in monitor_full["history"]] == [1, 2, 4, 6, 8, 10, 12]
    assert_nested_close(monitor_full, monitor_resumed, "ReversionMonitor")
    assert_nested_close(_callback_state(full, "ResumableRng"), _callback_state(resumed, "ResumableRng"), "ResumableRng")


def test_resume_without_rng_state_would_diverge(tmp_path, run_cli, single_threaded) -> None:
    """Control: the gravity data is shuffled, so the RNG state really matters for the equality above.

    Two uninterrupted runs that differ only in the torch RNG state at the start of epoch 2 end apart.
    """
    direction = write_direction(tmp_path / "vrev.pt")
    base = finetune_config(tmp_path / "a.yaml", direction, max_steps=8,
                           callbacks=[_checkpoint_callback(tmp_path / "a")])
    assert run_cli(["fit", "--config", str(base)]) == 0
    # Resume from step 4, but wipe the saved RNG state: epoch 2 is shuffled differently.
    ckpt = load_torch_file(tmp_path / "a" / "step=4.ckpt")
    rng_key = next(k for k in ckpt["callbacks"] if k.startswith("ResumableRng"))
    ckpt["callbacks"][rng_key]["torch"] = torch.Generator().manual_seed(12345).get_state()
    torch.save(ckpt, tmp_path / "wiped.ckpt")
    other = finetune_config(tmp_path / "b.yaml", direction, max_steps=8,
                            callbacks=[_checkpoint_callback(tmp_path / "b")])
    assert run_cli(["fit", "--config", str(other), "--ckpt_path", str(tmp_path / "wiped.ckpt")]) == 0
    a = load_torch_file(tmp_path / "a" / "step=8.ckpt")["state_dict"]
    b = load_torch_file(tmp_path / "b" / "step=8.ckpt")["state_dict"]
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-4
