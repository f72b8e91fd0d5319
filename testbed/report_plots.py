"""PNG figures for ``testbed report``: a metric against step per arm with a seed band, and log-log fits with
theory's line over the measurement. Written atomically with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from testbed.io import atomic_write_bytes  # noqa: E402
from testbed.report import LOG_FLOOR  # noqa: E402

STEP_LABEL = "step (optimizer steps)"


def _aligned(runs: list[Any], tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps [S], values [n_seeds, S]) over the steps every seed logged; NaN where a seed lacks the step."""
    series = [r.scalars[tag] for r in runs if tag in r.scalars]
    steps = np.array(sorted(set().union(*(s.tolist() for s, _ in series))), dtype=np.int64)
    table = np.full((len(series), len(steps)), np.nan)
    for i, (s, v) in enumerate(series):
        table[i, np.searchsorted(steps, s)] = v
    return steps, table


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _file_name(tag: str, prefix: str = "") -> str:
    return prefix + tag.replace("/", "__").replace(" ", "_") + ".png"


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, lambda fh: fh.write(buf.getvalue()))


def _legend(ax: Any, n: int) -> None:
    if n > 6:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.legend(fontsize=8)


def plot_metric(groups: dict[str, list[Any]], tag: str, out_dir: Path) -> Path:
    """``tag`` against step, one line per arm (mean over seeds) with a ±1 std band."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    arms = [a for a, runs in groups.items() if any(tag in r.scalars for r in runs)]
    for color, arm in zip(_colors(len(arms)), arms, strict=True):
        steps, table = _aligned(groups[arm], tag)
        mean = np.nanmean(table, axis=0)
        # sample std (ddof=1) over the seeds that logged each step, as in the table; 0 with one seed
        std = np.array([np.std(c[np.isfinite(c)], ddof=1) if np.isfinite(c).sum() > 1 else 0.0 for c in table.T])
        seeds = f"{table.shape[0]} seed{'s' if table.shape[0] > 1 else ''}"
        if len(steps) < 3:  # a value logged once or twice (e.g. a final fit): error bars, not a band
            ax.errorbar(steps, mean, yerr=std, fmt="o", capsize=4, color=color, label=f"{arm} ({seeds}, ±1 std)")
            continue
        ax.plot(steps, mean, color=color, label=f"{arm} ({seeds})")
        if table.shape[0] > 1:
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel(STEP_LABEL)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(tag)
    ax.set_title(f"{tag}: mean over seeds, band ±1 std")
    ax.grid(alpha=0.3)
    _legend(ax, len(arms))
    return _save(fig, out_dir / _file_name(tag))


def plot_loglog(
    groups: dict[str, list[Any]],
    tag: str,
    theory_tag: str,
    window: tuple[int, int] | None,
    out_dir: Path,
    fits: list[dict[str, Any]],
) -> Path:
    """``tag`` against step on log-log axes per arm (mean over seeds, min–max band), fitted exponent in the
    legend, theory's prediction as a dashed line of the same colour, the fit window shaded."""
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    arms = [a for a, runs in groups.items() if any(tag in r.scalars for r in runs)]
    fit_of = {(f["arm"], f["metric"]): f for f in fits}
    top = max((np.nanmax(_aligned(groups[a], tag)[1]) for a in arms), default=1.0)
    floor = top * LOG_FLOOR if top > 0 else LOG_FLOOR
    theory_labelled = False
    for color, arm in zip(_colors(len(arms)), arms, strict=True):
        steps, table = _aligned(groups[arm], tag)
        mean = np.nanmean(table, axis=0)
        ok = (steps > 0) & (mean > floor)
        fit = fit_of.get((arm, tag), {})
        slope = fit.get("exponent", float("nan"))
        coef = fit.get("coefficient", float("nan"))
        label = f"{arm}: exponent {slope:.2f}, coefficient {coef:.3g}" if math.isfinite(slope) else f"{arm}: no fit"
        if fit.get("negligible") or not ok.any():
            label = f"{arm}: ≈ 0 (below {LOG_FLOOR:g} × max, not drawn)"
            ok = np.zeros_like(ok)
        ax.plot(steps[ok], mean[ok], color=color, label=label, linewidth=2.6, alpha=0.8)
        if table.shape[0] > 1 and ok.any():
            lo, hi = np.nanmin(table, axis=0), np.nanmax(table, axis=0)
            ax.fill_between(steps[ok], np.maximum(lo[ok], floor), hi[ok], color=color, alpha=0.18, linewidth=0)
        if any(theory_tag in r.scalars for r in groups[arm]):
            t_steps, t_table = _aligned(groups[arm], theory_tag)
            t_mean = np.nanmean(t_table, axis=0)
            t_ok = (t_steps > 0) & (t_mean > floor)
            label = f"theory ({theory_tag})" if not theory_labelled else None
            ax.plot(t_steps[t_ok], t_mean[t_ok], color="black", linestyle="--", linewidth=1.0, label=label, zorder=5)
            theory_labelled = theory_labelled or t_ok.any()
    if window is not None:
        ax.axvspan(window[0], window[1], color="grey", alpha=0.08, label=f"fit window [{window[0]}, {window[1]}]")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{STEP_LABEL}, log scale")
    ax.set_ylabel(f"{tag}, log scale")
    ax.set_title(f"{tag} vs step (log-log): mean over seeds, band min–max")
    ax.grid(alpha=0.3, which="both")
    _legend(ax, len(arms) + 2)
    return _save(fig, out_dir / _file_name(tag, prefix="loglog__"))
