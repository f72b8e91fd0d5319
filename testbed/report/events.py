"""Reading one run folder's TensorBoard event files back: scalar series, and a check that every file reads to its end.

TensorBoard's reader stops silently at the first truncated or corrupt record, so a damaged file would look like a
run that simply logged less. :func:`event_file_problems` walks each file's records with the public raw loader and
compares the bytes it consumed with the file's size: a shortfall names the file and the byte where reading stopped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from testbed.study.layout import LAYOUT_SUFFIX

__all__ = ["Series", "EVENT_GLOB", "read_scalars", "event_files", "event_file_problems"]

Series = tuple[np.ndarray, np.ndarray]  # (steps [N] int64, values [N] float64), sorted by step
EVENT_GLOB = "events.out.tfevents.*"
# A TFRecord is framed by a uint64 length and two uint32 CRCs (of the length, of the payload): 16 bytes.
_RECORD_FRAMING = 16


def event_files(folder: Path) -> list[Path]:
    """The run event files directly in ``folder`` (the study root's own layout file is not a run)."""
    return sorted(f for f in Path(folder).glob(EVENT_GLOB) if f.is_file() and not f.name.endswith(LAYOUT_SUFFIX))


def read_scalars(run_dir: Path) -> dict[str, Series]:
    """All scalar series of one run folder; a step logged twice keeps its latest value.

    Args:
        run_dir: a folder holding ``events.out.tfevents.*`` files.

    Returns:
        ``{tag: (steps, values)}`` with steps ascending.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict[str, Series] = {}
    for tag in acc.Tags().get("scalars", []):
        by_step: dict[int, float] = {}
        for event in sorted(acc.Scalars(tag), key=lambda e: e.wall_time):
            by_step[int(event.step)] = float(event.value)
        steps = np.array(sorted(by_step), dtype=np.int64)
        out[tag] = (steps, np.array([by_step[int(s)] for s in steps], dtype=np.float64))
    return out


def event_file_problems(run_dir: Path) -> list[str]:
    """One line per event file in ``run_dir`` that cannot be read to its end (truncated, corrupt or unreadable)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

    problems = []
    for path in event_files(run_dir):
        try:
            size = path.stat().st_size
            consumed = sum(len(record) + _RECORD_FRAMING for record in RawEventFileLoader(str(path)).Load())
        except Exception as exc:  # the reader raises OSError, DataLossError... : report it, do not stop the report
            problems.append(f"event file {path} could not be read ({type(exc).__name__}: {exc}); values missing")
            continue
        if consumed != size:
            problems.append(f"event file {path} is truncated or corrupt: readable up to byte {consumed} of {size}; "
                            "values logged after that point are missing")
    return problems
