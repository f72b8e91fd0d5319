"""The reversion layer under DDP: two CPU processes (gloo) give the numbers of one process with the same global batch.

The tiny gravity fine-tune uses the whole training set as one global batch (32 examples): one process sees all 32,
each of two DDP processes sees 16, and DDP averages the gradients, so the runs must agree up to float round-off.
Every intervention runs in the same fit (monitor, update projection, gradient projection, representation penalty,
activation clamp, L2 anchor), so a rank-local computation anywhere shows up as a difference. The monitor shards the
probe batch across ranks and reduces the sums: both ranks must report the single-process drift statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.compare import assert_nested_close
from tests.helpers.gravity_runs import finetune_config, run_testbed, write_direction

ALL_INTERVENTIONS = ["GradientProjectionBlocker", "RepresentationPenalty", "ActivationClamp", "L2Anchor"]



def _extra(direction: Path, out: Path) -> list[dict]:
    d = str(direction)
    return [
        {"class_path": "testbed.interventions.GradientProjectionBlocker", "init_args": {"direction": {"path": d}}},
        {"class_path": "testbed.interventions.RepresentationPenalty",
         "init_args": {"direction": {"path": d}, "strength": 5.0}},
        {"class_path": "testbed.interventions.ActivationClamp",
         "init_args": {"direction": {"path": d}, "mode": "each"}},
        {"class_path": "testbed.interventions.L2Anchor", "init_args": {"strength": 0.5}},
        {"class_path": "tests.helpers.callbacks.DumpState", "init_args": {"out": str(out)}},
    ]


def _close(a, b, where: str) -> None:
    assert_nested_close(a, b, where, rtol=1e-4, atol=1e-5)  # two processes sum in another order: float round-off


def test_blocked_finetune_two_processes_match_one(tmp_path: Path, run_cli, single_threaded) -> None:
    direction = write_direction(tmp_path / "vrev.pt")
    single = finetune_config(tmp_path / "single.yaml", direction, max_steps=6, data={"n_train": 32, "batch_size": 32},
                             callbacks=_extra(direction, tmp_path / "single"))
    assert run_cli(["fit", "--config", str(single)]) == 0

    ddp = finetune_config(tmp_path / "ddp.yaml", direction, max_steps=6, data={"n_train": 32, "batch_size": 16},
                          callbacks=_extra(direction, tmp_path / "ddp"),
                          trainer={"devices": 2, "strategy": "ddp"})
    result = run_testbed(["fit", "--config", str(ddp)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    one = json.loads((tmp_path / "single" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert one["world_size"] == 1 and [r["world_size"] for r in ranks] == [2, 2]

    assert max(abs(x) for x in one["callbacks"]["UpdateProjectionBlocker"]["jacobians"]) > 0  # a real Jacobian
    history = one["callbacks"]["ReversionMonitor"]["history"]
    assert [int(r["step"]) for r in history] == [1, 2, 4, 6]
    assert all(abs(r["reversion/cos_drift_vrev/blocks.1.hidden"]) > 1e-4 for r in history)

    for rank, got in enumerate(ranks):
        _close(one["params"], got["params"], f"rank{rank}.params")
        for name in ["UpdateProjectionBlocker", *ALL_INTERVENTIONS[:-1], "L2Anchor"]:
            if name in one["callbacks"]:
                _close(one["callbacks"][name], got["callbacks"][name], f"rank{rank}.{name}")
        # drift statistics are reduced across processes: each rank reports the single-process values
        drift = [{k: v for k, v in r.items() if k.startswith("reversion/")} for r in history]
        got_drift = [{k: v for k, v in r.items() if k.startswith("reversion/")}
                     for r in got["callbacks"]["ReversionMonitor"]["history"]]
        _close(drift, got_drift, f"rank{rank}.ReversionMonitor.history")


# ---- which intervention runs under which strategy (checked before fit) -------------------------------------------
def _strategy(family: str):
    from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, SingleDeviceStrategy

    if family == "deepspeed":  # not installed here: classify an uninitialised instance
        return object.__new__(DeepSpeedStrategy)
    return {"single": lambda: SingleDeviceStrategy("cpu"), "ddp": DDPStrategy, "fsdp": FSDPStrategy}[family]()


def _callbacks() -> dict[str, object]:
    from testbed import interventions as iv

    return {
        "monitor": iv.ReversionMonitor("v.pt"),
        "update": iv.UpdateProjectionBlocker("v.pt"),
        "update_random": iv.UpdateProjectionBlocker(iv.DirectionSource("v.pt", random=True)),
        "gradient": iv.GradientProjectionBlocker("v.pt"),
        "penalty": iv.RepresentationPenalty("v.pt"),
        "clamp_each": iv.ActivationClamp("v.pt", mode="each"),
        "clamp_shift": iv.ActivationClamp("v.pt", mode="shift"),
        "anchor": iv.L2Anchor(),
    }


ALLOWED = {  # the documented table (testbed/strategies.py)
    "single": {"monitor", "update", "update_random", "gradient", "penalty", "clamp_each", "clamp_shift", "anchor"},
    "ddp": {"monitor", "update", "update_random", "gradient", "penalty", "clamp_each", "anchor"},
    "fsdp": {"monitor", "clamp_each"},
    "deepspeed": {"monitor", "clamp_each"},
}


@pytest.mark.parametrize("family", sorted(ALLOWED))
def test_strategy_support_table(family: str) -> None:
    from types import SimpleNamespace

    from testbed.errors import ConfigError
    from testbed.guards import NonFiniteGuard
    from testbed.strategies import check_strategy, strategy_family

    strategy = _strategy(family)
    assert strategy_family(strategy) == family
    for name, callback in _callbacks().items():
        trainer = SimpleNamespace(strategy=strategy, callbacks=[NonFiniteGuard(), callback])
        if name in ALLOWED[family]:
            check_strategy(trainer)
        else:
            with pytest.raises(ConfigError, match=rf"{type(callback).__name__}.*supported: single"):
                check_strategy(trainer)


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    """The guard's decision is reduced across processes: a NaN on rank 1 stops both ranks at the same step."""
    import yaml

    config = {
        "seed_everything": 0,
        "model": {"class_path": "testbed.testing.TinyRegressor",
                  "init_args": {"poison_loss_at_step": 3, "poison_rank": 1}},
        "data": {"class_path": "testbed.testing.TinyData"},
        "trainer": {"max_steps": 8, "accelerator": "cpu", "devices": 2, "strategy": "ddp", "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False, "limit_val_batches": 0},
    }
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump(config))
    result = run_testbed(["fit", "--config", str(tmp_path / "nan.yaml")], cwd=tmp_path, timeout=180)
    assert result.returncode != 0
    assert "non-finite training loss at step 3: loss = nan" in result.stderr


