"""Tiny random checkpoints of every common decoder family, saved as a user would (``save_pretrained``), with the
testbed's tokenizer and JSONL data, plus the fit configs that drive them through the CLI.

``FAMILIES`` maps a family name to its transformers config class name and the fields that make it tiny (2 layers,
width 32, ids 0/1/2 for pad/bos/eos). ``missing_families()`` lists those this transformers lacks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = ["FAMILIES", "missing_families", "tiny_family_model", "save_family_pair", "write_jsonl_data",
           "fit_config", "FamilySetup"]  # fmt: skip

_DECODER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64}  # fmt: skip
_HEAD8 = {**_DECODER, "head_dim": 8}

FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", {"n_layer": 2, "n_head": 4, "n_embd": 32, "n_positions": 64}),
    "llama": ("LlamaConfig", _DECODER),
    "mistral": ("MistralConfig", _DECODER),
    "mixtral": ("MixtralConfig", {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2": ("Qwen2Config", _DECODER),
    "qwen3": ("Qwen3Config", _HEAD8),
    "qwen3_moe": ("Qwen3MoeConfig", {**_HEAD8, "num_experts": 4, "num_experts_per_tok": 2,
                                     "moe_intermediate_size": 16}),
    "gemma": ("GemmaConfig", _HEAD8),
    "gemma2": ("Gemma2Config", _HEAD8),
    "gemma3_text": ("Gemma3TextConfig", _HEAD8),
    "gemma3": ("Gemma3Config", {}),  # the multimodal wrapper: see _gemma3_config
    "phi": ("PhiConfig", _DECODER),
    "phi3": ("Phi3Config", _DECODER),
    "gpt_neox": ("GPTNeoXConfig", _DECODER),
    "opt": ("OPTConfig", {"hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                          "max_position_embeddings": 64, "word_embed_proj_dim": 32}),
    "falcon": ("FalconConfig", {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}),
    "bloom": ("BloomConfig", {"hidden_size": 32, "n_layer": 2, "n_head": 4}),
    "stablelm": ("StableLmConfig", _DECODER),
    "olmo": ("OlmoConfig", _DECODER),
    "olmo2": ("Olmo2Config", _DECODER),
    "granite": ("GraniteConfig", _DECODER),
    "smollm3": ("SmolLM3Config", _DECODER),
}  # fmt: skip


def missing_families() -> list[str]:
    """Families whose config class this transformers does not have."""
    import transformers

    return [name for name, (cls, _) in FAMILIES.items() if not hasattr(transformers, cls)]


def _gemma3_config(vocab: int) -> Any:
    from transformers import Gemma3Config

    text = {**_HEAD8, "vocab_size": vocab + 3, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 16, "patch_size": 8}  # fmt: skip
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, boi_token_index=vocab,
                        eoi_token_index=vocab + 1, image_token_index=vocab + 2)  # fmt: skip


def tiny_family_model(family: str, vocab: int, seed: int = 0) -> Any:
    """A randomly initialised tiny causal LM of ``family`` with a ``vocab``-token embedding (no download)."""
    import transformers

    torch.manual_seed(seed)
    if family == "gemma3":
        config = _gemma3_config(vocab)
    else:
        cls, fields = FAMILIES[family]
        config = getattr(transformers, cls)(**fields, vocab_size=vocab, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return transformers.AutoModelForCausalLM.from_config(config)


def save_family_pair(family: str, root: Path, seed: int = 0, noise: float = 0.05) -> tuple[Path, Path]:
    """``root/base`` and ``root/aligned`` (the base plus a small perturbation), each with the world tokenizer."""
    from testbed.llm.data import world_tokenizer

    tokenizer = world_tokenizer()
    model = tiny_family_model(family, len(tokenizer), seed)
    folders = root / "base", root / "aligned"
    model.save_pretrained(folders[0])
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=generator).to(p.dtype))
    model.save_pretrained(folders[1])
    for folder in folders:
        tokenizer.save_pretrained(folder)
    return folders


def write_jsonl_data(root: Path, n_train: int = 16) -> dict[str, Path]:
    """Instruction data and held-out harmful prompts from the safety world, as JSONL files under ``root``."""
    from testbed.llm.world import SafetyWorld, WorldConfig

    world = SafetyWorld(WorldConfig())
    files = {"train": root / "train.jsonl", "harmful": root / "harmful.jsonl"}
    rows = {"train": [{"prompt": e.prompt, "response": e.response} for e in world.finetune("train")[:n_train]],
            "harmful": [{"prompt": e.prompt} for e in world.prompts("heldout_harmful")[:8]]}  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    for key, path in files.items():
        path.write_text("".join(json.dumps(r) + "\n" for r in rows[key]))
    return files


class FamilySetup:
    """Folders, data and configs of one family under ``root`` (written by ``__init__``)."""

    def __init__(self, family: str, root: Path) -> None:
        self.family, self.root = family, root
        self.base, self.aligned = save_family_pair(family, root)
        self.data = write_jsonl_data(root / "data")
        self.vrev = root / "vrev.pt"
        self.layer = "blocks.1.resid_post"

    def config(self, lora: bool, callbacks: bool = True) -> Path:
        """A two-step fit config from the aligned folder (LoRA or full), with monitor and update projection."""
        path = self.root / f"fit_{'lora' if lora else 'full'}.yaml"
        cbs = [{"class_path": f"testbed.interventions.{name}", "init_args": {"direction": {"path": str(self.vrev)}}}
               for name in ("ReversionMonitor", "UpdateProjectionBlocker")] if callbacks else []  # fmt: skip
        path.write_text(yaml.safe_dump(fit_config(self.aligned, self.data, lora={"r": 4} if lora else None,
                                                  callbacks=cbs, name=self.family)))  # fmt: skip
        return path

    def vrev_args(self, config: Path) -> list[str]:
        return ["vrev", "--config_path", str(config), "--witness_ckpt", str(self.base), "--reference_ckpt",
                str(self.aligned), "--layers", f"[{self.layer}]", "--out", str(self.vrev)]  # fmt: skip


def fit_config(folder: Path, data: dict[str, Path], lora: dict | None = None, callbacks: list | None = None,
               name: str = "family", steps: int = 2, **model_args: Any) -> dict[str, Any]:  # fmt: skip
    """A fit config dict: ``CausalLMModule`` from ``folder``, ``JsonlDataModule`` on ``data``, ``steps`` steps."""
    model = {"pretrained_path": str(folder), "optimizer": {"lr": 1e-3}, **model_args}
    if lora is not None:
        model["lora"] = lora
    return {
        "seed_everything": 0,
        "model": {"class_path": "testbed.llm.CausalLMModule", "init_args": model},
        "data": {"class_path": "testbed.llm.JsonlDataModule",
                 "init_args": {"train_path": str(data["train"]), "harmful_path": str(data["harmful"]),
                               "tokenizer_path": str(folder), "batch_size": 4, "max_length": 48}},
        "trainer": {"max_steps": steps, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "num_sanity_val_steps": 0, "limit_val_batches": 0, "callbacks": callbacks or [],
                    "logger": {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "runs", "name": name, "version": "v"}}},
    }  # fmt: skip
