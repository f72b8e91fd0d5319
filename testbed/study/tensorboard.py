"""TensorBoard side by side for a study: HParams sessions per run, one layout and HParams experiment per study.

* Each run gets an HParams *session* (its hyper-parameters: study, phase, arm, seed, key model settings).
* The study root gets one event file holding (a) a custom-scalars layout with one Multiline chart per tag, so
  every arm of a metric lands in one chart, and (b) the HParams *experiment*: the union of hyper-parameters and
  the list of metric tags, so the HParams view shows each run's last value of each metric.

``TensorBoardLogger.log_hyperparams(params, metrics)`` is not used: it logs the metric values at step 0 into the
very tags it names, which would add a spurious point to each curve, and one experiment per run makes TensorBoard
pick an arbitrary run's (metric-less) experiment. So runs carry sessions only, and the root carries the experiment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from testbed.study.layout import LAYOUT_SUFFIX

__all__ = [
    "scalar_hparams",
    "clean_hparams",
    "write_session",
    "custom_scalars_layout",
    "write_study_root",
    "scalar_tags",
]


def scalar_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten the scalar leaves of a nested config to ``{"model.lr": 0.1, ...}`` (``init_args`` dropped)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = prefix if key == "init_args" else (f"{prefix}.{key}" if prefix else key)
        if isinstance(value, dict):
            out.update(scalar_hparams(value, name))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
    return out


def _hparam_value(value: Any) -> bool | float | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


def clean_hparams(hp: dict[str, Any]) -> dict[str, bool | float | str]:
    """HParams accepts bool, number and string values; everything else is shown as its string."""
    return {key: _hparam_value(value) for key, value in hp.items()}


def _file_writer(writer: Any) -> Any:
    """The open event-file writer of a ``SummaryWriter`` (its public ``file_writer``, set while it is open)."""
    if writer.file_writer is None:
        raise RuntimeError("the SummaryWriter is closed; HParams cannot be written to it")
    return writer.file_writer


def write_session(writer: Any, hp: dict[str, Any]) -> None:
    """Write the HParams session start/end for one run.

    Args:
        writer: the run's ``SummaryWriter`` (e.g. ``TensorBoardLogger.experiment``).
        hp: the run's hyper-parameters.
    """
    from torch.utils.tensorboard.summary import hparams

    _exp, ssi, sei = hparams(clean_hparams(hp), {})
    file_writer = _file_writer(writer)
    file_writer.add_summary(ssi)
    file_writer.add_summary(sei)
    writer.flush()


def custom_scalars_layout(tags: Iterable[str]) -> dict[str, dict[str, list]]:
    """``{group: {tag: ["Multiline", ["^tag$"]]}}``: one chart per tag, holding every run (arm, seed) that logs it."""
    layout: dict[str, dict[str, list]] = {}
    for tag in sorted(set(tags)):
        group = tag.split("/", 1)[0]
        layout.setdefault(group, {})[tag] = ["Multiline", [f"^{re.escape(tag)}$"]]
    return layout


def write_study_root(root: Path, tags: Iterable[str], all_hparams: list[dict[str, Any]]) -> Path:
    """(Re)write the study root's layout and HParams experiment event file, replacing older ones.

    Args:
        root: the study folder.
        tags: the scalar tags logged by the study's runs.
        all_hparams: every finished run's hyper-parameters.

    Returns:
        The event file written.
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    tags = sorted(set(tags))
    root.mkdir(parents=True, exist_ok=True)
    old = sorted(root.glob(f"events.out.tfevents.*{LAYOUT_SUFFIX}"))
    writer = SummaryWriter(log_dir=str(root), filename_suffix=LAYOUT_SUFFIX)
    try:
        writer.add_custom_scalars(custom_scalars_layout(tags))
        union: dict[str, Any] = {}
        for hp in all_hparams:
            for key, value in clean_hparams(hp).items():
                union.setdefault(key, value)
        exp, _ssi, _sei = hparams(union, {tag: 0.0 for tag in tags})
        _file_writer(writer).add_summary(exp)
        writer.flush()
        new = set(root.glob(f"events.out.tfevents.*{LAYOUT_SUFFIX}")) - set(old)
    finally:
        writer.close()
    for stale in old:  # only the file just written should define the layout
        stale.unlink(missing_ok=True)
    return next(iter(new)) if new else root


def scalar_tags(run_dir: Path) -> set[str]:
    """Scalar tags logged in one run folder (read with TensorBoard's EventAccumulator)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 1})
    acc.Reload()
    return set(acc.Tags().get("scalars", []))