@pytest.mark.slow
def test_lora_causal_lm_two_processes_match_one(tmp_path: Path, run_cli, single_threaded) -> None:
    """The same check on the LLM path: a tiny GPT-2 with LoRA, JSONL data, monitor + update projection."""
    from tests.helpers.lm_runs import lm_args, lm_config, write_lm_direction

    args = lm_args(tmp_path)
    write_lm_direction(tmp_path, *args)
    assert run_cli(["fit", "--config", str(lm_config(tmp_path, "single", args, 8))]) == 0
    result = run_testbed(["fit", "--config", str(lm_config(tmp_path, "ddp", args, 4, devices=2, strategy="ddp"))],
                         cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((tmp_path / "single" / "rank0.json").read_text())
    history = one["callbacks"]["ReversionMonitor"]["history"]
    assert [int(r["step"]) for r in history] == [1, 2, 4]
    for rank in (0, 1):
        got = json.loads((tmp_path / "ddp" / f"rank{rank}.json").read_text())
        _close(one["params"], got["params"], f"rank{rank}.params")
        _close(one["callbacks"]["UpdateProjectionBlocker"], got["callbacks"]["UpdateProjectionBlocker"],
               f"rank{rank}.UpdateProjectionBlocker")
        drift = [{k: v for k, v in r.items() if k.startswith("reversion/")} for r in history]
        got_drift = [{k: v for k, v in r.items() if k.startswith("reversion/")}
                     for r in got["callbacks"]["ReversionMonitor"]["history"]]
        _close(drift, got_drift, f"rank{rank}.ReversionMonitor.history")
