"""Atomic outputs: an interrupted write (an exception inside the writer, or the process killed mid-write) never
leaves a file that later loads as valid, and the previous version of the file survives intact."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from testbed import cli as testbed_cli
from testbed.checkpoint_io import SafeCheckpointIO, check_ckpt_path
from testbed.directions import DirectionSet, load_direction
from testbed.errors import CheckpointError
from testbed.guards import NonFiniteGuard
from testbed.io import atomic_write_text, load_torch_file
from tests.helpers.paths import REPO_ROOT
from tests.helpers.slow_writer import new_direction_set

REPO = REPO_ROOT


class ExplodesWhenPickled:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def _old_checkpoint() -> dict:
    return {"state_dict": {"w": torch.full((4096,), 1.0)}, "global_step": 1}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_checkpoint_io_failure_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    io_plugin = SafeCheckpointIO()
    io_plugin.save_checkpoint(_old_checkpoint(), path)
    big = {"state_dict": {"w": torch.full((4096,), 2.0)}, "global_step": 2, "boom": ExplodesWhenPickled()}
    with pytest.raises(RuntimeError, match="disk full"):
        io_plugin.save_checkpoint(big, path)
    assert torch.equal(io_plugin.load_checkpoint(path)["state_dict"]["w"], torch.full((4096,), 1.0))
    assert _leftovers(tmp_path) == []


def test_checkpoint_io_failure_without_previous_file_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "epoch=0-step=2.ckpt"
    with pytest.raises(RuntimeError, match="disk full"):
        SafeCheckpointIO().save_checkpoint({"state_dict": {}, "boom": ExplodesWhenPickled()}, path)
    assert not path.exists() and _leftovers(path.parent) == []


def test_direction_save_failure_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "vrev.pt"
    ds = new_direction_set()
    ds.save(path)
    broken = DirectionSet(dict(ds.vectors), dict(ds.metadata, boom=ExplodesWhenPickled()))
    with pytest.raises(RuntimeError, match="disk full"):
        broken.save(path)
    assert torch.equal(load_direction(path).vectors["blocks.0.hidden"], ds.vectors["blocks.0.hidden"])
    assert _leftovers(tmp_path) == []


KINDS = {"checkpoint": "last.ckpt", "direction": "vrev.pt", "text": "config.yaml"}


def test_killed_writers_never_leave_a_loadable_partial_file(tmp_path: Path) -> None:
    """SIGKILL the writers after half the bytes hit the disk: old files are intact, remnants do not load.

    One subprocess writes a Lightning checkpoint (``SafeCheckpointIO``), a direction file (``DirectionSet.save``)
    and a text file (``atomic_write_bytes``) in three threads, each stalling half-way.
    """
    paths = {kind: tmp_path / kind / name for kind, name in KINDS.items()}
    SafeCheckpointIO().save_checkpoint(_old_checkpoint(), paths["checkpoint"])
    new_direction_set().save(paths["direction"])
    atomic_write_text(paths["text"], "old: 1\n")
    before = {kind: path.read_bytes() for kind, path in paths.items()}

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    args = [f"{kind}={path}" for kind, path in paths.items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.slow_writer", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        lines = [proc.stdout.readline().strip() for _ in paths]  # one line per writer: HALF, or FAIL and why
        assert lines == ["HALF"] * len(paths), lines
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)

    for kind, path in paths.items():
        assert path.read_bytes() == before[kind], kind  # the killed write did not touch the real file
        remnants = _leftovers(path.parent)
        assert len(remnants) == 1, kind  # the half-written temp file (a crash cannot clean up) ...
        remnant = path.parent / remnants[0]
        assert remnant.stat().st_size > 0
        assert not remnant.name.endswith((".ckpt", ".pt", ".yaml"))  # ... is never picked up by name ...
        if kind == "text":
            continue
        with pytest.raises(CheckpointError):  # ... and never loads as valid under the testbed's loaders
            load_torch_file(remnant)
        with pytest.raises(CheckpointError):
            check_ckpt_path(remnant)
        if kind == "direction":
            with pytest.raises(CheckpointError):
                load_direction(remnant)


def _tiny_cli(tmp_path: Path, monkeypatch, trainer_yaml: str) -> testbed_cli.TestbedCLI:
    """The testbed CLI (not run) on the tiny regressor, with ``trainer_yaml`` as the config's trainer section."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {class_path: testbed.testing.TinyRegressor}\n"
        "data: {class_path: testbed.testing.TinyData}\n" + trainer_yaml
    )
    return testbed_cli.TestbedCLI(args=["--config", str(config)], run=False)


def test_cli_installs_safe_checkpoint_io_and_guard_by_default(tmp_path: Path, monkeypatch) -> None:
    cli = _tiny_cli(tmp_path, monkeypatch, "trainer: {max_steps: 1, logger: false, accelerator: cpu}\n")
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)
    assert sum(isinstance(c, NonFiniteGuard) for c in cli.trainer.callbacks) == 1


def test_cli_keeps_a_configured_guard(tmp_path: Path, monkeypatch) -> None:
    cli = _tiny_cli(
        tmp_path,
        monkeypatch,
        "trainer:\n  max_steps: 1\n  logger: false\n  accelerator: cpu\n"
        "  callbacks:\n  - class_path: testbed.guards.NonFiniteGuard\n"
        "    init_args: {representation_every_n_steps: 0}\n",
    )
    guards = [c for c in cli.trainer.callbacks if isinstance(c, NonFiniteGuard)]
    assert len(guards) == 1 and guards[0].representation_every_n_steps == 0


def test_project_writes_outputs_only_through_atomic_writers() -> None:
    """Static check: outside ``testbed/io.py`` the package writes files only via ``testbed.io``'s atomic writers.

    Direct writes are allowed into a ``tempfile`` folder (scratch files) and ``savefig`` into an in-memory buffer.
    """
    direct = re.compile(r"\.write_text\(|\.write_bytes\(|torch\.save\(|\bopen\([^)]*['\"][wa]b?['\"]|savefig\((?!buf)")
    offenders = []
    for path in sorted((REPO / "testbed").rglob("*.py")):
        if path.name == "io.py" and path.parent.name == "testbed":
            continue
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if direct.search(line) and not any("tempfile." in prev for prev in lines[max(0, i - 20) : i]):
                offenders.append(f"{path.relative_to(REPO)}:{i + 1}: {line.strip()}")
    assert not offenders, "non-atomic writes:\n" + "\n".join(offenders)
