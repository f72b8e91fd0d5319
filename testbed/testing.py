"""Tiny models, data and trainers for tests, benchmarks and examples (like Lightning's ``BoringModel``).

Everything here runs in seconds on a CPU and downloads nothing:

- ``TinyRegressor`` / ``TinyData``: a 2-layer MLP regressor behind the probe protocol (hook points
  ``blocks.0.hidden`` and ``blocks.1.out``) on fixed synthetic data, with switches that inject a NaN/inf at a chosen
  step so failure handling can be exercised;
- ``tiny_lm`` / ``tiny_probe_batch``: a randomly initialised 2-layer GPT-2 or Llama ``CausalLMModule`` (width 32)
  with the safety world's tokenizer, and a probe batch of its prompts (transformers is imported only when called);
- ``quiet_trainer``: a ``pl.Trainer`` that only trains (no logger, checkpoints, bars or validation).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from testbed.protocol import HookPoint, TestbedDataModule, TestbedModule

__all__ = ["TinyRegressor", "TinyData", "TEST_LM_CONFIGS", "tiny_lm", "tiny_probe_batch", "quiet_trainer"]

# Test-sized causal LMs (smaller than the built-in configurations of ``testbed.llm.models``).
TEST_LM_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 48},
    "llama": {"num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "hidden_size": 32,
              "intermediate_size": 64, "max_position_embeddings": 48},
}  # fmt: skip


class TinyRegressor(TestbedModule):
    """A 2-layer MLP regressor; layers ``blocks.0.hidden`` (width ``hidden``) and ``blocks.1.out`` (width 1).

    Args:
        width: input width.
        hidden: hidden width.
        lr: SGD learning rate.
        poison_loss_at_step: make the training loss NaN at this global step (-1: never).
        poison_metric_at_step: log ``train/poison`` = inf at this global step (-1: never).
        poison_rank: poison only on this process rank (-1: every rank).
        init_from: weights to start from.
    """

    def __init__(
        self,
        width: int = 4,
        hidden: int = 8,
        lr: float = 0.1,
        poison_loss_at_step: int = -1,
        poison_metric_at_step: int = -1,
        poison_rank: int = -1,
        init_from: str | None = None,
    ) -> None:
        super().__init__(init_from)
        self.save_hyperparameters()
        self.blocks = nn.ModuleList([
            nn.Sequential(OrderedDict([("0", nn.Linear(width, hidden)), ("1", nn.Tanh()), ("hidden", HookPoint())])),
            nn.Sequential(OrderedDict([("0", nn.Linear(hidden, 1)), ("out", HookPoint())])),
        ])  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks[1](self.blocks[0](x)).squeeze(-1)

    def forward_probe(self, batch: Tensor) -> None:
        self(batch)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = ((self(x) - y) ** 2).mean()
        poisoned_rank = self.hparams.poison_rank in (-1, self.global_rank)
        if self.global_step == self.hparams.poison_loss_at_step and poisoned_rank:
            loss = loss * math.nan
        self.log("train/loss", loss)
        if self.global_step == self.hparams.poison_metric_at_step:
            self.log("train/poison", math.inf)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", ((self(x) - y) ** 2).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TinyData(TestbedDataModule):
    """Synthetic linear-regression data (fixed by ``seed``) and a fixed probe batch.

    Args:
        n: number of training examples (0 is allowed, to exercise empty-data handling).
        width: input width.
        batch_size: training batch size.
        probe_size: number of probe inputs.
        poison_probe: put a NaN into the probe inputs (a representation goes non-finite).
        seed: data seed.
    """

    def __init__(
        self,
        n: int = 32,
        width: int = 4,
        batch_size: int = 8,
        probe_size: int = 4,
        poison_probe: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, width, generator=g)
        self.y = self.x @ torch.randn(width, generator=g)
        self.probe = torch.randn(probe_size, width, generator=g)
        if poison_probe:
            self.probe[0, 0] = math.nan
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x[:8], self.y[:8]), batch_size=8)

    def probe_batch(self) -> Tensor:
        return self.probe.clone()


def tiny_lm(kind: str = "gpt2", lora: Any = None, **kwargs: Any) -> tuple[Any, Any]:
    """A randomly initialised tiny ``CausalLMModule`` (width 32, 2 layers) and the safety world's tokenizer.

    Args:
        kind: ``gpt2`` or ``llama``.
        lora: optional LoRA settings (a ``LoraSettings`` or a mapping of its fields).
        **kwargs: further ``CausalLMModule`` arguments.
    """
    from testbed.llm.data import world_tokenizer
    from testbed.llm.module import CausalLMModule

    tokenizer = world_tokenizer()
    module = CausalLMModule(model=kind, model_config=TEST_LM_CONFIGS[kind], vocab_size=len(tokenizer), lora=lora,
                            **kwargs)  # fmt: skip
    return module, tokenizer


def tiny_probe_batch(tokenizer: Any, n: int = 8) -> dict[str, Tensor]:
    """``n`` left-padded safety-world harmful prompts (varying lengths), formatted with the chat template."""
    from testbed.llm.data import prompt_batch
    from testbed.llm.world import SafetyWorld

    prompts = [e.prompt for e in SafetyWorld().prompts("train_harmful", n)]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in prompts]  # fmt: skip
    return prompt_batch(tokenizer, texts)


def quiet_trainer(max_steps: int, callbacks: Sequence[pl.Callback] = (), **kwargs: Any) -> pl.Trainer:
    """A trainer that only trains for ``max_steps`` steps with ``callbacks``.

    Args:
        max_steps: optimizer steps to run.
        callbacks: the callbacks of the run.
        **kwargs: further ``pl.Trainer`` arguments; they override the quiet defaults (e.g. ``logger=...``).
    """
    options: dict[str, Any] = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    options.update(kwargs)
    return pl.Trainer(max_steps=max_steps, callbacks=list(callbacks), **options)
