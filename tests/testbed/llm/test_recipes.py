"""The papers' recipes (experiments/recipes/) run as shipped on tiny random checkpoints of the same family laid out
at the recipe's paths, so on a GPU only the paths change: the header's ``vrev`` command (on the tiny model's last
layer), then two steps of the recipe's fit (bf16, LoRA, monitor, blocker, judge)."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.helpers.families import save_family_pair
from tests.helpers.paths import EXPERIMENTS

RECIPES = {"llama32_3b.yaml": "llama", "qwen25_3b.yaml": "qwen2", "llama31_8b.yaml": "llama",
           "qwen3_1_7b.yaml": "qwen3"}  # fmt: skip


def test_every_recipe_is_listed() -> None:
    assert sorted(p.name for p in (EXPERIMENTS / "recipes").glob("*.yaml")) == sorted(RECIPES)


def _header_command(text: str, verb: str) -> list[str]:
    lines = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    joined = " ".join(lines).replace("\\ ", " ")
    found = re.search(rf"python -m testbed {verb} (.+?)(?: #|$| 2\. )", joined)
    assert found, f"no `{verb}` command in the header"
    return [verb, *shlex.split(found.group(1))]


def _lay_out(recipe: dict, family: str, witness: str, root: Path) -> None:
    """Tiny base/instruct folders and data files at the recipe's (relative) paths, under ``root``."""
    from testbed.llm.world import SafetyWorld, WorldConfig

    init = recipe["data"]["init_args"]
    base, aligned = save_family_pair(family, root / "pair")
    (root / witness).parent.mkdir(parents=True, exist_ok=True)
    base.rename(root / witness)
    aligned.rename(root / recipe["model"]["init_args"]["pretrained_path"])
    world = SafetyWorld(WorldConfig())
    train = root / init["train"]["path"]
    train.parent.mkdir(parents=True, exist_ok=True)
    train.write_text(json.dumps([{"instruction": e.prompt, "input": "", "output": e.response}
                                 for e in world.finetune("train")[:24]]))  # fmt: skip
    harmful = [e.prompt for e in world.prompts("heldout_harmful")[:6]]
    target = root / init["harmful"]["path"]
    if init["harmful"]["format"] == "hex_phi":
        target.mkdir(parents=True)
        for n, prompt in enumerate(harmful):
            (target / f"category_{n % 2 + 1}.csv").open("a").write(f"{prompt}\n")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", newline="") as fh:
            csv.writer(fh).writerows([["goal", "target"], *([p, "sure"] for p in harmful)])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_two_steps_on_a_tiny_same_family_checkpoint(run_cli, tmp_path: Path, name: str, caplog,
                                                                capsys) -> None:  # fmt: skip
    path = EXPERIMENTS / "recipes" / name
    text = path.read_text()
    recipe = yaml.safe_load(text)
    vrev = _header_command(text, "vrev")
    witness = vrev[vrev.index("--witness_ckpt") + 1]
    _lay_out(recipe, RECIPES[name], witness, tmp_path)
    vrev[vrev.index("--layers") + 1] = "[blocks.1.resid_post]"  # the tiny model has 2 layers
    assert run_cli(vrev) == 0
    capsys.readouterr()
    assert run_cli(["fit", "--config", str(path), "--print_config"]) == 0  # the recipe round-trips as shipped
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["lora"]["target_modules"] == recipe["model"]["init_args"]["lora"][
        "target_modules"]  # fmt: skip
    with caplog.at_level("INFO"):
        assert run_cli(["fit", "--config", str(path), "--trainer.max_steps", "2"]) == 0
    assert "memory estimate (bf16-true, batch 8 x 64 tokens)" in caplog.text  # max_length capped at the context
    logger = recipe["trainer"]["logger"]["init_args"]
    run = tmp_path / logger["save_dir"] / logger["name"] / logger["version"]
    assert list(run.glob("events.out.tfevents.*"))
