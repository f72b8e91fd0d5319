"""Real-checkpoint loading: transformers' key mapping, clear load errors, train mode, decoder layers and LoRA
targets from the model's own structure and peft's table, tokenizer checks, gradient checkpointing, the memory
estimate."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from testbed.errors import CheckpointError, ConfigError
from testbed.llm.data import world_tokenizer
from testbed.llm.memory import estimate_memory
from testbed.llm.models import LoraSettings, decoder_layers, load_pretrained, lora_targets
from testbed.llm.module import CausalLMModule
from testbed.llm.tokenizer import load_tokenizer, tokenizer_problem
from testbed.testing import TEST_LM_CONFIGS, tiny_lm, tiny_probe_batch
from tests.helpers.families import save_family_pair, tiny_family_model

TEXT = "<user> reverse the words red blue <assistant>"


def test_a_folder_with_renamed_weights_loads_by_transformers_mapping(tmp_path: Path) -> None:
    base, aligned = save_family_pair("gpt_neox", tmp_path)  # saves embed_out.weight for the module lm_head
    assert "embed_out.weight" in load_file(str(base / "model.safetensors"))
    module = CausalLMModule(pretrained_path=str(aligned), lora={"r": 2}, init_from=str(base))
    module.load_initial_weights()
    reference = load_pretrained(str(base)).eval()
    module.eval()
    batch = tiny_probe_batch(world_tokenizer(), 3)
    with torch.no_grad():
        assert_close(module(**batch).logits, reference(**batch).logits)


def test_a_load_error_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    base, aligned = save_family_pair("llama", tmp_path)
    weights = load_file(str(base / "model.safetensors"))
    weights["model.norm.scale"] = weights.pop("model.norm.weight")  # a renamed key: one missing, one unexpected
    save_file(weights, str(base / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys: \['model.norm.weight'\].*unexpected keys: "
                                              r"\['model.norm.scale'\]"):  # fmt: skip
        load_pretrained(str(base))
    module = CausalLMModule(pretrained_path=str(aligned), init_from=str(base))
    with pytest.raises(CheckpointError, match="missing keys.*unexpected keys"):
        module.load_initial_weights()


def test_fine_tune_from_a_folder_trains_with_dropout_on(tmp_path: Path) -> None:
    model = tiny_family_model("gpt2", len(world_tokenizer()))
    model.config.resid_pdrop = 0.5
    model.save_pretrained(tmp_path / "m")
    module = CausalLMModule(pretrained_path=str(tmp_path / "m"))
    assert module.model.training and all(m.training for m in module.model.modules())


def test_decoder_layers_of_the_multimodal_wrapper_are_the_language_model_layers() -> None:
    model = tiny_family_model("gemma3", 40)
    layers = decoder_layers(model)
    assert layers is model.model.language_model.layers and len(layers) == 2


@pytest.mark.parametrize("family, expected, warned", [
    ("phi3", {"qkv_proj", "o_proj"}, False),  # not in peft's table: every attention map
    ("gpt_neox", {"query_key_value"}, True),  # peft's table; the output map `dense` is left out
    ("llama", {"q_proj", "v_proj"}, True),
    ("olmo2", {"q_proj", "k_proj", "v_proj", "o_proj"}, False),
])  # fmt: skip
def test_lora_defaults_come_from_peft_and_warn_when_partial(family: str, expected: set, warned: bool) -> None:
    model = tiny_family_model(family, 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        targets = lora_targets(model, LoraSettings(r=2))
    assert {t.rsplit(".", 1)[-1] for t in targets} == expected
    assert all(".layers." in t for t in targets)
    assert any("leave out attention" in str(w.message) for w in caught) == warned


def test_lora_on_the_multimodal_wrapper_wraps_only_the_language_model() -> None:
    model = tiny_family_model("gemma3", 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        targets = lora_targets(model, LoraSettings(r=2))
    assert targets and all(t.startswith("model.language_model.layers.") for t in targets)


def test_qwen2_folder_reads_its_own_tokenizer_and_a_substitute_is_refused(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, Qwen2Config

    tok = world_tokenizer()
    Qwen2Config(vocab_size=len(tok)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded(TEXT, add_special_tokens=False)["input_ids"] == tok(TEXT, add_special_tokens=False)["input_ids"]
    assert tokenizer_problem(loaded, [TEXT], len(tok)) == ""
    substitute = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)  # the architecture's class
    assert "round-trip" in tokenizer_problem(substitute, [TEXT], len(tok))


def test_tokenizer_outside_the_embedding_is_refused() -> None:
    tok = world_tokenizer()
    module = CausalLMModule(model="gpt2", model_config=TEST_LM_CONFIGS["gpt2"], vocab_size=50)
    with pytest.raises(ConfigError, match="embeds only 50"):
        module.check_tokenizer(tok, [TEXT])


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        module, tok = tiny_lm("llama", gradient_checkpointing=checkpointing)
        module.train()
        batch = tiny_probe_batch(tok, 4)
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss, _ = module._loss_and_accuracy(batch)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for _, p in module.trainable_parameters()]))
    assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_memory_estimate_parts() -> None:
    est = estimate_memory(n_params=1000, n_trainable=100, width=8, n_layers=2, vocab=10, batch_size=2, seq_len=4,
                          precision="bf16-true")  # fmt: skip
    assert (est.weights, est.gradients, est.optimizer) == (2000, 200, 800)
    assert est.activations == 2 * 34 * 8 * 8 + 8 * 8 * 10
    ckpt = estimate_memory(1000, 100, 8, 2, 10, 2, 4, precision="32-true", gradient_checkpointing=True)
    assert ckpt.activations == (2 * 8 * 8 * 2) * 2 + 34 * 8 * 8 * 2 + 8 * 8 * 10
    assert "total" in est.describe() and "bf16-true" in est.describe()


def test_fit_prints_the_memory_estimate(run_cli, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = {"model": {"class_path": "testbed.llm.CausalLMModule", "init_args": {"model": "gpt2"}},
              "data": {"class_path": "testbed.llm.SafetyWorldDataModule", "init_args": {"batch_size": 4}},
              "trainer": {"max_steps": 1, "logger": False, "enable_checkpointing": False,
                          "enable_progress_bar": False, "limit_val_batches": 0}}  # fmt: skip
    (tmp_path / "fit.yaml").write_text(json.dumps(config))
    with caplog.at_level("INFO"):
        assert run_cli(["fit", "--config", str(tmp_path / "fit.yaml")]) == 0
    assert "memory estimate (32-true, batch 4 x 32 tokens): weights 0.5 MiB" in caplog.text
