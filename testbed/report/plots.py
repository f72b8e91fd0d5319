"""The report's PNG figures, rendered in memory (matplotlib, Agg backend) and written by the command with the rest.

* ``lines``: a tag against step, one line per arm (mean over seeds) with a ±1 std band, and horizontal references
  (a number as a line; a tag as a line if constant, else its min–max band);
* ``dual``: one tag per arm on the left axis (solid) and another on the right axis (dashed), same colour per arm;
* ``dose``: a column's per-seed values (dots) against a numeric setting of each arm, mean line and ±1 std band;
* ``loglog``: a tag on log-log axes per arm (mean, min–max band), the fitted exponent in the legend, a theory tag
  dashed and the fit window shaded.

As in the tables, a curve only averages values logged at the same step: steps that not every seed logged are left
out of an arm's curve (the legend says how many).
"""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from testbed.errors import ConfigError  # noqa: E402
from testbed.report.cells import series_in  # noqa: E402
from testbed.report.runs import Run, setting_of  # noqa: E402
from testbed.report.spec import PER_SEED_KINDS, Plot  # noqa: E402
from testbed.report.stats import LOG_FLOOR, loglog_fit  # noqa: E402
from testbed.report.tables import FilledTable, header  # noqa: E402

__all__ = ["STEP_LABEL", "aligned", "dose_points", "render_plot"]

STEP_LABEL = "step (optimizer updates)"


