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


def _assert_match(tmp_path: Path, layer: str, steps: list[int]) -> None:
    """Both FSDP2 ranks report the single process's weights (gathered) and logged drift statistics."""
    one = json.loads((tmp_path / "single" / "rank0.json").read_text())
    history = one["callbacks"]["ReversionMonitor"]["history"]
    assert [int(r["step"]) for r in history] == steps
    assert all(abs(r[f"reversion/cos_drift_vrev/{layer}"]) > 1e-4 for r in history)
    for rank in (0, 1):
        got = json.loads((tmp_path / "fsdp" / f"rank{rank}.json").read_text())
        assert got["world_size"] == 2
        assert_nested_close(one["params"], got["params"], f"rank{rank}.params", rtol=1e-5, atol=1e-5)
        logged = [{k: v for k, v in r.items() if k.startswith("reversion/")}
                  for r in got["callbacks"]["ReversionMonitor"]["history"]]  # fmt: skip
        expected = [{k: v for k, v in r.items() if k.startswith("reversion/")} for r in history]
        assert_nested_close(expected, logged, f"rank{rank}.history", rtol=1e-5, atol=1e-5)



def test_blocked_finetune_fsdp2_two_processes_match_one(tmp_path: Path, run_cli, single_threaded) -> None:
    direction = write_direction(tmp_path / "vrev.pt")
    assert run_cli(["fit", "--config", str(_run(tmp_path, "single", direction, 32))]) == 0
    sharded = _run(tmp_path, "fsdp", direction, 16, devices=2, strategy=FSDP2)
    result = run_testbed(["fit", "--config", str(sharded)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    _assert_match(tmp_path, "blocks.1.hidden", steps=[1, 2, 4, 6])
    one = json.loads((tmp_path / "single" / "rank0.json").read_text())
    assert max(abs(x) for x in one["callbacks"]["UpdateProjectionBlocker"]["jacobians"]) > 0  # a real Jacobian


# ---- which interventions run under FSDP2, and what a refusal says (checked before fit) ----------------------------
def _interventions() -> dict[str, object]:
    from testbed import interventions as iv

    return {
        "monitor": iv.ReversionMonitor("v.pt"),
        "update": iv.UpdateProjectionBlocker("v.pt"),
        "clamp_each": iv.ActivationClamp("v.pt", mode="each"),
        "gradient": iv.GradientProjectionBlocker("v.pt"),
        "penalty": iv.RepresentationPenalty("v.pt"),
        "clamp_shift": iv.ActivationClamp("v.pt", mode="shift"),
        "anchor": iv.L2Anchor(),
        "curvature_monitor": iv.CurvatureMonitor(),
        "subspace_blocker": iv.SubspaceBlocker(),
        "curvature_series": iv.CurvatureMonitor(theory_order=2),
    }


@pytest.mark.parametrize("name", sorted(_interventions()))
def test_fsdp2_runs_the_shard_aware_interventions_and_refuses_the_rest(name: str) -> None:
    from types import SimpleNamespace

    from testbed.errors import ConfigError
    from testbed.sharding import FSDP2Strategy
    from testbed.strategies import check_strategy, strategy_family

    strategy = FSDP2Strategy()
    assert strategy_family(strategy) == "fsdp2"
    callback = _interventions()[name]
    trainer = SimpleNamespace(strategy=strategy, callbacks=[callback])
    if name in ("monitor", "update", "clamp_each", "curvature_monitor", "subspace_blocker"):
        check_strategy(trainer)
        return
    instead = "one device" if name == "clamp_shift" else "strategy: ddp or one device"
    with pytest.raises(ConfigError, match=rf"\(fsdp2\) cannot run .*Use {instead} \(devices: 1\) instead"):
        check_strategy(trainer)


def test_fsdp1_refusal_names_the_fsdp2_strategy() -> None:
    from types import SimpleNamespace

    from pytorch_lightning.strategies import FSDPStrategy

    from testbed import interventions as iv
    from testbed.errors import ConfigError
    from testbed.strategies import check_strategy

    trainer = SimpleNamespace(strategy=FSDPStrategy(), callbacks=[iv.ReversionMonitor("v.pt"),
                                                                  iv.UpdateProjectionBlocker("v.pt")])  # fmt: skip
    with pytest.raises(ConfigError, match=r"UpdateProjectionBlocker .*Use strategy: testbed\.sharding\.FSDP2Strategy"):
        check_strategy(trainer)


def test_cli_refuses_an_unsupported_intervention_before_launching(tmp_path: Path, run_cli, capsys) -> None:
    direction = write_direction(tmp_path / "vrev.pt")
    config = _run(tmp_path, "refused", direction, 16, devices=2, strategy=FSDP2)
    assert run_cli(["fit", "--config", str(config), "--trainer.callbacks+=testbed.interventions.L2Anchor"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("testbed: error: strategy FSDP2Strategy (fsdp2) cannot run L2Anchor")
    assert "Use strategy: ddp or one device (devices: 1) instead" in err[-1]
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_causal_lm_fsdp2_two_processes_match_one(tmp_path: Path, run_cli, single_threaded, lora: bool) -> None:
    """The LLM path: tiny GPT-2 (LoRA, or full fine-tuning with its tied embeddings) sharded per decoder layer."""
    from tests.helpers.lm_runs import lm_args, lm_config, write_lm_direction

    # AdamW turns the exactly-zero gradient of GPT-2's attention key bias into round-off-driven ±lr steps, so the
    # full fine-tune is compared under SGD
    args = lm_args(tmp_path, lora=lora, optimizer=None if lora else {"name": "sgd", "lr": 0.1})
    write_lm_direction(tmp_path, *args)
    assert run_cli(["fit", "--config", str(lm_config(tmp_path, "single", args, 8))]) == 0
    result = run_testbed(["fit", "--config", str(lm_config(tmp_path, "fsdp", args, 4, devices=2, strategy=FSDP2))],
                         cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_match(tmp_path, "blocks.1.resid_post", steps=[1, 2, 4])


# ---- the shard-aware pieces on plain tensors (one process: no reduction, the ordinary results) --------------------
def test_flat_algebra_over_plain_parameters_is_the_ordinary_algebra() -> None:
    from testbed.interventions.flat import flat_dot, flat_matvec, flat_norm, flatten, orthonormal_rows
    from testbed.sharding import is_sharded, shard_groups
    from testbed.testing import TinyRegressor

    params = list(TinyRegressor().parameters())
    assert shard_groups(params) == () and not is_sharded(params)
    a, b = flatten(params, params), torch.randn(sum(p.numel() for p in params))
    assert torch.equal(flat_dot(a, b, params), torch.dot(a, b))
    assert torch.equal(flat_norm(a, params), torch.dot(a, a).sqrt())
    rows = torch.stack([a, b])
    assert torch.equal(flat_matvec(rows, b, params), rows @ b)
    torch.testing.assert_close(orthonormal_rows(rows, over=params), orthonormal_rows(rows))


def test_backward_grads_is_the_vjp_and_keeps_the_training_gradient() -> None:
    from testbed.sharding import backward_grads
    from testbed.testing import TinyRegressor

    model = TinyRegressor()
    params = list(model.parameters())
    x = torch.randn(5, 4)
    model(x).pow(2).sum().backward()
    training = [p.grad.clone() for p in params]
    got = backward_grads(lambda: model(x).sum(), params)
    expected = torch.autograd.grad(model(x).sum(), params)
    for g, e, p, t in zip(got, expected, params, training, strict=True):
        torch.testing.assert_close(g, e)
        assert torch.equal(p.grad, t)


def test_fsdp2_root_and_settings() -> None:
    from testbed.errors import ConfigError
    from testbed.sharding import FSDP2Strategy, default_root
    from testbed.testing import TinyRegressor, tiny_lm

    assert default_root(TinyRegressor()) == ""
    assert default_root(tiny_lm("gpt2", lora={"r": 2})[0]) == "model"
    with pytest.raises(ConfigError, match="units must be non-empty module paths"):
        FSDP2Strategy(units=[""])
