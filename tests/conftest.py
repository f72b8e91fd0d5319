"""Shared fixtures: the CLI run in-process in a temporary folder, seeding before every test, tiny-LM factories,
and GPU tests skipped without a GPU."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import torch

from tests.helpers.paths import REPO_ROOT


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="no CUDA device present")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[Sequence[str]], int]:
    """Run ``python -m testbed ARGS`` in-process with ``tmp_path`` as working directory; return the exit code.

    Config paths may be given relative to the repository root: they are resolved before the chdir.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONHASHSEED", "0")

    def run(args: Sequence[str]) -> int:
        from testbed.__main__ import main

        resolved = [str(REPO_ROOT / a) if (not os.path.isabs(a) and (REPO_ROOT / a).is_file()) else a for a in args]
        try:
            main(resolved)
        except SystemExit as exc:
            return int(exc.code or 0) if not isinstance(exc.code, str) else 1
        return 0

    return run


@pytest.fixture(autouse=True)
def _seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the same global RNG state, and no seed leaks into the next test's environment."""
    import pytorch_lightning as pl

    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    pl.seed_everything(0, verbose=False)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)


@pytest.fixture
def tiny_gpt2() -> Callable[..., tuple]:
    """Factory: a randomly initialised tiny GPT-2 ``CausalLMModule`` and its tokenizer (``testbed.testing.tiny_lm``)."""
    from testbed.testing import tiny_lm

    return lambda **kwargs: tiny_lm("gpt2", **kwargs)


@pytest.fixture
def tiny_llama() -> Callable[..., tuple]:
    """Factory: a randomly initialised tiny Llama ``CausalLMModule`` and its tokenizer (``testbed.testing.tiny_lm``)."""
    from testbed.testing import tiny_lm

    return lambda **kwargs: tiny_lm("llama", **kwargs)


@pytest.fixture
def single_threaded() -> Iterator[None]:
    """The in-process run on one thread, as each subprocess of a multi-process or killed-run comparison is
    (``OMP_NUM_THREADS=1``): the same kernels and float summation order, so the numbers can be compared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
