"""A tiny end-to-end safety-world history through `python -m testbed study`, and run-to-run determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from testbed.optim import OptimizerSettings
from tests.helpers.paths import REPO_ROOT
from tests.helpers.studies import tiny_study

FAST = OptimizerSettings(lr=0.01)

LLM = REPO_ROOT / "experiments" / "llm_safety"
TINY_OVERRIDES = {
    "model.init_args.model_config": {"n_layer": 1, "n_head": 2, "n_embd": 16, "n_positions": 48},
    "data.init_args.world": {"pretrain_size": 64, "align_size": 32, "finetune_size": 32, "eval_size": 12},
    "data.init_args.batch_size": 8,
    "data.init_args.probe_size": 8,
    "trainer.max_steps": 3,
    "trainer.val_check_interval": 3,
    "trainer.limit_val_batches": 1,
}


def _tiny_study(tmp_path: Path) -> Path:
    directions = yaml.safe_load((LLM / "study.yaml").read_text())["directions"]
    for direction in directions.values():
        direction["layers"] = ["blocks.0.resid_post"]
    directions["vrev_null"]["null_samples"] = 20
    sweeps = {"dose": {"base": "block", "grid": {"callbacks.0.init_args.objective.strength": [-0.3]}}}
    return tiny_study(
        LLM / "study.yaml", tmp_path, seeds=[0, 1],
        arms=["plain", "block", "update_projection", "update_projection_clusters", "random_control", "rehearsal"],
        overrides=dict.fromkeys(("pretrain", "align", "finetune"), TINY_OVERRIDES),
        changes={"name": "llm_tiny", "directions": directions, "sweeps": sweeps},
    )


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {t: [e.value for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_tiny_history_runs_all_phases_and_logs_the_study_tags(tmp_path, run_cli) -> None:
    assert run_cli(["study", "--config", str(_tiny_study(tmp_path)), "--quiet", "true"]) == 0
    root = tmp_path / "runs" / "llm_tiny"
    for phase in ("pretrain", "align"):
        done = json.loads((root / "_shared" / phase / "seed=0" / "DONE.json").read_text())
        assert done["global_step"] == 3
    assert (root / "_shared" / "_directions" / "seed=0" / "vrev.pt").is_file()
    null = torch.load(root / "_shared" / "_directions" / "seed=1" / "vrev_null.pt", weights_only=True)
    # the other seed's history gives 2 pairs (its witness -> reference, and the roles shuffled) + 20 resamples
    assert null["vectors"]["blocks.0.resid_post"].shape == (2 + 20, 16) and null["metadata"]["pairs"] == 2
    align = _scalars(root / "_shared" / "align" / "seed=0")
    assert len(align["align/harmfulness"]) == 2  # before and after alignment
    assert all(0.0 <= v <= 100.0 for v in align["align/harmfulness_gen"])
    plain = _scalars(root / "plain" / "seed=0")
    blocked = _scalars(root / "update_projection" / "seed=0")
    pushed = _scalars(root / "dose" / "strength=-0.3" / "seed=1")
    for tags in (plain, blocked, pushed, _scalars(root / "rehearsal" / "seed=0")):
        assert {"align/harmfulness", "align/harmfulness_ci_high", "align/harmfulness_exact",
                "align/harmfulness_exact_incoherent", "align/harmfulness_exact_agree_harmfulness", "val/loss",
                "reversion/cos_drift_vrev/blocks.0.resid_post",
                "reversion/exceeds_null_matched_p99/blocks.0.resid_post"} <= set(tags)  # fmt: skip
    assert "intervention/objective_grad_ratio" in pushed
    config = yaml.safe_load((root / "dose" / "strength=-0.3" / "seed=1" / "run_config.yaml").read_text())
    assert config["trainer"]["callbacks"][-1]["init_args"]["objective"]["strength"] == -0.3
    # Update projection holds the probe representation in place along v_rev (first order): |cos| small.
    assert abs(blocked["reversion/cos_drift_vrev/blocks.0.resid_post"][0]) < 0.2


def test_tiny_history_in_process_with_monitor_judge_and_blocker(tmp_path) -> None:
    import copy

    from testbed.directions import Extraction, extract_direction
    from testbed.interventions import ReversionMonitor, UpdateProjectionBlocker
    from testbed.judging import HarmfulnessCallback
    from testbed.llm import CausalLMModule, SafetyWorldDataModule
    from testbed.llm.judges import HarmfulnessJudge

    pl.seed_everything(0)
    world = TINY_OVERRIDES["data.init_args.world"]
    module = CausalLMModule(model_config=TINY_OVERRIDES["model.init_args.model_config"], optimizer=FAST)

    def fit(phase: str, callbacks: list) -> SafetyWorldDataModule:
        dm = SafetyWorldDataModule(phase=phase, world=world, batch_size=8, probe_size=8)
        trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, limit_val_batches=0, callbacks=callbacks)  # fmt: skip
        trainer.fit(module, dm)
        return dm

    fit("pretrain", [])
    witness = copy.deepcopy(module)
    dm = fit("align", [])
    layers = ["blocks.0.resid_post"]
    direction = extract_direction(witness, module, dm.probe_batch(), layers, Extraction(pooling="last"))
    path = direction.save(tmp_path / "vrev.pt")
    monitor = ReversionMonitor(str(path), every_n_steps=1)
    judged = HarmfulnessCallback([HarmfulnessJudge(method="generate")], every_n_steps=1)
    fit("finetune", [monitor, judged, UpdateProjectionBlocker(str(path))])
    assert [int(r["step"]) for r in monitor.history] == [1, 2, 3]
    assert [int(r["step"]) for r in judged.history] == [0, 1, 2, 3]
    for record in judged.history:
        assert 0.0 <= record["align/harmfulness"] <= 100.0
        assert record["align/harmfulness_ci_low"] <= record["align/harmfulness"] <= record["align/harmfulness_ci_high"]
    assert abs(monitor.history[0]["reversion/cos_drift_vrev/blocks.0.resid_post"]) < 0.2
    assert torch.isfinite(torch.tensor(monitor.history[-1]["train/loss"]))


def test_same_seed_same_weights() -> None:
    from testbed.llm import CausalLMModule, SafetyWorldDataModule

    def run(seed: int) -> list[torch.Tensor]:
        pl.seed_everything(seed)
        module = CausalLMModule(model_config=TINY_OVERRIDES["model.init_args.model_config"], optimizer=FAST)
        dm = SafetyWorldDataModule(world=TINY_OVERRIDES["data.init_args.world"], batch_size=8)
        pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, limit_val_batches=0).fit(module, dm)  # fmt: skip
        return [p.detach().clone() for p in module.parameters()]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
