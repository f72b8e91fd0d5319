"""The LLM track: Hugging Face causal LMs behind the probe protocol, the safety world, data in the field's formats
and judges."""

from testbed.llm.data import JsonlDataModule, SafetyWorldDataModule, world_tokenizer
from testbed.llm.dataset_module import DatasetDataModule
from testbed.llm.formats import DataSource
from testbed.llm.models import LoraSettings
from testbed.llm.module import CausalLMModule
from testbed.llm.world import WorldConfig

__all__ = [
    "CausalLMModule",
    "DataSource",
    "DatasetDataModule",
    "JsonlDataModule",
    "LoraSettings",
    "SafetyWorldDataModule",
    "WorldConfig",
    "world_tokenizer",
]
