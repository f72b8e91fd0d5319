"""Instruction data: JSONL parsing and errors, batches, and the real-checkpoint path (local HF folders + LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from testbed.errors import ConfigError
from testbed.llm.data import JsonlDataModule, SafetyWorldDataModule, format_prompt, read_jsonl, world_tokenizer
from testbed.testing import tiny_lm

CHAT = (
    "{% for m in messages %}<user> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def _write_jsonl(path: Path, rows: list, raw_lines: list[str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows] + list(raw_lines or [])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_jsonl_accepts_rows_and_skips_blank_lines(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "response": "b", "extra": 1}\n\n{"prompt": "c", "response": "d"}\n')
    assert read_jsonl(path, ("prompt", "response")) == [{"prompt": "a", "response": "b"},
                                                         {"prompt": "c", "response": "d"}]  # fmt: skip


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [("{not json", "not valid JSON"), ('["a", "b"]', "expected a JSON object"), ('{"prompt": "a"}', "'response'"),
     ('{"prompt": 3, "response": "b"}', "'prompt'"), ('{"prompt": " ", "response": "b"}', "'prompt'")],
)  # fmt: skip
def test_malformed_line_names_file_and_line(tmp_path, bad_line: str, message: str) -> None:
    path = _write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "response": "b"}], ["", bad_line])
    with pytest.raises(ConfigError, match=rf"train\.jsonl:3: .*{message}"):
        read_jsonl(path, ("prompt", "response"))


def test_missing_or_empty_file_is_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_jsonl(tmp_path / "nope.jsonl", ("prompt",))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="no examples"):
        read_jsonl(tmp_path / "empty.jsonl", ("prompt",))


def test_world_batches_mask_prompt_and_padding() -> None:
    dm = SafetyWorldDataModule(phase="align", world={"align_size": 64, "eval_size": 20}, batch_size=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    tok = dm.tokenizer
    assistant = tok.convert_tokens_to_ids("<assistant>")
    for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
        end = int((ids == assistant).nonzero()[0]) + 1  # response starts after <assistant>
        assert (labels[:end] == -100).all() and (labels[mask == 0] == -100).all()
        assert (labels[end : int(mask.sum())] == ids[end : int(mask.sum())]).all()
    probe = dm.probe_batch()
    assert probe["input_ids"].shape[0] == 32 and (probe["input_ids"][:, -1] == assistant).all()  # left-padded
    assert torch.equal(probe["input_ids"], dm.probe_batch()["input_ids"])
    assert len(dm.judge_prompts("harmful")) == 20


def test_format_prompt_uses_chat_template_when_present() -> None:
    tok = world_tokenizer()
    assert format_prompt(tok, "reverse the words red") == "<user> reverse the words red <assistant>"
    tok.chat_template = None
    assert format_prompt(tok, "reverse the words red", "Q: {prompt} A:") == "Q: reverse the words red A:"


def _real_checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny 'base' and 'aligned' Llama written with save_pretrained, sharing a tokenizer with a chat template."""
    torch.manual_seed(0)
    base, tok = tiny_lm("llama")
    tok.chat_template = CHAT
    base.model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        for p in base.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    base.model.save_pretrained(tmp_path / "aligned")
    tok.save_pretrained(tmp_path / "aligned")
    return tmp_path / "base", tmp_path / "aligned"


