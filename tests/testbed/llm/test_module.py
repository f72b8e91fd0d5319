"""CausalLMModule: probe protocol (layer names, padding-aware pooling, LoRA), loading by path, phase chaining."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from testbed.errors import CheckpointError, ConfigError
from testbed.llm.data import collate_training, encode_example
from testbed.llm.module import CausalLMModule
from testbed.testing import TEST_LM_CONFIGS, tiny_lm, tiny_probe_batch

LAYER = "blocks.1.resid_post"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_ignores_padding_on_either_side(kind: str, pooling: str) -> None:
    module, tok = tiny_lm(kind)
    module.eval()
    left = tiny_probe_batch(tok, 6)
    lengths = left["attention_mask"].sum(1)
    assert lengths.min() < lengths.max(), "the probe batch must actually contain padding"
    # The same prompts right-padded.
    right = {k: torch.zeros_like(v) for k, v in left.items()}
    right["input_ids"].fill_(tok.pad_token_id)
    for i, n in enumerate(lengths.tolist()):
        right["input_ids"][i, :n] = left["input_ids"][i, -n:]
        right["attention_mask"][i, :n] = 1
    with torch.no_grad():
        rep_left = module.representations(left, [LAYER], pooling)[LAYER]
        rep_right = module.representations(right, [LAYER], pooling)[LAYER]
        i = int(lengths.argmin())
        alone = {k: v[i : i + 1, -int(lengths[i]) :] for k, v in left.items()}
        rep_alone = module.representations(alone, [LAYER], pooling)[LAYER]
    assert_close(rep_left, rep_right, atol=1e-5, rtol=1e-5)
    assert_close(rep_left[i : i + 1], rep_alone, atol=1e-5, rtol=1e-5)


def test_pool_last_picks_rightmost_real_token() -> None:
    module, _ = tiny_lm()
    hidden = torch.arange(2 * 4, dtype=torch.float).reshape(2, 4, 1)
    batch = {"attention_mask": torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])}
    assert module.pool(hidden, batch, "last").flatten().tolist() == [1.0, 7.0]
    assert module.pool(hidden, batch, "mean").flatten().tolist() == [0.5, 6.0]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_lora_keeps_layer_names_and_trains_only_adapters(kind: str) -> None:
    plain, tok = tiny_lm(kind)
    wrapped, _ = tiny_lm(kind, lora={"r": 4, "alpha": 8})
    assert wrapped.layer_names() == plain.layer_names() == ["blocks.0.resid_post", "blocks.1.resid_post"]
    names = [n for n, _ in wrapped.trainable_parameters()]
    assert names and all("lora_" in n for n in names)
    batch = tiny_probe_batch(tok, 4)
    reps = wrapped.representations(batch, wrapped.layer_names(), "last")
    assert reps[LAYER].shape == (4, 32)
    # Differentiable w.r.t. the adapters (what update projection needs).
    reps[LAYER].sum().backward()
    grads = [p.grad for n, p in wrapped.trainable_parameters() if "lora_A" in n]
    assert any(g is not None for g in grads)


def test_unknown_layer_is_a_clear_error() -> None:
    module, tok = tiny_lm()
    with pytest.raises(ConfigError, match="blocks.0.resid_post"):
        module.representations(tiny_probe_batch(tok, 2), ["blocks.7.resid_post"])


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_save_pretrained_then_load_by_path_gives_same_logits(kind: str, tmp_path) -> None:
    module, tok = tiny_lm(kind)
    module.eval()
    module.model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    loaded = CausalLMModule(pretrained_path=str(tmp_path / "model"))
    loaded.eval()
    batch = tiny_probe_batch(tok, 4)
    with torch.no_grad():
        assert_close(module(**batch).logits, loaded(**batch).logits)
    assert loaded.layer_names() == module.layer_names()


def test_bad_pretrained_path_is_checkpoint_error(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="config.json"):
        CausalLMModule(pretrained_path=str(tmp_path))


def test_bad_model_config_is_config_error() -> None:
    with pytest.raises(ConfigError, match="model must be one of"):
        CausalLMModule(model="bert")
    with pytest.raises(ConfigError, match="unknown LoRA setting"):
        tiny_lm(lora={"rank": 4})


def test_loss_only_on_response_tokens() -> None:
    module, tok = tiny_lm()
    items = [encode_example(tok, "<user> reverse the words red blue <assistant>", "sure . blue red", 32)]
    batch = collate_training(items, tok.pad_token_id)
    n_prompt = items[0][1]
    assert (batch["labels"][0, :n_prompt] == -100).all()
    assert batch["labels"][0, -1].item() == tok.eos_token_id
    loss, _ = module._loss_and_accuracy(batch)
    # Changing a prompt-only label position must not matter; the response decides the loss.
    logits = module(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits[0, :-1]
    targets = batch["input_ids"][0, 1:]
    by_hand = torch.nn.functional.cross_entropy(logits[n_prompt - 1 :], targets[n_prompt - 1 :])
    assert_close(loss, by_hand)


def test_lora_module_accepts_plain_checkpoint_of_its_base(tmp_path) -> None:
    plain, tok = tiny_lm()
    path = tmp_path / "plain.pt"
    torch.save(plain.state_dict(), path)
    wrapped = CausalLMModule(model="gpt2", model_config=TEST_LM_CONFIGS["gpt2"], vocab_size=len(tok), lora={"r": 2},
                             init_from=str(path))  # fmt: skip
    wrapped.load_initial_weights()
    plain.eval()
    wrapped.eval()
    batch = tiny_probe_batch(tok, 3)
    with torch.no_grad():  # LoRA B starts at zero, so the wrapped model equals its base
        assert_close(plain(**batch).logits, wrapped(**batch).logits)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("lora", [None, {"r": 2}])
def test_init_from_a_hugging_face_safetensors_file(kind: str, lora, tmp_path) -> None:
    source, tok = tiny_lm(kind)
    source.eval()
    source.model.save_pretrained(tmp_path / "hf")  # GPT-2 omits the tied lm_head from the file
    target = CausalLMModule(model=kind, model_config=TEST_LM_CONFIGS[kind], vocab_size=len(tok), lora=lora,
                            init_from=str(tmp_path / "hf" / "model.safetensors"))  # fmt: skip
    target.load_initial_weights()
    target.eval()
    batch = tiny_probe_batch(tok, 3)
    with torch.no_grad():
        assert_close(source(**batch).logits, target(**batch).logits)