def aligned(runs: list[Run], tag: str, window: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(steps [S] every seed logged, values [n_seeds, S], number of steps left out because some seed lacks them)."""
    series = [s for r in runs if (s := series_in(r, tag, window)) is not None]
    if not series:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0)), 0
    union = set().union(*(s.tolist() for s, _ in series))
    common = np.array(sorted(set.intersection(*(set(s.tolist()) for s, _ in series))), dtype=np.int64)
    table = np.stack([v[np.searchsorted(s, common)] for s, v in series]) if len(common) else np.zeros((len(series), 0))
    return common, table, len(union) - len(common)


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _band(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = table.mean(axis=0)
    return mean, table.std(axis=0, ddof=1) if table.shape[0] > 1 else np.zeros_like(mean)


def _curve(ax: Any, steps: np.ndarray, table: np.ndarray, color: Any, label: str, style: str = "-",
           dodge: float = 0.0) -> None:
    mean, std = _band(table)
    if len(steps) < 3:  # one or two points (e.g. a value logged at the end): error bars, shifted apart per arm
        ax.errorbar(steps + dodge, mean, yerr=std, fmt="o", capsize=4, color=color, label=label, linestyle="none")
        return
    ax.plot(steps, mean, color=color, label=label, linestyle=style, linewidth=1.8)
    if table.shape[0] > 1:
        ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.15 if style == "-" else 0.08, linewidth=0)


def _label(name: str, table: np.ndarray, dropped: int) -> str:
    n = table.shape[0]
    extra = f", {dropped} step(s) not logged by every seed left out" if dropped else ""
    return f"{name} ({n} seed{'s' if n != 1 else ''}{extra})"


def _finish(fig: Any, ax: Any, title: str, n_entries: int) -> bytes:
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if n_entries > 5:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _lines(plot: Plot, arms: dict[str, str], groups: dict[str, list[Run]]) -> bytes:
    tag, scale = plot.fields["tag"], 100.0 if plot.fields.get("percent") else 1.0
    window = tuple(plot.fields["steps"]) if plot.fields.get("steps") else None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    curves = {arm: aligned(groups.get(arm, []), tag, window) for arm in arms}
    all_steps = np.concatenate([c[0] for c in curves.values()] or [np.zeros(0)])
    span = float(np.ptp(all_steps)) if all_steps.size else 0.0
    width = (span or 10.0) * 0.3 / max(len(arms), 1)  # how far apart arms' lone points are drawn
    for i, (color, (arm, label)) in enumerate(zip(_colors(len(arms)), arms.items(), strict=True)):
        steps, table, dropped = curves[arm]
        if len(steps):
            dodge = (i - (len(arms) - 1) / 2) * width
            _curve(ax, steps, table * scale, color, _label(label, table, dropped), dodge=dodge)
    for i, ref in enumerate(plot.references):
        style = dict(color="black" if i == 0 else "dimgray", linestyle=["--", ":", "-."][i % 3], linewidth=1.0)
        if ref.value is not None:
            ax.axhline(ref.value * scale, label=ref.label, **style)
            continue
        values = np.concatenate([s[1] for a in arms for r in groups.get(a, []) if (s := series_in(r, ref.tag, window))
                                 is not None] or [np.zeros(0)]) * scale
        if values.size and np.ptp(values) <= 1e-9 * max(1.0, float(np.max(np.abs(values)))):
            ax.axhline(float(values[0]), label=ref.label, **style)
        elif values.size:
            ax.axhspan(float(values.min()), float(values.max()), color=style["color"], alpha=0.12,
                       label=f"{ref.label} (min–max)")
    points_only = all(len(c[0]) < 3 for c in curves.values())
    if points_only:  # a tag logged once or twice per run: tick the real steps, the arms sit beside them
        ax.set_xticks(sorted(set(all_steps.tolist())))
        ax.set_xlabel(f"{STEP_LABEL}; each arm drawn slightly apart")
    else:
        ax.set_xlabel(STEP_LABEL)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(plot.fields.get("ylabel") or (f"{tag} (%)" if scale != 1.0 else tag))
    title = plot.fields.get("title") or f"{tag} per arm"
    title += f": mean over seeds, {'bars' if points_only else 'band'} ±1 std"
    return _finish(fig, ax, title, len(arms) + len(plot.references))


def _dual(plot: Plot, arms: dict[str, str], groups: dict[str, list[Run]]) -> bytes:
    left, right = plot.fields["left"], plot.fields["right"]
    scale_l, scale_r = (100.0 if plot.fields.get(k) else 1.0 for k in ("left_percent", "right_percent"))
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax2 = ax.twinx()
    handles = []
    for color, (arm, label) in zip(_colors(len(arms)), arms.items(), strict=True):
        for axis, tag, scale, style in ((ax, left, scale_l, "-"), (ax2, right, scale_r, "--")):
            steps, table, dropped = aligned(groups.get(arm, []), tag, None)
            if len(steps):
                _curve(axis, steps, table * scale, color, _label(label, table, dropped), style)
        handles.append(Line2D([], [], color=color, label=f"{label} ({len(groups.get(arm, []))} seeds)"))
    left_label = plot.fields.get("left_label") or left
    right_label = plot.fields.get("right_label") or right
    handles += [Line2D([], [], color="black", linestyle="-", label=f"solid: {left_label} (left axis)"),
                Line2D([], [], color="black", linestyle="--", label=f"dashed: {right_label} (right axis)")]
    ax.set_xlabel(STEP_LABEL)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(left_label)
    ax2.set_ylabel(right_label)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.12, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    ax.set_title((plot.fields.get("title") or f"{left_label} and {right_label}") + ": mean over seeds, ±1 std",
                 fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def dose_points(plot: Plot, arms: dict[str, str], groups: dict[str, list[Run]],
                tables: list[FilledTable]) -> tuple[str, list[tuple[float, str, list[float]]]]:
    """(column header, [(x, arm label, per-seed values)] sorted by x) for a dose plot."""
    wanted = plot.fields.get("table")
    found = [(f, c) for f in tables for c in f.table.columns
             if c.label == plot.fields["column"] and (wanted is None or f.table.title == wanted)]
    if not found:
        raise ConfigError(f"dose plot {plot.name!r}: no table column {plot.fields['column']!r}")
    filled, col = found[0]
    if col.kind not in PER_SEED_KINDS:
        raise ConfigError(f"dose plot {plot.name!r}: column {col.label!r} is a {col.kind} column; a dose plot needs "
                          f"one number per seed ({', '.join(PER_SEED_KINDS)})")
    cells = {row.arm: row.cells[col.label] for row in filled.rows}
    x_spec, points = plot.fields["x"], []
    for arm, label in arms.items():
        if arm not in cells:
            raise ConfigError(f"dose plot {plot.name!r}: arm {arm!r} is not a row of the column's table")
        if "setting" in x_spec:
            xs = {setting_of(r, x_spec["setting"]) for r in groups.get(arm, [])}
            if len(xs) != 1:
                raise ConfigError(f"dose plot {plot.name!r}: arm {arm!r} has setting {x_spec['setting']!r} = "
                                  f"{sorted(xs)} across its runs (needs exactly one value)")
            x = xs.pop()
        elif arm in x_spec:
            x = float(x_spec[arm])
        else:
            raise ConfigError(f"dose plot {plot.name!r}: no x for arm {arm!r} in the plot's 'x' mapping")
        points.append((x, label, list(cells[arm].values.values())))
    scale = 100.0 if col.percent else 1.0
    return header(col), sorted((x, label, [v * scale for v in vals]) for x, label, vals in points)


def _dose(plot: Plot, arms: dict[str, str], groups: dict[str, list[Run]], tables: list[FilledTable]) -> bytes:
    ylabel, points = dose_points(plot, arms, groups, tables)
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    filled = [(x, label, vals) for x, label, vals in points if vals]
    for x, label, vals in filled:
        ax.scatter([x] * len(vals), vals, s=14, color="gray", alpha=0.7, zorder=3)
        ax.annotate(label, (x, float(np.mean(vals))), textcoords="offset points", xytext=(4, 6), fontsize=7)
    xs = np.array([x for x, _, _ in filled])
    means = np.array([np.mean(v) for _, _, v in filled])
    stds = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for _, _, v in filled])
    n = sorted({len(v) for _, _, v in filled})
    ax.plot(xs, means, color="tab:blue", marker="o", label=f"mean over seeds ({'/'.join(map(str, n))} per arm)")
    ax.fill_between(xs, means - stds, means + stds, color="tab:blue", alpha=0.15, linewidth=0, label="±1 std")
    ax.scatter([], [], s=14, color="gray", label="one seed")
    setting = plot.fields["x"].get("setting") if isinstance(plot.fields["x"], dict) else None
    ax.set_xlabel(plot.fields.get("xlabel") or setting or "setting")
    ax.set_ylabel(plot.fields.get("ylabel") or ylabel)
    title = plot.fields.get("title") or f"{ylabel} against {ax.get_xlabel()}"
    return _finish(fig, ax, title, 3)


def _loglog(plot: Plot, arms: dict[str, str], groups: dict[str, list[Run]]) -> bytes:
    tag, theory = plot.fields["tag"], plot.fields.get("theory")
    window = tuple(plot.fields["steps"]) if plot.fields.get("steps") else None
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    curves = {arm: aligned(groups.get(arm, []), tag) for arm in arms}
    top = max((float(np.max(t)) for _, t, _ in curves.values() if t.size), default=1.0)
    floor = top * LOG_FLOOR if top > 0 else LOG_FLOOR
    theory_drawn = False
    for color, (arm, label) in zip(_colors(len(arms)), arms.items(), strict=True):
        steps, table, _ = curves[arm]
        if not len(steps):
            continue
        mean = table.mean(axis=0)
        ok = (steps > 0) & (mean > floor)
        fit_steps, fit_mean = (steps, mean) if window is None else (steps[(steps >= window[0]) & (steps <= window[1])],
                                                                    mean[(steps >= window[0]) & (steps <= window[1])])
        slope = loglog_fit(fit_steps, fit_mean)[0] if ok.any() else float("nan")
        text = f"{label}: exponent {slope:.2f} (fit to the seed mean)" if math.isfinite(slope) else f"{label}: ≈ 0"
        ax.plot(steps[ok], mean[ok], color=color, label=text, linewidth=2.4, alpha=0.8)
        if table.shape[0] > 1 and ok.any():
            ax.fill_between(steps[ok], np.maximum(table.min(axis=0)[ok], floor), table.max(axis=0)[ok], color=color,
                            alpha=0.18, linewidth=0)
        if theory:
            t_steps, t_table, _ = aligned(groups.get(arm, []), theory)
            if len(t_steps):
                t_mean = t_table.mean(axis=0)
                t_ok = (t_steps > 0) & (t_mean > floor)
                ax.plot(t_steps[t_ok], t_mean[t_ok], color="black", linestyle="--", linewidth=1.0, zorder=5,
                        label=None if theory_drawn else f"theory ({theory})")
                theory_drawn = theory_drawn or bool(t_ok.any())
    if window is not None:
        ax.axvspan(window[0], window[1], color="grey", alpha=0.08, label=f"fit window [{window[0]}, {window[1]}]")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"{STEP_LABEL}, log scale")
    ax.set_ylabel(f"{tag}, log scale")
    title = plot.fields.get("title") or f"{tag} vs step (log-log)"
    return _finish(fig, ax, f"{title}: mean over seeds, band min–max", len(arms) + 2)


def render_plot(plot: Plot, arms: dict[str, str], groups: dict[str, list[Run]], tables: list[FilledTable]) -> bytes:
    """The PNG bytes of one plot.

    Args:
        plot: the plot's spec entry.
        arms: arm -> legend label, in order.
        groups: arm -> reported runs.
        tables: the filled tables (``dose`` plots read a column's per-seed values from them).
    """
    if plot.kind == "lines":
        return _lines(plot, arms, groups)
    if plot.kind == "dual":
        return _dual(plot, arms, groups)
    if plot.kind == "dose":
        return _dose(plot, arms, groups, tables)
    return _loglog(plot, arms, groups)
