"""``CausalLMModule``: a Hugging Face causal LM behind the testbed's probe protocol.

The model is either built from a tiny built-in GPT-2 or Llama configuration (no download; ``model_config``
overrides any field) or loaded from a local folder of any decoder family transformers knows (``pretrained_path``;
``local_files_only``, never ``trust_remote_code``, in train mode). Optional LoRA through peft and gradient
checkpointing. Layers are ``blocks.{i}.resid_post``: the outputs of the decoder layers (found through the model's
own structure, under peft's wrapper too). Batches are dicts ``{input_ids, attention_mask[, labels]}`` with
``labels`` = -100 on prompt and padding tokens, so the loss is the causal LM loss on response tokens.

Foreign weights (``init_from``, ``vrev`` checkpoints: a Hugging Face folder or ``.safetensors`` file, or a plain
checkpoint of a LoRA module's base) go through transformers' own loading (``from_pretrained`` with the state dict,
so its key renames and tied weights apply) in ``adapt_state_dict``.

Curvature account: the per-example safety loss is the mean token cross-entropy of each example's response (a refusal
or a helpful answer of the safety set), computed with a 4-D additive attention mask so that the same code runs batched
and on one example under ``torch.func.vmap`` (a 2-D mask makes Hugging Face build the mask with data-dependent control
flow). ``curvature_mode`` switches attention to the eager kernels, which have a double backward and batching rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from testbed.errors import CheckpointError, ConfigError, as_settings
from testbed.llm.memory import MemoryEstimate, estimate_memory
from testbed.llm.models import (
    IGNORE_INDEX,
    LoraSettings,
    apply_lora,
    base_model,
    build_model,
    context_length,
    decoder_layers,
    default_vocab_size,
    lm_forward,
    load_pretrained,
    loading_problems,
    position_ids,
)
from testbed.llm.tokenizer import tokenizer_problem
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
        init_from: weights to start from: a previous phase's checkpoint, a Hugging Face folder or ``.safetensors``
            file of the same architecture; a plain (non-LoRA) checkpoint is accepted by a LoRA module and fills
            its base weights.
        gradient_checkpointing: recompute each decoder layer's activations in the backward pass (less memory,
            about a third more compute).
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
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__(init_from)
        self.save_hyperparameters(ignore=["optimizer", "lora"])
        self.optimizer_settings = optimizer or OptimizerSettings()
        if pretrained_path is not None:
            base = load_pretrained(pretrained_path)
        else:
            base = build_model(model, vocab_size or default_vocab_size(), model_config)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if self.gradient_checkpointing:
            if not base.supports_gradient_checkpointing:
                raise ConfigError(f"{type(base).__name__} does not support gradient checkpointing")
            base.config.use_cache = False
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.lora = lora = as_settings(LoraSettings, lora, "LoRA")
        self.model: nn.Module = apply_lora(base, lora) if lora is not None else base
        self.model.train()  # fine-tuning trains with dropout on (a loaded folder comes back in eval mode)

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
        loss, _ = self._loss_and_accuracy(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log(tag(TASK_TRAIN, "loss"), loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, accuracy = self._loss_and_accuracy(batch)
        self.log_held_out({tag(TASK_VAL, "loss"): loss, tag(TASK_VAL, "acc"): accuracy}, batch["input_ids"].shape[0])

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)  # `testbed test` reports held-out task metrics under val/

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_settings.build(p for _, p in self.trainable_parameters())

    # ---- the curvature account ------------------------------------------------------------------
    def safety_losses(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-example mean token cross-entropy on the response tokens [N] of a training-format batch."""
        mask = batch["attention_mask"]
        attention = additive_causal_mask(mask, base_model(self.model).dtype)
        logits = self.model(input_ids=batch["input_ids"], attention_mask=attention,
                            position_ids=position_ids(mask)).logits[:, :-1].float()  # fmt: skip
        labels = batch["labels"][:, 1:]
        nll = nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        real = labels != IGNORE_INDEX
        return (nll * real).sum(1) / real.sum(1).clamp_min(1)

    def task_loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self._loss_and_accuracy(batch)[0]

    @contextmanager
    def curvature_mode(self) -> Iterator[None]:
        """Eager attention inside the block (fused kernels lack a double backward and vmap batching rules)."""
        base = base_model(self.model)
        before = getattr(base.config, "_attn_implementation", None)
        switched = False
        if before not in (None, "eager") and hasattr(base, "set_attn_implementation"):
            try:
                base.set_attn_implementation("eager")
                switched = True
            except (ValueError, ImportError, NotImplementedError):  # a model without eager attention keeps its own
                pass
        try:
            yield
        finally:
            if switched:
                base.set_attn_implementation(before)

    # ---- phase chaining and foreign checkpoints -------------------------------------------------
    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a foreign state dict onto this module's keys; own-format dicts pass through unchanged.

        Accepted besides the module's own format: a bare Hugging Face state dict (a folder's safetensors, with the
        checkpoint's own key names and tied weights left out) and, for a LoRA module, a plain checkpoint of its base
        model (adapters then keep their current values). Both are loaded by transformers (``from_pretrained`` with
        the state dict), so its key mapping applies; keys it cannot place are one ``CheckpointError`` naming the
        missing and the unexpected ones.
        """
        own = self.state_dict()
        if set(state) == set(own):
            return state
        plain = {key: self._plain_key(key) for key in own}
        known = set(plain.values())
        stripped = {key[len("model.") :]: value for key, value in state.items() if key.startswith("model.")}
        stripped = {self._plain_key(f"model.{k}"): v for k, v in stripped.items()}
        if sum(k in known for k in stripped) > sum(k in known for k in state):  # a checkpoint of this module's kind
            state = stripped
        loaded = self._load_through_transformers(state)
        return {key: loaded[plain[key]] if plain[key] in loaded else own[key] for key in own
                if plain[key] in loaded or ("lora_" in key and self.lora is not None)}  # fmt: skip

    def _plain_key(self, key: str) -> str:
        """A module state key as the bare transformers model names it (no ``model.``, peft or ``base_layer``)."""
        return key.replace("model.base_model.model.", "model.", 1).replace(".base_layer.", ".")[len("model.") :]

    def _load_through_transformers(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        base = base_model(self.model)
        try:
            fresh, info = type(base).from_pretrained(
                None, config=base.config, state_dict=state, output_loading_info=True,
                dtype=next(base.parameters()).dtype,
            )  # fmt: skip
        except Exception as exc:  # transformers raises RuntimeError/ValueError/KeyError for weights that do not fit
            message = " ".join(str(exc).split())[:400]
            raise CheckpointError(f"weights do not fit {type(base).__name__}: {message}") from None
        problems = loading_problems(info)
        if problems:
            raise CheckpointError(f"weights do not fit {type(base).__name__} ({problems})")
        return fresh.state_dict()

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return super().load_state_dict(self.adapt_state_dict(dict(state_dict)), strict=strict, assign=assign)

    def check_tokenizer(self, tokenizer: Any, texts: list[str] | None = None) -> None:
        """Refuse a tokenizer that does not fit the model: ids outside the embedding, or one that does not
        round-trip ``texts`` (the formatted probe prompts: chat template included) or disagrees with its folder's
        ``tokenizer.json`` (``testbed.llm.tokenizer.tokenizer_problem``)."""
        n_embed = self.model.get_input_embeddings().weight.shape[0]
        problem = tokenizer_problem(tokenizer, texts or [], n_embed)
        if problem:
            raise ConfigError(problem)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or getattr(datamodule, "tokenizer", None) is None:
            return
        texts = []
        if hasattr(datamodule, "probe_prompts") and hasattr(datamodule, "format"):
            texts = [datamodule.format(p) for p in datamodule.probe_prompts[: getattr(datamodule, "probe_size", None)]]
        self.check_tokenizer(datamodule.tokenizer, texts)
        context = context_length(self.model)
        if context is not None and getattr(datamodule, "max_length", 0) > context:
            rank_zero_info(f"max_length {datamodule.max_length} lowered to the model's context of {context} tokens")
            datamodule.max_length = context

    def memory_estimate(self, batch_size: int, seq_len: int, precision: str) -> MemoryEstimate:
        """A rough estimate of a training step's memory (``testbed.llm.memory``)."""
        base = base_model(self.model)
        config = base.config.get_text_config()
        width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
        return estimate_memory(
            n_params=sum(p.numel() for p in self.parameters()),
            n_trainable=sum(p.numel() for _, p in self.trainable_parameters()),
            width=int(width), n_layers=len(decoder_layers(self.model)),
            vocab=int(base.get_input_embeddings().num_embeddings),
            batch_size=batch_size, seq_len=seq_len, precision=precision, optimizer=self.optimizer_settings.name,
            gradient_checkpointing=self.gradient_checkpointing,
        )  # fmt: skip

    def describe_memory(self, precision: str, datamodule: Any = None) -> str:
        """The memory estimate at ``precision`` (a Lightning precision string) and the datamodule's batch size and
        ``max_length`` (capped at the model's context)."""
        batch = int(getattr(datamodule, "batch_size", 1) or 1)
        context = context_length(self.model)
        seq = int(getattr(datamodule, "max_length", 0) or context or 512)
        return self.memory_estimate(batch, min(seq, context or seq), precision).describe()


def additive_causal_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, 1, T, T] additive mask: 0 where query t may attend key s (s <= t, s a real token, or s = t), else the
    dtype's minimum (every query keeps itself, so padding rows never become all-masked NaNs)."""
    length = attention_mask.shape[-1]
    eye = torch.eye(length, dtype=torch.bool, device=attention_mask.device)
    allowed = eye.cumsum(0).bool() & (attention_mask[:, None, None, :].bool() | eye)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


__all__ = ["CausalLMModule", "additive_causal_mask"]
