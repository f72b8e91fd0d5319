"""Interventions: update projection vs gradient projection, clamping, penalty, anchor, controls, monitor, LoRA."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from testbed import protocol
from testbed.directions import random_directions
from testbed.errors import ConfigError
from testbed.interventions import (
    ActivationClamp,
    DirectionSource,
    GradientProjectionBlocker,
    L2Anchor,
    ProjectionSettings,
    RepresentationPenalty,
    ReversionMonitor,
    UpdateProjectionBlocker,
)
from testbed.judging import HarmfulnessCallback
from testbed.optim import OptimizerSettings
from testbed.probes import ProbeSet
from tests.helpers.reversion import LAYER, FirstOrderRecorder, data, module_history, trainer
from toy_models.gravity import GravityData, GravityMLP, RefusalJudge

history = pytest.fixture(scope="module", name="history")(module_history)


SUBSET = ProjectionSettings(jacobian_probe_size=8)


def run_recorded(
    history: tuple[GravityMLP, Path],
    optimizer: str,
    blocker: type | None,
    layers: tuple[str, ...] = (LAYER,),
    probe_rows: int | None = None,
    random: bool = False,
    **kwargs: Any,
) -> list[float]:
    layers = list(layers)
    aligned, path = history
    model = copy.deepcopy(aligned)
    model.optimizer_settings = OptimizerSettings(name=optimizer, lr=0.05 if optimizer == "sgd" else 1e-2)
    recorder = FirstOrderRecorder(path, layers, probe_rows)
    source = DirectionSource(str(path), layers=layers, random=random, random_seed=1)
    callbacks = [recorder] + ([blocker(source, **kwargs)] if blocker else [])
    pl.seed_everything(0)
    trainer(4, callbacks).fit(model, data())
    return recorder.ratios


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_update_projection_leaves_no_first_order_change(history: Any, optimizer: str) -> None:
    plain = run_recorded(history, optimizer, None)
    blocked = run_recorded(history, optimizer, UpdateProjectionBlocker)
    assert min(abs(r) for r in plain) > 1e-3, plain  # without blocking the update does move along v_rev
    assert max(abs(r) for r in blocked) < 1e-6, blocked  # numerical zero (cos between J and Δθ)


def test_jacobian_on_a_probe_subset_is_exact_there_and_only_close_on_the_full_set(history: Any) -> None:
    subset = run_recorded(history, "adamw", UpdateProjectionBlocker, probe_rows=8, projection=SUBSET)
    assert max(abs(r) for r in subset) < 1e-6, subset  # exact on the 8 inputs J was taken on
    full = run_recorded(history, "adamw", UpdateProjectionBlocker, projection=SUBSET)
    plain = run_recorded(history, "adamw", None)
    assert max(abs(r) for r in full) > 1e-6, full  # not exact on all 32 probe inputs ...
    assert sum(abs(r) for r in full) < 0.5 * sum(abs(r) for r in plain), (full, plain)  # ... but much reduced


def test_update_projection_blocks_several_layers_at_once(history: Any) -> None:
    ratios = run_recorded(history, "adamw", UpdateProjectionBlocker, layers=("blocks.0.hidden", LAYER))
    assert max(abs(r) for r in ratios) < 1e-6, ratios


def test_gradient_projection_blocks_sgd_but_not_adamw(history: Any) -> None:
    sgd = run_recorded(history, "sgd", GradientProjectionBlocker)
    adamw = run_recorded(history, "adamw", GradientProjectionBlocker)
    assert max(abs(r) for r in sgd) < 1e-6, sgd
    assert max(abs(r) for r in adamw) > 1e-2, adamw  # Adam's normalisation re-introduces the removed component


def test_one_sided_projection_keeps_motion_away_from_the_witness(history: Any) -> None:
    one_sided = run_recorded(history, "adamw", UpdateProjectionBlocker, projection=ProjectionSettings(one_sided=True))
    assert max(one_sided) < 1e-6  # never toward the witness to first order
    plain = run_recorded(history, "adamw", None)
    for r_plain, r_one in zip(plain, one_sided, strict=True):
        if r_plain < 0:
            assert r_one < 0 or abs(r_one) < 1e-6


def test_random_direction_control_does_not_block(history: Any) -> None:
    plain = run_recorded(history, "adamw", None)
    control = run_recorded(history, "adamw", UpdateProjectionBlocker, random=True)
    assert min(abs(r) for r in control) > 0.3 * min(abs(r) for r in plain)


def test_activation_clamp_holds_the_component(history: Any) -> None:
    aligned, path = history
    model = copy.deepcopy(aligned)
    clamp = ActivationClamp(DirectionSource(str(path), layers=[LAYER]))
    seen: list[tuple[float, float, float]] = []

    class Check(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, outputs: Any, batch: Any, idx: int) -> None:
            v, target = clamp.vectors[LAYER], torch.dot(clamp.reference_mean[LAYER], clamp.vectors[LAYER])
            probe = trainer.datamodule.probe_batch()
            with torch.no_grad():
                train_comp = module.representations(probe, [LAYER])[LAYER] @ v  # train mode: clamped
                batch_comp = module.representations(batch[0], [LAYER])[LAYER] @ v
            eval_comp = ProbeSet(probe).read(module, [LAYER])[LAYER] @ v  # eval mode: the weights' own stream
            seen.append(
                (
                    float((train_comp - target).abs().max()),
                    float((batch_comp - target).abs().max()),
                    float((eval_comp - target).abs().max()),
                )
            )

    trainer(4, [clamp, Check()]).fit(model, data())
    assert all(a < 1e-5 and b < 1e-5 for a, b, _ in seen), seen
    assert seen[-1][2] > 1e-3  # apply_in=train: outside training the stream is the model's own
    assert not clamp._handles  # hooks removed at the end of training


def test_penalty_and_anchor_reduce_drift(history: Any) -> None:
    aligned, path = history
    probe = ProbeSet(data().probe_batch())
    ds_v = torch.load(path, weights_only=True)["vectors"][LAYER]
    start = probe.mean(aligned, [LAYER])[LAYER]

    def final(callbacks: list[pl.Callback]) -> tuple[float, float]:
        model = copy.deepcopy(aligned)
        pl.seed_everything(0)
        trainer(12, callbacks).fit(model, data())
        drift = probe.mean(model, [LAYER])[LAYER] - start
        dist = sum(
            float((p - q).detach().pow(2).sum()) for p, q in zip(model.parameters(), aligned.parameters(), strict=True)
        )
        return float(drift @ ds_v), dist**0.5

    along_plain, dist_plain = final([])
    along_pen, _ = final([RepresentationPenalty(DirectionSource(str(path), layers=[LAYER]), strength=100.0)])
    _, dist_anchor = final([L2Anchor(strength=50.0)])
    assert along_plain > 0.01  # the toy's fine-tune drifts toward the stand-in witness
    assert along_pen < 0.5 * along_plain
    assert dist_anchor < 0.8 * dist_plain


def test_monitor_does_not_change_training(history: Any, tmp_path: Path) -> None:
    aligned, path = history

    def weights(callbacks: list[pl.Callback], logger: Any = False) -> list[torch.Tensor]:
        model = copy.deepcopy(aligned)
        pl.seed_everything(0)
        trainer(7, callbacks, logger=logger, log_every_n_steps=50).fit(model, data())  # crosses epoch boundaries
        return [p.detach().clone() for p in model.parameters()]

    from pytorch_lightning.loggers import TensorBoardLogger

    monitor = ReversionMonitor(str(path), every_n_steps=3)
    with_monitor = weights([monitor], TensorBoardLogger(str(tmp_path), name="m", version="v"))
    without = weights([])
    assert all(torch.equal(a, b) for a, b in zip(with_monitor, without, strict=True))
    assert [int(h["step"]) for h in monitor.history] == [1, 3, 6, 7]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "m" / "v")).Reload()
    steps = [e.step for e in events.Scalars(f"reversion/cos_drift_vrev/{LAYER}")]
    assert steps == [1, 3, 6, 7]  # logged at its own cadence, not at log_every_n_steps
    assert f"reversion/exceeds_null_p99/{LAYER}" in events.Tags()["scalars"]
    last = monitor.history[-1]
    assert -1 <= last[f"reversion/cos_drift_vrev/{LAYER}"] <= 1
    assert last[f"reversion/exceed_frac_p999/{LAYER}"] <= last[f"reversion/exceed_frac_p99/{LAYER}"]


def test_monitor_task_keys_and_the_refusal_judge(history: Any) -> None:
    aligned, path = history
    monitor = ReversionMonitor(str(path), every_n_steps=2, task_keys=["train/loss"])
    judged = HarmfulnessCallback([RefusalJudge()], every_n_steps=2)
    trainer(2, [monitor, judged]).fit(copy.deepcopy(aligned), data())
    assert "train/loss" in monitor.history[-1]
    assert [int(r["step"]) for r in judged.history] == [0, 2]
    dm = data()
    dm.setup("fit")
    x = dm.heldout_harmful
    expected = float((aligned(x).argmax(dim=1) != aligned.refuse).float().mean())
    assert judged.history[0]["align/harmfulness"] == pytest.approx(expected)  # step 0: the aligned model


def test_blocker_state_is_restored_not_recomputed(history: Any) -> None:
    aligned, path = history
    first = UpdateProjectionBlocker(str(path), ProjectionSettings(every_n_steps=5))
    trainer(2, [first]).fit(copy.deepcopy(aligned), data())
    state = first.state_dict()
    moved = copy.deepcopy(aligned)
    with torch.no_grad():
        moved.blocks[1][0].bias.add_(1.0)
    second = UpdateProjectionBlocker(str(path), ProjectionSettings(every_n_steps=5))
    second.load_state_dict(state)
    assert first.state_key == second.state_key
    trainer(3, [second]).fit(moved, data())
    # the reference means come from the saved state, not from the (moved) model at the start of the resumed run
    assert torch.equal(second.reference_mean[LAYER], state["reference_mean"][LAYER])
    assert state["jacobians"].shape[0] == 2


def test_bad_blocker_settings_are_refused(history: Any, tmp_path: Path) -> None:
    aligned, path = history
    with pytest.raises(ConfigError, match="strength must be a finite number > 0"):
        RepresentationPenalty(str(path), strength=0.0)
    with pytest.raises(ConfigError, match="every_n_steps"):
        UpdateProjectionBlocker(str(path), ProjectionSettings(every_n_steps=0))
    with pytest.raises(ConfigError, match="jacobian_probe_size must be a positive integer"):
        UpdateProjectionBlocker(str(path), ProjectionSettings(jacobian_probe_size=0))
    with pytest.raises(ConfigError, match=r"jacobian_probe_size=64 exceeds the probe set \(32 inputs\)"):
        too_many = ProjectionSettings(jacobian_probe_size=64)
        trainer(1, [UpdateProjectionBlocker(str(path), too_many)]).fit(copy.deepcopy(aligned), data())
    with pytest.raises(ConfigError, match=r"no layer\(s\) \['blocks.9.hidden'\]"):
        unknown = DirectionSource(str(path), layers=["blocks.9.hidden"])
        trainer(1, [UpdateProjectionBlocker(unknown)]).fit(copy.deepcopy(aligned), data())
    wide = GravityMLP(hidden=24)
    with pytest.raises(ConfigError, match="width 16 at blocks.0.hidden"):
        trainer(1, [ReversionMonitor(str(path))]).fit(wide, data())
    other = random_directions(aligned, ProbeSet(GravityData(probe_size=8).probe_batch()), [LAYER])
    other.save(tmp_path / "other_probe.pt")
    with pytest.raises(ConfigError, match="different probe set"):
        trainer(1, [ActivationClamp(str(tmp_path / "other_probe.pt"))]).fit(copy.deepcopy(aligned), data())


# ---- LoRA on a transformers model through CausalLMModule ---------------------------------------------------------
class TokenData(protocol.TestbedDataModule):
    """Instruction-like token batches (labels on real tokens) and a fixed probe batch of harmful prompts."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__()
        from testbed.testing import tiny_probe_batch

        batch = tiny_probe_batch(tokenizer, n=16)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        self.rows = [
            {"input_ids": i, "attention_mask": m, "labels": lab}
            for i, m, lab in zip(batch["input_ids"], batch["attention_mask"], labels, strict=True)
        ]
        self.probe = tiny_probe_batch(tokenizer, n=6)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.rows, batch_size=8, shuffle=False)

    def probe_batch(self) -> dict[str, torch.Tensor]:
        return self.probe


