"""Where the repository and its experiments are, for tests in any folder of ``tests/``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPO_ROOT", "EXPERIMENTS"]

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO_ROOT / "experiments"
