"""Shared fixtures: run the CLI in-process inside a temporary folder, and skip GPU tests without a GPU."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


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
