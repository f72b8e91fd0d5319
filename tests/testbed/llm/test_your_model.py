"""README's "Run on your model" sequence, run as written on a tiny random Llama laid out at the template's paths
(``experiments/recipes/your_model/``): v_rev from the base and instruct folders, the three arms, the report."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.helpers.families import save_family_pair, write_jsonl_data
from tests.helpers.paths import REPO_ROOT

SECTION = re.compile(r"^## Run on your model\n(.*?)^## ", re.S | re.M)


def readme_commands() -> list[list[str]]:
    """The ``python -m testbed`` commands of README's section, as argument lists (without ``python -m testbed``)."""
    section = SECTION.search((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    assert section, "README has no 'Run on your model' section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.S)
    assert block, "the section has no bash block"
    lines = [line for line in block.group(1).splitlines() if line.startswith("python -m testbed ")]
    return [shlex.split(line)[3:] for line in lines]


def test_readme_sequence_names_every_step() -> None:
    verbs = [command[0] for command in readme_commands()]
    assert verbs == ["vrev", "fit", "fit", "fit", "report"]


def test_readme_sequence_runs_on_a_tiny_model(run_cli, tmp_path: Path) -> None:
    base, aligned = save_family_pair("llama", tmp_path / "pair")
    (tmp_path / "models").mkdir()
    base.rename(tmp_path / "models" / "base")
    aligned.rename(tmp_path / "models" / "instruct")
    write_jsonl_data(tmp_path / "data", n_train=24)
    for command in readme_commands():
        if command[0] == "vrev":
            command[command.index("--layers") + 1] = "[blocks.1.resid_post]"  # the tiny model has 2 layers
        if command[0] == "fit":
            command += ["--trainer.max_steps", "2", "--trainer.precision", "32-true"]
        assert run_cli(command) == 0, command
    runs = tmp_path / "runs" / "your_model"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["plain", "random_control", "report",
                                                                     "update_projection"]  # fmt: skip
    report = (runs / "report" / "report.md").read_text()
    for tag in ("reversion/cos_drift_vrev/blocks.1.resid_post", "align/harmfulness`"):
        assert tag in report
    assert "harmfulness_ci" not in report  # the tag filter keeps the headline values only
    for arm in ("plain", "random_control", "update_projection"):
        assert f"| {arm} |" in report
