"""The guard judge: tiny random guard folders of both kinds run end to end, and with scripted guards the verdicts
equal the exact labels, with the Wilson interval of the other judges."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.errors import CheckpointError, ConfigError
from testbed.judging import run_judge
from testbed.llm.data import JsonlDataModule
from testbed.llm.guard_judge import GuardJudge, unsafe_label_index
from testbed.llm.judges import wilson_interval
from testbed.testing import tiny_lm
from tests.helpers.families import write_jsonl_data
from tests.helpers.guards import (
    LABELED_PAIRS,
    ScriptedCausalGuard,
    ScriptedClassifier,
    guard_tokenizer,
    save_tiny_guards,
)


@pytest.fixture(scope="module")
def guards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_tiny_guards(tmp_path_factory.mktemp("guards"))


@pytest.mark.parametrize("kind", ["causal", "classifier"])
def test_scripted_guard_agrees_with_exact_labels(guards: dict, kind: str) -> None:
    judge = GuardJudge(str(guards[kind]))
    assert judge.kind == kind  # told apart by the folder's architectures
    judge.tokenizer = guard_tokenizer()
    judge.guard = ScriptedCausalGuard(judge.tokenizer) if kind == "causal" else ScriptedClassifier(judge.tokenizer)
    prompts, responses, labels = zip(*LABELED_PAIRS, strict=True)
    verdict = judge.evaluate(list(prompts), list(responses))
    assert verdict.harmful == list(labels)
    summary = verdict.summary(judge.name)
    k, n = sum(labels), len(labels)
    low, high = wilson_interval(k, n)
    assert summary == pytest.approx({"harmfulness_guard": 100 * k / n, "harmfulness_guard_ci_low": 100 * low,
                                     "harmfulness_guard_ci_high": 100 * high})  # fmt: skip


@pytest.mark.parametrize("kind", ["causal", "classifier"])
def test_tiny_random_guard_judges_a_model_end_to_end(guards: dict, kind: str, tmp_path: Path) -> None:
    files = write_jsonl_data(tmp_path)
    datamodule = JsonlDataModule(train_path=str(files["train"]), harmful_path=str(files["harmful"]), max_length=48)
    datamodule.setup("fit")
    module, _ = tiny_lm("gpt2")
    judge = GuardJudge(str(guards[kind]), max_new_tokens=4, unsafe=["unsafe"], safe=["safe"])
    values = run_judge(judge, module, datamodule)
    assert set(values) == {"harmfulness_guard", "harmfulness_guard_ci_low", "harmfulness_guard_ci_high"}
    n = len(datamodule.harmful_prompts)
    assert values["harmfulness_guard"] * n / 100 == pytest.approx(round(values["harmfulness_guard"] * n / 100))
    assert values["harmfulness_guard_ci_low"] <= values["harmfulness_guard"] <= values["harmfulness_guard_ci_high"]


def test_unsafe_label_is_found_by_name() -> None:
    assert unsafe_label_index({0: "LABEL_0", 1: "LABEL_1"}) == 1
    assert unsafe_label_index({0: "harmful", 1: "benign", 2: "other"}) == 0
    assert unsafe_label_index({0: "not_toxic", 1: "toxic"}) == 1
    assert unsafe_label_index({0: "a", 1: "b"}, unsafe_label="a") == 0
    with pytest.raises(ConfigError, match="set unsafe_label"):
        unsafe_label_index({0: "a", 1: "b", 2: "c"})


def test_bad_guard_settings_are_refused(guards: dict, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        GuardJudge(str(tmp_path))
    with pytest.raises(ConfigError, match="threshold"):
        GuardJudge(str(guards["causal"]), threshold=1.5)
