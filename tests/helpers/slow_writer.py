"""Subprocess for the atomic-write tests: save a file through a testbed writer, stall half-way, and get killed.

Usage: ``python -m tests.helpers.slow_writer KIND=PATH ...`` with KIND one of ``checkpoint`` (``SafeCheckpointIO``),
``direction`` (``DirectionSet.save``) or ``text`` (``testbed.io.atomic_write_bytes``); one thread per file.
``torch.save`` and file writes are slowed so that half of the bytes reach the disk, ``HALF`` is printed once per
file, and the writers sleep until the test kills the process.
"""

from __future__ import annotations

import io
import sys
import threading
import time

import torch

_real_save = torch.save
_print_lock = threading.Lock()


def _say(line: str) -> None:
    with _print_lock:  # one whole line per writer thread
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _stall_after_half(data: bytes, fh: io.BufferedWriter) -> None:
    fh.write(data[: len(data) // 2])
    fh.flush()
    _say("HALF")
    time.sleep(120)
    fh.write(data[len(data) // 2 :])


def _slow_save(obj: object, f: io.BufferedWriter, *args: object, **kwargs: object) -> None:
    buffer = io.BytesIO()
    _real_save(obj, buffer, *args, **kwargs)
    _stall_after_half(buffer.getvalue(), f)


def main(kind: str, path: str) -> None:
    try:
        _write(kind, path)
    except BaseException as exc:  # tell the test instead of leaving it waiting for HALF
        _say(f"FAIL {kind}: {type(exc).__name__}: {exc}")


def _write(kind: str, path: str) -> None:
    if kind == "checkpoint":
        from testbed.checkpoint_io import SafeCheckpointIO

        SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.full((4096,), 2.0)}, "global_step": 2}, path)
    elif kind == "direction":
        from testbed.directions import DirectionSet

        DirectionSet.save(new_direction_set(), path)
    elif kind == "text":
        from testbed import io as tio

        tio.atomic_write_bytes(path, lambda fh: _stall_after_half(("new: 2\n" * 4096).encode(), fh))
    else:
        raise SystemExit(f"unknown kind {kind}")


def new_direction_set() -> object:
    """A valid direction set (the 'new' version the killed writer was saving)."""
    from testbed.directions import DirectionSet

    return DirectionSet(
        {"blocks.0.hidden": torch.ones(8) / 8**0.5},
        {"widths": {"blocks.0.hidden": 8}, "pooling": "mean", "method": "diff_means", "model_class": "x"},
        {"blocks.0.hidden": torch.zeros(8)},
        {"blocks.0.hidden": torch.zeros(8)},
    )


if __name__ == "__main__":
    import testbed.checkpoint_io  # noqa: F401  (import in the main thread: imports are not thread-safe here)
    import testbed.directions  # noqa: F401

    jobs = [threading.Thread(target=main, args=arg.split("=", 1), daemon=True) for arg in sys.argv[1:]]
    torch.save = _slow_save
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
