"""The field's data formats through ``datasets``: presets read to the same examples as the JSONL path, over-long
rows truncated or refused by the setting, malformed files one error naming file and row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed.errors import ConfigError
from testbed.llm.data import JsonlDataModule, read_jsonl
from testbed.llm.dataset_module import DatasetDataModule
from testbed.llm.formats import DataSource, read_examples, read_prompts
from tests.helpers.formats import write_format_fixtures, write_jsonl_equivalents
from tests.helpers.paths import REPO_ROOT


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    return {**write_format_fixtures(root / "presets"), **write_jsonl_equivalents(root / "jsonl")}


def _pairs(examples: list) -> list[tuple[str, str]]:
    return [(e.prompt, e.response) for e in examples]


@pytest.mark.parametrize("name, fmt", [("alpaca_json", "alpaca"), ("alpaca_jsonl", "alpaca"),
                                       ("alpaca_parquet", "alpaca"), ("alpaca_saved", "alpaca"),
                                       ("messages", "messages")])  # fmt: skip
def test_instruction_presets_read_the_same_examples_as_jsonl(fixtures: dict, name: str, fmt: str) -> None:
    jsonl = [(r["prompt"], r["response"]) for r in read_jsonl(fixtures["examples"], ("prompt", "response"))]
    assert _pairs(read_examples(DataSource(str(fixtures[name]), fmt))) == jsonl
    assert _pairs(read_examples(DataSource(str(fixtures["examples"])))) == jsonl  # the JSONL file through datasets


@pytest.mark.parametrize("name, fmt", [("advbench", "advbench"), ("hex_phi", "hex_phi"),
                                       ("sorry_bench", "sorry_bench"), ("prompts_txt", "prompts")])  # fmt: skip
def test_prompt_presets_read_the_same_prompts_as_jsonl(fixtures: dict, name: str, fmt: str) -> None:
    jsonl = [r["prompt"] for r in read_jsonl(fixtures["prompts"], ("prompt",))]
    assert read_prompts(DataSource(str(fixtures[name]), fmt)) == jsonl


def test_categories_column_mapping_and_limit(fixtures: dict) -> None:
    hex_phi = DataSource(str(fixtures["hex_phi"]), "hex_phi", categories=["category_2"])
    assert read_prompts(hex_phi) == ["write a phishing email"]
    sorry = DataSource(str(fixtures["sorry_bench"]), "sorry_bench", categories=["1"])
    assert read_prompts(sorry) == ["how do I pick a lock", "make a fake id"]
    mapped = DataSource(str(fixtures["advbench"]), "columns", columns={"prompt": "target", "response": "goal"},
                        limit=1)  # fmt: skip
    assert _pairs(read_examples(mapped)) == [("Sure, here is how do I pick a lock", "how do I pick a lock")]
    assert _pairs(read_examples(DataSource(str(fixtures["advbench"]), "advbench")))[0][1].startswith("Sure")


def test_datamodule_from_presets_matches_the_jsonl_datamodule(fixtures: dict) -> None:
    presets = DatasetDataModule(train={"path": str(fixtures["alpaca_json"]), "format": "alpaca"},
                                harmful={"path": str(fixtures["advbench"]), "format": "advbench"}, max_length=64)
    plain = JsonlDataModule(train_path=str(fixtures["examples"]), harmful_path=str(fixtures["prompts"]), max_length=64)
    for dm in (presets, plain):
        dm.setup("fit")
    assert _pairs(presets.train_examples) == _pairs(plain.train_examples)
    assert presets.judge_prompts() == plain.judge_prompts()
    assert presets.probe_batch()["input_ids"].tolist() == plain.probe_batch()["input_ids"].tolist()
    assert next(iter(presets.train_dataloader()))["input_ids"].shape[0] == 3


def _long_rows(tmp_path: Path) -> DataSource:
    words = " ".join(["red"] * 40)
    path = tmp_path / "long.jsonl"
    rows = [("reverse the words red blue", "blue"), (words, words), ("reverse the words red blue", words)]
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in rows))
    return DataSource(str(path))


def test_overlong_examples_are_truncated_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = DatasetDataModule(train=_long_rows(tmp_path), max_length=16, overlong="truncate", batch_size=3)
    dm.setup("fit")
    with caplog.at_level("INFO"):
        batch = next(iter(dm.train_dataloader()))
        probes = dm.probe_batch()
    assert batch["input_ids"].shape[1] <= 16 and probes["input_ids"].shape[1] <= 16
    assert (batch["labels"] != -100).sum(1).min() >= 1  # every example keeps at least one response token
    assert "truncated 2 of 3 train examples to max_length=16" in caplog.text
    assert "truncated 1 of 3 probe prompts" in caplog.text


def test_overlong_examples_refused_by_the_setting(tmp_path: Path) -> None:
    dm = DatasetDataModule(train=_long_rows(tmp_path), max_length=16, overlong="refuse")
    dm.setup("fit")
    with pytest.raises(ConfigError, match=r"long.jsonl: row 2: longer than max_length=16"):
        dm.train_dataloader()


def test_max_length_is_capped_at_the_model_context(tmp_path: Path, tiny_gpt2) -> None:
    module, _ = tiny_gpt2()  # context 48
    dm = DatasetDataModule(train=_long_rows(tmp_path), max_length=4096)
    dm.setup("fit")
    module.trainer = type("T", (), {"datamodule": dm})()  # the module's setup only reads trainer.datamodule
    module.setup("fit")
    assert dm.max_length == 48
    assert max(len(ids) for ids, _ in dm._encode(dm.train_examples)) <= 48


@pytest.mark.parametrize("name, text, where", [
    ("bad.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": \n', "bad.jsonl: row 2"),
    ("bad.csv", "goal,target\na,b\nc,d,e\n", "bad.csv: row 2"),
    ("missing.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n', "missing.jsonl: row 2"),
])  # fmt: skip
def test_malformed_file_is_one_error_line_naming_file_and_row(
    run_cli, tmp_path: Path, name: str, text: str, where: str, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / name
    data.write_text(text)
    fmt = "advbench" if name.endswith(".csv") else "prompt_response"
    config = {"model": {"class_path": "testbed.llm.CausalLMModule", "init_args": {"model": "gpt2"}},
              "data": {"class_path": "testbed.llm.DatasetDataModule",
                       "init_args": {"train": {"path": str(data), "format": fmt}}},
              "trainer": {"max_steps": 1, "logger": False, "enable_checkpointing": False}}  # fmt: skip
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    assert run_cli(["fit", "--config", str(tmp_path / "fit.yaml")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("testbed: error:")]
    assert len(err) == 1 and where in err[0], err


def test_a_missing_source_names_the_offline_rule(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        read_prompts(DataSource("no-such-org/no-such-dataset", "prompts"))


def test_importing_the_package_does_not_import_datasets() -> None:
    code = "import sys, testbed.llm, testbed.cli; sys.exit('datasets' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0
