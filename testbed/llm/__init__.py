"""The LLM track: Hugging Face causal LMs behind the probe protocol, the safety world, JSONL data and judges."""

from testbed.llm.data import JsonlDataModule, SafetyWorldDataModule, world_tokenizer
from testbed.llm.module import CausalLMModule

__all__ = ["CausalLMModule", "JsonlDataModule", "SafetyWorldDataModule", "world_tokenizer"]