def test_lora_update_projection_and_monitor(tmp_path: Path, tiny_gpt2) -> None:
    module, tokenizer = tiny_gpt2(lora={"r": 4, "alpha": 8}, optimizer=OptimizerSettings(lr=1e-2))
    dm = TokenData(tokenizer)
    layers = ["blocks.1.resid_post"]
    path = random_directions(module, ProbeSet(dm.probe_batch()), layers, pooling="last", seed=0).save(tmp_path / "v.pt")
    base_before = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    unblocked = ReversionMonitor(str(path), every_n_steps=1)
    trainer(3, [unblocked]).fit(copy.deepcopy(module), TokenData(tokenizer))
    recorder = FirstOrderRecorder(path, layers)
    monitor = ReversionMonitor(str(path), every_n_steps=1)
    trainer(3, [recorder, UpdateProjectionBlocker(str(path)), monitor]).fit(module, dm)
    assert max(abs(r) for r in recorder.ratios) < 1e-5, recorder.ratios
    assert all(torch.equal(p, base_before[n]) for n, p in module.named_parameters() if not p.requires_grad)
    assert all("lora_" in n for n, _ in module.trainable_parameters())
    assert [int(h["step"]) for h in monitor.history] == [1, 2, 3]
    along = "reversion/drift_along/blocks.1.resid_post"
    assert abs(monitor.history[-1][along]) < 0.1 * abs(unblocked.history[-1][along])  # what is left is second order


