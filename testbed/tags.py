"""The one tag scheme every metric is logged under: ``<group>/<metric>`` or ``<group>/<metric>/<layer>``.

Arms of a study log identical tags into sibling run folders, so TensorBoard overlays them and
``testbed report`` can read them back without per-model knowledge.
"""

from __future__ import annotations

# Groups. A new metric goes into one of these rather than inventing a new prefix.
TASK_TRAIN = "train"  # task loss/accuracy on training batches
TASK_VAL = "val"  # task metrics on held-out data
ALIGN = "align"  # alignment loss / harmfulness
THEORY = "theory"  # closed-form predictions and measured/predicted ratios
REVERSION = "reversion"  # drift alignment with v_rev, null exceedance
INTERVENTION = "intervention"  # what a blocker removed/held
PERF = "perf"  # throughput
CURVATURE = "curvature"  # the curvature account: alignment subspace S, AIC diagnostics, Δu and the quartic fit


def tag(group: str, metric: str, layer: str | None = None) -> str:
    """Build a tag; ``layer`` (e.g. ``blocks.1.resid_post``) becomes the last path element."""
    if "/" in metric:
        raise ValueError(f"metric name may not contain '/': {metric!r}")
    return f"{group}/{metric}" if layer is None else f"{group}/{metric}/{layer}"


__all__ = [
    "TASK_TRAIN",
    "TASK_VAL",
    "ALIGN",
    "THEORY",
    "REVERSION",
    "INTERVENTION",
    "PERF",
    "CURVATURE",
    "tag",
]
