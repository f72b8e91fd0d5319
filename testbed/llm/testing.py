"""Tiny models and batches for tests and benchmarks (no download, seconds on CPU)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from testbed.llm.data import prompt_batch, world_tokenizer
from testbed.llm.module import CausalLMModule
from testbed.llm.world import SafetyWorld

TINY = {
    "gpt2": {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 48},
    "llama": {"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "hidden_size": 32,
              "intermediate_size": 64, "max_position_embeddings": 48},
}  # fmt: skip


def tiny_lm(kind: str = "gpt2", lora: dict[str, Any] | None = None, **kwargs: Any) -> tuple[CausalLMModule, Any]:
    """A randomly initialised tiny ``CausalLMModule`` (width 32, 2 layers) and the safety world tokenizer."""
    tokenizer = world_tokenizer()
    module = CausalLMModule(model=kind, model_config=TINY[kind], vocab_size=len(tokenizer), lora=lora, **kwargs)
    return module, tokenizer


def tiny_probe_batch(tokenizer: Any, n: int = 8) -> dict[str, Tensor]:
    """``n`` left-padded safety-world harmful prompts (varying lengths), formatted with the chat template."""
    prompts = [e.prompt for e in SafetyWorld().prompts("train_harmful", n)]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in prompts]  # fmt: skip
    return prompt_batch(tokenizer, texts)
