"""``CausalLMModule``: a Hugging Face causal LM behind the testbed's probe protocol.

The model is either built from a tiny built-in GPT-2 or Llama configuration (no download; ``model_config``
overrides any field) or loaded from a local folder (``pretrained_path``; ``local_files_only`` and never
``trust_remote_code``). Optional LoRA through peft. Layers are ``blocks.{i}.resid_post``: the outputs of the
decoder layers (found through peft's wrapper too). Batches are dicts ``{input_ids, attention_mask[, labels]}``
with ``labels`` = -100 on prompt and padding tokens, so the loss is the causal LM loss on response tokens.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from testbed.errors import ConfigError, as_settings
from testbed.llm.models import (
    IGNORE_INDEX,
    LoraSettings,
    apply_lora,
    build_model,
    decoder_layers,
    default_vocab_size,
    lm_forward,
    load_pretrained,
)
from testbed.optim import OptimizerSettings
from testbed.protocol import Pooling, TestbedModule
from testbed.tags import TASK_TRAIN, TASK_VAL, tag


class CausalLMModule(TestbedModule):
    """A causal LM phase: pre-training, alignment or fine-tuning on instruction batches.

    Args:
        model: built-in tiny configuration, ``gpt2`` or ``llama`` (ignored when ``pretrained_path`` is set).
        model_config: overrides of the built-in configuration (e.g. ``{n_layer: 4, n_embd: 128}``).
        vocab_size: vocabulary size of a built-in model; default: the safety world's vocabulary.
        pretrained_path: a local Hugging Face model folder to load instead of building from config.
        lora: optional LoRA adapters (``LoraSettings``: r, alpha, target_modules, dropout); then only adapters train.
        optimizer: optimizer and learning rate (``OptimizerSettings``).
        init_from: weights to start from (a previous phase's checkpoint); a plain (non-LoRA) checkpoint of
            the same architecture is accepted by a LoRA module and fills its base weights.
    """

    def __init__(
        self,
        model: Literal["gpt2", "llama"] = "gpt2",
        model_config: dict[str, Any] | None = None,
        vocab_size: int | None = None,
        pretrained_path: str | None = None,
        lora: LoraSettings | None = None,
        optimizer: OptimizerSettings | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__(init_from)
        self.save_hyperparameters(ignore=["optimizer", "lora"])
        self.optimizer_settings = optimizer or OptimizerSettings()
        if pretrained_path is not None:
            base = load_pretrained(pretrained_path)
        else:
            base = build_model(model, vocab_size or default_vocab_size(), model_config)
        self.lora = lora = as_settings(LoraSettings, lora, "LoRA")
        self.model: nn.Module = apply_lora(base, lora) if lora is not None else base

    # ---- probe protocol -------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        return [f"blocks.{i}.resid_post" for i in range(len(decoder_layers(self.model)))]

    def layer_module(self, name: str) -> nn.Module:
        self.check_layers([name])
        return decoder_layers(self.model)[int(name.split(".")[1])]

    def forward_probe(self, batch: dict[str, Tensor]) -> Any:
        return lm_forward(self.model, batch)

    def pool(self, hidden: Tensor, batch: Any, pooling: Pooling) -> Tensor:
        """Last real token (left or right padding) or mean over real tokens, from ``attention_mask``."""
        if hidden.dim() == 2:
            return hidden
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if mask is None:
            return super().pool(hidden, batch, pooling)
        if pooling == "last":
            positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
            last = (mask.long() * positions).argmax(dim=1)  # index of the right-most real token
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        if pooling == "mean":
            weights = mask.to(hidden.dtype).unsqueeze(-1)
            return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        raise ConfigError(f"pooling must be 'last' or 'mean', got {pooling!r}")

    # ---- training -------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Any:
        return lm_forward(self.model, {"input_ids": input_ids, "attention_mask": attention_mask})

    def _loss_and_accuracy(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = lm_forward(self.model, batch).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
        )
        real = labels != IGNORE_INDEX
        correct = (logits.argmax(-1) == labels) & real
        accuracy = correct.sum().float() / real.sum().clamp_min(1)
        return loss, accuracy

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._loss_and_accuracy(batch)  # a non-finite loss is stopped by testbed.guards.NonFiniteGuard
        self.log(tag(TASK_TRAIN, "loss"), loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, accuracy = self._loss_and_accuracy(batch)
        self.log_held_out({tag(TASK_VAL, "loss"): loss, tag(TASK_VAL, "acc"): accuracy}, batch["input_ids"].shape[0])

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)  # `testbed test` reports held-out task metrics under val/

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_settings.build(p for _, p in self.trainable_parameters())

    # ---- phase chaining and foreign checkpoints -------------------------------------------------
    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a foreign state dict onto this module's keys; own-format dicts pass through unchanged.

        Accepted besides the module's own format: a bare Hugging Face state dict (e.g. a folder's
        ``model.safetensors``, tied output weights omitted) and, for a LoRA module, a plain checkpoint of its
        base model (adapters then keep their current values). Unmatched keys are left for the strict load to report.
        """
        own = self.state_dict()
        if set(state) == set(own):
            return state
        plains = {key: key.replace("model.base_model.model.", "model.", 1).replace(".base_layer.", ".") for key in own}
        known = set(plains.values()) | set(own)
        if sum(f"model.{k}" in known for k in state) > sum(k in known for k in state):  # a bare HF state dict
            state = {f"model.{k}": v for k, v in state.items()}
        adapted, used = {}, set()
        for key in own:
            plain = plains[key]
            if key in state:
                adapted[key] = state[key]
                used.add(key)
            elif "lora_" in key and self.lora is not None:
                adapted[key] = own[key]
            elif plain in state:
                adapted[key] = state[plain]
                used.add(plain)
        tied = getattr(self._base_model().config, "tie_word_embeddings", False)
        if tied:
            out_key = next((k for k in own if k.endswith("lm_head.weight") and k not in adapted), None)
            emb_key = next((k for k in adapted if k.endswith(("wte.weight", "embed_tokens.weight"))), None)
            if out_key and emb_key:
                adapted[out_key] = adapted[emb_key]
        adapted.update({k: v for k, v in state.items() if k not in used and k not in adapted})
        return adapted

    def _base_model(self) -> PreTrainedModel:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return super().load_state_dict(self.adapt_state_dict(dict(state_dict)), strict=strict, assign=assign)

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Refuse a tokenizer with more ids than the model's embedding."""
        n_embed = self.model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > n_embed:
            raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but the model embeds only {n_embed}")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and getattr(datamodule, "tokenizer", None) is not None:
            self.check_tokenizer(datamodule.tokenizer)


__all__ = ["CausalLMModule"]
