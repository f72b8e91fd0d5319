"""The LoRA throughput benchmark (experiments/bench/llm.py --part lora): on a GPU it measures the largest recipe
that fits, plain vs monitor vs monitor + update projection; without one the GPU test is skipped and a tiny model
with a recipe's settings exercises the same code path (slow)."""

from __future__ import annotations

import pytest
import torch


def _check(result: dict) -> None:
    assert set(result["tokens_per_s"]) == {"plain", "monitor(10)", "monitor(10)+update_projection"}
    assert all(rate > 0 for rate in result["tokens_per_s"].values())


@pytest.mark.gpu
def test_lora_tokens_per_second_on_the_largest_recipe_that_fits() -> None:
    from experiments.bench.llm import bench_lora

    result = bench_lora(steps=5)
    assert result["recipe"] in {"llama31_8b", "llama32_3b", "qwen25_3b", "qwen3_1_7b"}
    assert result["peak_gib"] < torch.cuda.get_device_properties(0).total_memory / 2**30
    _check(result)


@pytest.mark.slow
def test_lora_benchmark_code_path_on_cpu() -> None:
    from experiments.bench.llm import bench_lora

    if torch.cuda.is_available():
        pytest.skip("the GPU test covers the benchmark on this machine")
    _check(bench_lora(steps=3))
