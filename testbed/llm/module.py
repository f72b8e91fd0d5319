"""``CausalLMModule``: a Hugging Face causal LM behind the testbed's probe protocol.

The model is either built from a tiny built-in GPT-2 or Llama configuration (no download; ``model_config``
overrides any field) or loaded from a local folder (``pretrained_path``; ``local_files_only`` and never
``trust_remote_code``). Optional LoRA through peft. Layers are ``blocks.{i}.resid_post``: the outputs of the
decoder layers (found through peft's wrapper too). Batches are dicts ``{input_ids, attention_mask[, labels]}``
with ``labels`` = -100 on prompt and padding tokens, so the loss is the causal LM loss on response tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedModel

from testbed.errors import CheckpointError, ConfigError
from testbed.io import load_state_dict
from testbed.protocol import Pooling, TestbedModule
from testbed.tags import TASK_TRAIN, TASK_VAL, tag

IGNORE_INDEX = -100

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {"n_layer": 2, "n_head": 4, "n_embd": 64, "n_positions": 64, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
             "attn_pdrop": 0.0},
    "llama": {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64,
              "intermediate_size": 128, "max_position_embeddings": 64},
}  # fmt: skip


def default_vocab_size() -> int:
    """The safety world's vocabulary size (special tokens included)."""
    from testbed.llm.tokenizer import SPECIAL_TOKENS
    from testbed.llm.world import world_vocabulary

    return len(SPECIAL_TOKENS) + len(world_vocabulary())


def build_model(kind: str, vocab_size: int, overrides: dict[str, Any] | None = None) -> PreTrainedModel:
    """A randomly initialised tiny causal LM (``kind`` gpt2 or llama); ids 0/1/2 are pad/bos/eos."""
    if kind not in TINY_CONFIGS:
        raise ConfigError(f"model must be one of {sorted(TINY_CONFIGS)} (or give pretrained_path), got {kind!r}")
    fields = {**TINY_CONFIGS[kind], "vocab_size": vocab_size, "pad_token_id": 0, "bos_token_id": 1,
              "eos_token_id": 2, **(overrides or {})}  # fmt: skip
    config_cls = GPT2Config if kind == "gpt2" else LlamaConfig
    try:
        config = config_cls(**fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid model_config for {kind}: {exc}") from None
    return AutoModelForCausalLM.from_config(config)


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


def apply_lora(model: PreTrainedModel, lora: dict[str, Any]) -> nn.Module:
    """Wrap ``model`` with peft LoRA; ``lora`` keys: r, alpha, target_modules, dropout."""
    from peft import LoraConfig, get_peft_model

    unknown = set(lora) - {"r", "alpha", "target_modules", "dropout"}
    if unknown:
        raise ConfigError(f"unknown lora keys {sorted(unknown)}; allowed: r, alpha, target_modules, dropout")
    target = lora.get("target_modules")
    if target is None:
        target = ["c_attn", "c_proj"] if model.config.model_type == "gpt2" else ["q_proj", "k_proj", "v_proj", "o_proj"]
    r = int(lora.get("r", 8))
    config = LoraConfig(
        r=r, lora_alpha=float(lora.get("alpha", r)), target_modules=list(target),
        lora_dropout=float(lora.get("dropout", 0.0)), bias="none", task_type="CAUSAL_LM",
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


def lm_forward(model: nn.Module, batch: dict[str, Tensor]) -> Any:
    """Forward pass of ``model`` on a batch dict, with padding-aware position ids."""
    mask = batch.get("attention_mask")
    return model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids(mask))


class CausalLMModule(TestbedModule):
    """A causal LM phase: pre-training, alignment or fine-tuning on instruction batches.

    Args:
        model: built-in tiny configuration, ``gpt2`` or ``llama`` (ignored when ``pretrained_path`` is set).
        model_config: overrides of the built-in configuration (e.g. ``{n_layer: 4, n_embd: 128}``).
        vocab_size: vocabulary size of a built-in model; default: the safety world's vocabulary.
        pretrained_path: a local Hugging Face model folder to load instead of building from config.
        lora: optional LoRA settings ``{r, alpha, target_modules, dropout}``; then only adapters train.
        optimizer: ``adamw`` or ``sgd``.
        lr: learning rate.
        weight_decay: weight decay.
        momentum: SGD momentum.
        betas: AdamW betas.
        init_from: weights to start from (a previous phase's checkpoint); a plain (non-LoRA) checkpoint of
            the same architecture is accepted by a LoRA module and fills its base weights.
    """

    def __init__(
        self,
        model: Literal["gpt2", "llama"] = "gpt2",
        model_config: dict[str, Any] | None = None,
        vocab_size: int | None = None,
        pretrained_path: str | None = None,
        lora: dict[str, Any] | None = None,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        init_from: str | None = None,
    ) -> None:
        super().__init__(init_from)
        self.save_hyperparameters()
        if optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
        if lr <= 0:
            raise ConfigError(f"lr must be positive, got {lr}")
        if pretrained_path is not None:
            base = load_pretrained(pretrained_path)
        else:
            base = build_model(model, vocab_size or default_vocab_size(), model_config)
        self.model: nn.Module = apply_lora(base, lora) if lora else base
        self.optimizer_name, self.lr, self.weight_decay = optimizer, lr, weight_decay
        self.momentum, self.betas = momentum, tuple(betas)

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
        n = batch["input_ids"].shape[0]
        self.log(tag(TASK_VAL, "loss"), loss, batch_size=n)
        self.log(tag(TASK_VAL, "acc"), accuracy, batch_size=n)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, accuracy = self._loss_and_accuracy(batch)
        n = batch["input_ids"].shape[0]
        self.log(tag(TASK_VAL, "loss"), loss, batch_size=n)  # `testbed test` reports held-out task metrics
        self.log(tag(TASK_VAL, "acc"), accuracy, batch_size=n)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for _, p in self.trainable_parameters()]
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)

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
            elif "lora_" in key and self.hparams.lora:
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

    def load_initial_weights(self) -> None:
        """As the base class, after ``adapt_state_dict`` (so HF files and plain-into-LoRA work too)."""
        if self.init_from is None or self._initial_weights_loaded:
            return
        state = self.adapt_state_dict(load_state_dict(self.init_from))
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or wrong:
            detail = "; ".join(f"{label}: {keys[:3]}" for label, keys in
                               (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
            raise ConfigError(f"init_from={self.init_from} does not fit {type(self).__name__} ({detail})")
        with torch.no_grad():
            super().load_state_dict(state, strict=True)
        self._initial_weights_loaded = True

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
