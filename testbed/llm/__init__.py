"""The LLM track: Hugging Face causal LMs behind the probe protocol, the safety world, JSONL data and judges."""

from testbed.llm.data import JsonlDataModule, SafetyWorldDataModule, world_tokenizer
from testbed.llm.models import LoraSettings
from testbed.llm.module import CausalLMModule
from testbed.llm.world import WorldConfig

__all__ = [
    "CausalLMModule",
    "JsonlDataModule",
    "LoraSettings",
    "SafetyWorldDataModule",
    "WorldConfig",
    "world_tokenizer",
]
