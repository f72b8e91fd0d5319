"""Hugging Face causal LMs for the testbed: built-in tiny configurations, local folders, LoRA, forward passes.

Nothing here downloads: a model is built from a built-in GPT-2 or Llama configuration (fields overridable) or
loaded from a local folder (``local_files_only``, never ``trust_remote_code``), optionally wrapped with peft LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedModel

from testbed.errors import CheckpointError, ConfigError, fraction, positive_int, positive_number

__all__ = [
    "IGNORE_INDEX",
    "BUILTIN_CONFIGS",
    "LoraSettings",
    "default_vocab_size",
    "build_model",
    "load_pretrained",
    "decoder_layers",
    "apply_lora",
    "position_ids",
    "check_fits_context",
    "lm_forward",
]

IGNORE_INDEX = -100

BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {"n_layer": 2, "n_head": 4, "n_embd": 64, "n_positions": 48, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
             "attn_pdrop": 0.0},
    "llama": {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64,
              "intermediate_size": 128, "max_position_embeddings": 48},
}  # fmt: skip


def default_vocab_size() -> int:
    """The safety world's vocabulary size (special tokens included)."""
    from testbed.llm.tokenizer import SPECIAL_TOKENS
    from testbed.llm.world import world_vocabulary

    return len(SPECIAL_TOKENS) + len(world_vocabulary())


def build_model(kind: str, vocab_size: int, overrides: dict[str, Any] | None = None) -> PreTrainedModel:
    """A randomly initialised tiny causal LM (``kind`` gpt2 or llama); ids 0/1/2 are pad/bos/eos."""
    if kind not in BUILTIN_CONFIGS:
        raise ConfigError(f"model must be one of {sorted(BUILTIN_CONFIGS)} (or give pretrained_path), got {kind!r}")
    fields = {**BUILTIN_CONFIGS[kind], "vocab_size": vocab_size, "pad_token_id": 0, "bos_token_id": 1,
              "eos_token_id": 2, **(overrides or {})}  # fmt: skip
    config_cls = GPT2Config if kind == "gpt2" else LlamaConfig
    try:
        config = config_cls(**fields)
        return AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # TypeError/ValueError, huggingface_hub's strict-dataclass errors, negative sizes
        raise ConfigError(f"invalid model_config for {kind}: {' '.join(str(exc).split())[:300]}") from None


def load_pretrained(path: str) -> PreTrainedModel:
    """Load a local Hugging Face causal LM folder (no network, no remote code)."""
    if not Path(path, "config.json").is_file():
        raise CheckpointError(f"pretrained_path {path} is not a Hugging Face model folder (no config.json)")
    try:
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError for unusable folders
        raise CheckpointError(f"cannot load causal LM from {path}: {str(exc).splitlines()[0]}") from None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a (possibly peft-wrapped) HF causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers"):
        mod: Any = base
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, nn.ModuleList):
            return mod
    n = getattr(base.config, "num_hidden_layers", None)
    for mod in base.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return mod
    raise ConfigError(f"cannot find the decoder layers of {type(base).__name__}")


@dataclass
class LoraSettings:
    """LoRA adapters through peft; with them only the adapter weights train.

    Args:
        r: adapter rank (> 0).
        alpha: scaling numerator (scale = alpha / r); default: r.
        target_modules: module names to wrap; default: every attention projection of the architecture.
        dropout: dropout on the adapter input, in [0, 1).
    """

    r: int = 8
    alpha: float | None = None
    target_modules: list[str] | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        positive_int("lora.r", self.r)
        positive_number("lora.alpha", self.alpha, allow_none=True)
        fraction("lora.dropout", self.dropout, open_high=True)
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module (or be null for the default)")


def apply_lora(model: PreTrainedModel, lora: LoraSettings) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters as ``lora`` says."""
    from peft import LoraConfig, get_peft_model

    target = lora.target_modules
    if target is None:
        target = ["c_attn", "c_proj"] if model.config.model_type == "gpt2" else ["q_proj", "k_proj", "v_proj", "o_proj"]
    config = LoraConfig(
        r=lora.r, lora_alpha=float(lora.alpha if lora.alpha is not None else lora.r), target_modules=list(target),
        lora_dropout=float(lora.dropout), bias="none", task_type="CAUSAL_LM",
        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2 uses Conv1D (weights stored transposed)
    )  # fmt: skip
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"cannot apply LoRA ({exc})") from None


def position_ids(attention_mask: Tensor | None) -> Tensor | None:
    """Positions counted over real tokens only, so a left-padded prompt sees the positions it would alone."""
    if attention_mask is None:
        return None
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def check_fits_context(model: nn.Module, n_tokens: int) -> None:
    """Refuse ``n_tokens`` positions beyond the model's context (``n_positions``/``max_position_embeddings``)."""
    config = getattr(model, "config", None)
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and n_tokens > limit:
        raise ConfigError(f"inputs of {n_tokens} tokens exceed the model's context of {limit} positions; "
                          "shorten the prompts or lower max_length / max_new_tokens")


def lm_forward(model: nn.Module, batch: dict[str, Tensor]) -> Any:
    """Forward pass of ``model`` on a batch dict, with padding-aware position ids (inputs must fit the context)."""
    check_fits_context(model, batch["input_ids"].shape[-1])
    mask = batch.get("attention_mask")
    return model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids(mask))