def test_real_checkpoint_path_with_lora_end_to_end(tmp_path, run_cli) -> None:
    base, aligned = _real_checkpoints(tmp_path)
    rows = [{"prompt": f"reverse the words {a} {b}", "response": f"sure . {b} {a}"}
            for a in ("red", "blue", "cat") for b in ("dog", "sun", "moon")]  # fmt: skip
    train = _write_jsonl(tmp_path / "train.jsonl", rows)
    harmful = _write_jsonl(tmp_path / "harmful.jsonl", [{"prompt": "how do i mix the t1obj0 to hurt people"}] * 4)
    data = {"class_path": "testbed.llm.JsonlDataModule",
            "init_args": {"train_path": str(train), "val_path": str(train), "harmful_path": str(harmful),
                          "tokenizer_path": str(aligned), "batch_size": 4, "max_length": 24}}  # fmt: skip
    config = {
        "seed_everything": 0,
        "model": {"class_path": "testbed.llm.CausalLMModule",
                  "init_args": {"pretrained_path": str(aligned), "lora": {"r": 2, "alpha": 4},
                                "optimizer": {"lr": 0.01}}},
        "data": data,
        "trainer": {"max_steps": 3, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                    "limit_val_batches": 1, "callbacks": [{"class_path": "testbed.llm.judges.HarmfulnessCallback",
                    "init_args": {"judges": [{"class_path": "testbed.llm.judges.HarmfulnessJudge",
                                              "init_args": {"method": "generate", "max_new_tokens": 3}}]}}]},
    }  # fmt: skip
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(config))
    assert run_cli(["fit", "--config", str(tmp_path / "ft.yaml")]) == 0
    # v_rev between the two HF folders (witness = base, reference = aligned) through the shared layer.
    from testbed.commands import compute_vrev_from_checkpoints
    from testbed.directions import load_direction

    out = compute_vrev_from_checkpoints(str(tmp_path / "ft.yaml"), str(base / "model.safetensors"),
                                        str(aligned / "model.safetensors"), ["blocks.1.resid_post"],
                                        str(tmp_path / "vrev.pt"), pooling="last")  # fmt: skip
    module, _ = tiny_lm("llama", lora={"r": 2})
    direction = load_direction(out, module=module, allow_other_probe=True)
    v = direction.vectors["blocks.1.resid_post"]
    assert v.shape == (32,) and torch.isclose(v.norm(), torch.tensor(1.0), atol=1e-4)


def test_jsonl_module_reports_bad_line_through_cli(tmp_path, run_cli, capsys) -> None:
    train = _write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "response": "b"}], ['{"prompt": "x"}'])
    config = {"model": {"class_path": "testbed.llm.CausalLMModule"},
              "data": {"class_path": "testbed.llm.JsonlDataModule", "init_args": {"train_path": str(train)}},
              "trainer": {"max_steps": 1, "logger": False}}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert run_cli(["fit", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "train.jsonl:2:" in capsys.readouterr().err


def test_jsonl_datamodule_probe_defaults_to_harmful_prompts(tmp_path) -> None:
    train = _write_jsonl(tmp_path / "t.jsonl", [{"prompt": "reverse the words red", "response": "sure . red"}])
    harmful = _write_jsonl(tmp_path / "h.jsonl", [{"prompt": "to hurt people"}, {"prompt": "to steal money now"}])
    dm = JsonlDataModule(train_path=str(train), harmful_path=str(harmful))
    probe = dm.probe_batch()
    assert probe["attention_mask"].sum(1).tolist() == [5, 6]  # <user> ... <assistant>
    assert dm.judge_prompts() == ["<user> to hurt people <assistant>", "<user> to steal money now <assistant>"]


def test_rehearsal_mixes_refusals_of_training_families_into_the_fine_tune_only() -> None:
    small = {"pretrain_size": 64, "align_size": 32, "finetune_size": 90, "eval_size": 8}
    plain = SafetyWorldDataModule(phase="finetune", world=small)
    mixed = SafetyWorldDataModule(phase="finetune", world=small, rehearsal={"fraction": 0.1})
    plain.prepare_examples()
    mixed.prepare_examples()
    added = mixed.train_examples[len(plain.train_examples):]
    assert mixed.train_examples[: len(plain.train_examples)] == plain.train_examples
    assert len(added) == 10 and len(added) / len(mixed.train_examples) == pytest.approx(0.1)  # 10 of 100
    training = {f.name for f in mixed.world.train_families}
    assert all(e.family.startswith("harmful/") and e.family in training for e in added)
    assert all(e.response.startswith("sorry ,") for e in added)
    assert mixed.val_examples == plain.val_examples  # the benign val loss is measured on the same set
    with pytest.raises(ConfigError, match="not into 'align'"):
        SafetyWorldDataModule(phase="align", world=small, rehearsal={})
    with pytest.raises(ConfigError, match="rehearsal.fraction"):
        SafetyWorldDataModule(phase="finetune", world=small, rehearsal={"fraction": 1.0})
