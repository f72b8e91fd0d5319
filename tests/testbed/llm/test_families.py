"""Every common decoder family, as a user would run it: tiny random ``save_pretrained`` folders (base and aligned)
with the testbed's tokenizer, ``vrev`` between them, then two fine-tune steps (LoRA; full under ``-m slow``) with the
reversion monitor and the update-projection blocker, all through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from testbed.directions import load_direction
from tests.helpers.families import FAMILIES, FamilySetup, missing_families

PRESENT = [name for name in FAMILIES if name not in missing_families()]
COS = "reversion/cos_drift_vrev/blocks.1.resid_post"


def test_transformers_has_every_family() -> None:
    assert missing_families() == []


def _monitored_cos(root: Path, family: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(root / "runs" / family / "v")).Reload()
    return [(e.step, e.value) for e in events.Scalars(COS)]


def _vrev_then_fit(run_cli, tmp_path: Path, family: str, lora: bool) -> FamilySetup:
    setup = FamilySetup(family, tmp_path)
    config = setup.config(lora=lora)
    assert run_cli(setup.vrev_args(config)) == 0
    direction = load_direction(str(setup.vrev))
    assert direction.layers == [setup.layer]
    assert run_cli(["fit", "--config", str(config)]) == 0
    cos = _monitored_cos(tmp_path, family)
    assert [step for step, _ in cos] == [1, 2] and all(abs(value) <= 1 for _, value in cos)
    return setup


# The default run covers one family of each loading/LoRA shape (plain attention, fused query_key_value, the
# multimodal wrapper, peft-less targets, a renamed head); every family runs under ``-m slow``.
DEFAULT_RUN = {"gpt2", "llama", "gpt_neox", "gemma3", "phi3", "opt"}
LORA_CASES = [f if f in DEFAULT_RUN else pytest.param(f, marks=pytest.mark.slow) for f in PRESENT]


@pytest.mark.parametrize("family", LORA_CASES)
def test_vrev_and_lora_fine_tune(run_cli, tmp_path: Path, family: str) -> None:
    _vrev_then_fit(run_cli, tmp_path, family, lora=True)


@pytest.mark.slow
@pytest.mark.parametrize("family", PRESENT)
def test_vrev_and_full_fine_tune(run_cli, tmp_path: Path, family: str) -> None:
    _vrev_then_fit(run_cli, tmp_path, family, lora=False)
