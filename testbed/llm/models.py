"""Hugging Face causal LMs for the testbed: built-in tiny configurations, local folders, LoRA, forward passes.

Nothing here downloads: a model is built from a built-in GPT-2 or Llama configuration (fields overridable) or
loaded from a local folder (``local_files_only``, never ``trust_remote_code``), optionally wrapped with peft LoRA.
The model's own structure answers the architecture questions, for any decoder family transformers knows:
the decoder is ``get_decoder()`` (the language model inside a multimodal wrapper), its layers are the module list
of decoder-layer blocks in it, the attention block is the layer's ``*Attention`` child, and LoRA's default targets
are peft's per-architecture table (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``), else every linear map of
the attention block; LoRA wraps modules of the decoder layers only.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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
    "loading_problems",
    "base_model",
    "decoder_layers",
    "attention_projections",
    "context_length",
    "lora_targets",
    "apply_lora",
    "position_ids",
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
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid model_config for {kind}: {exc}") from None
    return AutoModelForCausalLM.from_config(config)


def loading_problems(info: dict[str, Any]) -> str:
    """The missing, unexpected and wrong-shape keys of a transformers ``loading_info`` ('' when it loaded whole)."""
    parts = []
    for label in ("missing", "unexpected", "mismatched"):
        keys = sorted(str(k) for k in info.get(f"{label}_keys") or ())
        if keys:
            parts.append(f"{label} keys: {keys[:3]}{' ...' if len(keys) > 3 else ''} ({len(keys)})")
    return "; ".join(parts)


def load_pretrained(path: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a local Hugging Face causal LM folder (no network, no remote code), in train mode.

    The weights go through transformers' own key mapping (renamed and tied weights, multimodal wrappers); a folder
    whose weights do not cover the model whole (missing, unexpected or wrong-shape keys) is refused.
    """
    if not Path(path, "config.json").is_file():
        raise CheckpointError(f"pretrained_path {path} is not a Hugging Face model folder (no config.json)")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, output_loading_info=True, dtype=dtype
        )
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError for unusable folders
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"cannot load causal LM from {path}: {message[:400]}") from None
    problems = loading_problems(info)
    if problems:
        raise CheckpointError(f"cannot load causal LM from {path}: its weights do not fit the model ({problems})")
    return model.train()  # from_pretrained returns eval mode, which would switch dropout off for a fine-tune


def base_model(model: nn.Module) -> PreTrainedModel:
    """The transformers model under a peft wrapper (or ``model`` itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a (possibly peft-wrapped) HF causal LM: the module list of decoder-layer blocks
    inside ``get_decoder()`` (for a multimodal wrapper, its language model)."""
    base = base_model(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    decoder = decoder if isinstance(decoder, nn.Module) else base
    n_layers = getattr(base.config.get_text_config(), "num_hidden_layers", None)
    lists = [mod for mod in decoder.modules() if isinstance(mod, nn.ModuleList) and len(mod) > 0]
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer

        blocks = [mod for mod in lists if all(isinstance(layer, GradientCheckpointingLayer) for layer in mod)]
    except ImportError:  # transformers before 4.52 has no common decoder-layer base class
        blocks = []
    blocks = blocks or [mod for mod in lists if len(mod) == n_layers]
    if not blocks:
        raise ConfigError(f"cannot find the decoder layers of {type(base).__name__}")
    return blocks[0]


def attention_projections(model: nn.Module) -> list[str]:
    """Names (relative to the block) of the linear maps in the first decoder layer's attention block."""
    from transformers.pytorch_utils import Conv1D

    layer = decoder_layers(model)[0]
    blocks = [child for child in layer.children() if type(child).__name__.endswith("Attention")]
    if not blocks:
        return []
    return [name for name, mod in blocks[0].named_modules() if isinstance(mod, (nn.Linear, Conv1D))]


def context_length(model: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings allow (None: no stated limit, e.g. ALiBi)."""
    config = base_model(model).config.get_text_config()
    for field in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, field, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class LoraSettings:
    """LoRA adapters through peft; with them only the adapter weights train.

    Args:
        r: adapter rank (> 0).
        alpha: scaling numerator (scale = alpha / r); default: r.
        target_modules: module names to wrap (peft's matching: a name or a dotted suffix); default: peft's table
            for the architecture, else every linear map of the attention block (a warning names attention maps
            the default leaves out; e.g. ``[q_proj, k_proj, v_proj, o_proj]`` covers a Llama's whole attention).
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


def lora_targets(model: PreTrainedModel, lora: LoraSettings) -> list[str]:
    """Full module paths LoRA wraps: the given names, or the architecture's default inside the decoder layers."""
    if lora.target_modules is not None:
        return list(lora.target_modules)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    attention = attention_projections(model)
    names = PEFT_DEFAULTS.get(model.config.model_type) or PEFT_DEFAULTS.get(
        model.config.get_text_config().model_type) or attention  # fmt: skip
    left_out = [name for name in attention if name not in names]
    if left_out:
        warnings.warn(f"LoRA default targets for {model.config.model_type} ({', '.join(names)}) leave out attention "
                      f"map(s) {', '.join(left_out)}; set lora.target_modules to cover them", stacklevel=2)  # fmt: skip
    layers = decoder_layers(model)
    root = next(path for path, mod in model.named_modules() if mod is layers)
    paths = [f"{root}.{i}.{sub}" for i, layer in enumerate(layers) for sub, _ in layer.named_modules()
             if sub and sub.rsplit(".", 1)[-1] in names]  # fmt: skip
    if not paths:
        raise ConfigError(f"no LoRA target found in {type(model).__name__}; set lora.target_modules")
    return paths


def apply_lora(model: PreTrainedModel, lora: LoraSettings) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters as ``lora`` says."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    target = lora_targets(model, lora)
    conv = any(isinstance(mod, Conv1D) and any(name == t or name.endswith(f".{t}") for t in target)
               for name, mod in model.named_modules())  # fmt: skip
    config = LoraConfig(
        r=lora.r, lora_alpha=float(lora.alpha if lora.alpha is not None else lora.r), target_modules=target,
        lora_dropout=float(lora.dropout), bias="none", task_type="CAUSAL_LM",
        fan_in_fan_out=conv,  # Conv1D (GPT-2) stores its weights transposed
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


def lm_forward(model: nn.Module, batch: dict[str, Tensor]) -> Any:
    """Forward pass of ``model`` on a batch dict, with padding-aware position ids."""
    mask = batch.get("attention_mask")
    return model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids(mask))