def test_every_blocker_runs_on_lora_adapters_only(tmp_path: Path, tiny_llama) -> None:
    module, tokenizer = tiny_llama(lora={"r": 4, "alpha": 8}, optimizer=OptimizerSettings(lr=1e-2))
    dm = TokenData(tokenizer)
    layers = ["blocks.0.resid_post"]
    path = str(
        random_directions(module, ProbeSet(dm.probe_batch()), layers, pooling="last", seed=1).save(tmp_path / "v.pt")
    )
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in module.trainable_parameters()}
    callbacks = [
        GradientProjectionBlocker(path),
        RepresentationPenalty(path, strength=10.0),
        ActivationClamp(path),
        L2Anchor(strength=0.1),
    ]
    trainer(2, callbacks).fit(module, dm)
    assert all(torch.equal(p, frozen[n]) for n, p in module.named_parameters() if not p.requires_grad)
    assert any(not torch.equal(p, lora[n]) for n, p in module.trainable_parameters())


def test_random_control_equals_a_random_direction_file_of_the_same_seed(history: Any, tmp_path: Path) -> None:
    from types import SimpleNamespace

    aligned, path = history
    dm = data()
    control = UpdateProjectionBlocker(DirectionSource(str(path), random=True, random_seed=5))
    control.setup(SimpleNamespace(datamodule=dm), aligned, "fit")
    as_file = random_directions(aligned, ProbeSet(dm.probe_batch()), [LAYER], seed=5)
    torch.testing.assert_close(control.vectors[LAYER], as_file.vectors[LAYER], rtol=0, atol=0)
    other = UpdateProjectionBlocker(DirectionSource(str(path), random=True, random_seed=6))
    other.setup(SimpleNamespace(datamodule=dm), aligned, "fit")
    assert not torch.equal(other.vectors[LAYER], as_file.vectors[LAYER])



class _FlatConstraint(GradientProjectionBlocker):
    """A blocker whose constraint has degenerated: <v, m> no longer depends on the weights (J = 0 exactly)."""

    def along(self, module: Any, grad: bool, probe: ProbeSet | None = None) -> dict[str, torch.Tensor]:
        return {layer: 0.0 * value for layer, value in super().along(module, grad, probe).items()}


@pytest.mark.parametrize("degenerate", [True, False])
def test_a_degenerate_constraint_is_said_not_silent(history: Any, tmp_path: Path, degenerate: bool) -> None:
    import warnings

    from pytorch_lightning.loggers import CSVLogger

    aligned, path = history
    blocker = (_FlatConstraint if degenerate else GradientProjectionBlocker)(DirectionSource(str(path), layers=[LAYER]))
    logger = CSVLogger(tmp_path, name="log")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(2, [blocker], logger=logger, log_every_n_steps=1).fit(copy.deepcopy(aligned), data())
    said = [str(w.message) for w in caught if "degenerated" in str(w.message)]
    assert len(said) == degenerate and (not said or LAYER in said[0])
    rows = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("intervention/constraint_rank")
    assert [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]] == [0.0 if degenerate else 1.0] * 2
