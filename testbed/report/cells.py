"""One table cell from one arm's runs, for each column kind; values are combined only at the same step.

A fixed-step cell takes, from each seed, the value logged at exactly that step; a seed without it is missing (the
cell's n drops), never replaced by an earlier value. A ``last`` cell takes each seed's last value and records the
steps, so a cell whose seeds end at different steps can be marked. Window kinds (count, area, exponent, Spearman)
use each seed's logged steps inside the window and record whether the seeds' step sets agree. A seed whose value
is NaN or infinite (a run logged before the testbed refused such values, or by another logger) is left out like a
missing one, and the cell's note names it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from testbed.report.runs import Run
from testbed.report.spec import Column
from testbed.report.stats import LOG_FLOOR, area, loglog_fit, mean_std, spearman, t_interval, time_average

__all__ = ["Cell", "compute_cell", "series_in", "arm_peak"]

_NAN = float("nan")


@dataclass
class Cell:
    """The numbers behind one cell (formatting lives in ``testbed.report.tables``).

    Attributes:
        kind: the column kind.
        seeds: the seeds of the arm's reported runs (the n a full cell has).
        values: seed -> the per-seed number (value, area, fit, run-steps above; absent if the seed lacks it).
        steps: seed -> the step a value came from (``[first, last, count]`` of the steps a window used).
        step: the one step every value came from, when there is one.
        mixed: the seeds' values come from different steps (or step sets): the cell is marked.
        logged: some run of the arm logged the column's tag(s) at all.
    """

    kind: str
    seeds: list[int]
    values: dict[int, float] = field(default_factory=dict)
    steps: dict[int, Any] = field(default_factory=dict)
    step: int | None = None
    mixed: bool = False
    logged: bool = False
    mean: float = _NAN
    std: float = _NAN
    low: float = _NAN
    high: float = _NAN
    count: int | None = None
    total: int | None = None
    relative: float | None = None
    reference_step: int | None = None
    rho: float | None = None
    note: str | None = None
    pairs: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []), repr=False)

    @property
    def n(self) -> int:
        return len(self.values)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("pairs")
        out["n"], out["n_seeds"] = self.n, len(self.seeds)
        return out


def series_in(run: Run, tag: str, window: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values) of ``tag`` in ``run`` within the window; None if the run never logged the tag."""
    series = run.scalars.get(tag)
    if series is None or len(series[0]) == 0:
        return None
    steps, values = series
    if window is None:
        return steps, values
    keep = (steps >= window[0]) & (steps <= window[1])
    return steps[keep], values[keep]


def arm_peak(runs: list[Run], tag: str, window: tuple[int, int] | None) -> float:
    """The largest value of ``tag`` over the runs (in the window); nan if none."""
    peaks = [float(np.max(s[1])) for r in runs if (s := series_in(r, tag, window)) is not None and len(s[1])]
    return max(peaks, default=_NAN)


def _non_finite_note(cell: Cell, seeds: list[int]) -> None:
    if seeds:
        cell.note = f"seed(s) {sorted(seeds)} logged a non-finite value there, left out"


def _at_step(cell: Cell, runs: list[Run], tag: str, step: int | str) -> Cell:
    non_finite = []
    for run in runs:
        series = series_in(run, tag, None)
        if series is None:
            continue
        cell.logged = True
        steps, values = series
        idx = len(steps) - 1 if step == "last" else int(np.searchsorted(steps, step))
        if idx < len(steps) and (step == "last" or steps[idx] == step):
            if not math.isfinite(float(values[idx])):
                non_finite.append(run.seed)
                continue
            cell.values[run.seed], cell.steps[run.seed] = float(values[idx]), int(steps[idx])
    _non_finite_note(cell, non_finite)
    distinct = set(cell.steps.values())
    cell.mixed = len(distinct) > 1
    cell.step = distinct.pop() if len(distinct) == 1 else (step if isinstance(step, int) else None)
    return cell


def _summarise(cell: Cell, interval: bool) -> Cell:
    cell.mean, cell.std = mean_std(list(cell.values.values()))
    if interval:
        cell.low, cell.high = t_interval(list(cell.values.values()))
    return cell


def _windowed(cell: Cell, runs: list[Run], tag: str, window: tuple[int, int] | None, reduce: Any) -> Cell:
    """Per seed, ``reduce(steps, values)`` over the window; mixed when the seeds' step sets differ."""
    step_sets, non_finite = set(), []
    for run in runs:
        series = series_in(run, tag, window)
        if series is None:
            continue
        cell.logged = True
        steps, values = series
        if len(steps) == 0:
            continue
        step_sets.add(tuple(steps.tolist()))
        cell.steps[run.seed] = [int(steps[0]), int(steps[-1]), len(steps)]
        if not np.isfinite(values).all():
            non_finite.append(run.seed)
            continue
        result = reduce(steps, values)
        if result is not None and math.isfinite(result):
            cell.values[run.seed] = float(result)
    _non_finite_note(cell, non_finite)
    cell.mixed = len(step_sets) > 1
    return cell


def _count(cell: Cell, col: Column, runs: list[Run]) -> Cell:
    indicator_ok = True
    for run in runs:
        series = series_in(run, col.tag, col.window)
        if series is None:
            continue
        cell.logged = True
        steps, values = series
        if isinstance(col.above, str):
            other = series_in(run, col.above, col.window)
            if other is None:
                continue
            _, mine, theirs = np.intersect1d(steps, other[0], return_indices=True)
            above = values[mine] > other[1][theirs]
        elif col.indicator:
            indicator_ok &= bool(np.isin(values, (0.0, 1.0)).all())
            above = values > 0.5
        else:
            above = values > col.above
        cell.values[run.seed], cell.steps[run.seed] = int(above.sum()), int(above.size)
    cell.count, cell.total = int(sum(cell.values.values())), int(sum(cell.steps.values()))
    if not indicator_ok:
        cell.note = f"{col.tag} holds values other than 0 and 1; counted values > 0.5"
    return cell


def _spearman(cell: Cell, col: Column, runs: list[Run]) -> Cell:
    for run in runs:
        xs, ys = series_in(run, col.x, col.window), series_in(run, col.y, col.window)
        if xs is None or ys is None:
            continue
        cell.logged = True
        _, ix, iy = np.intersect1d(xs[0], ys[0], return_indices=True)
        if len(ix):
            cell.values[run.seed], cell.steps[run.seed] = float(len(ix)), xs[0][ix].tolist()
            cell.pairs[0].extend(xs[1][ix].tolist())
            cell.pairs[1].extend(ys[1][iy].tolist())
    cell.count = len(cell.pairs[0])
    cell.rho = spearman(*cell.pairs)
    if cell.count and not math.isfinite(cell.rho):
        cell.note = "fewer than 3 pairs" if cell.count < 3 else "one side is constant"
    return cell


def compute_cell(col: Column, runs: list[Run], reference: list[Run] | None = None, top: float = _NAN) -> Cell:
    """The cell of column ``col`` for one arm.

    Args:
        col: the column.
        runs: the arm's reported runs.
        reference: the reference arm's runs (``cost`` columns).
        top: the largest value of the tag over the table's arms (``exponent`` columns: an arm far below it is at
            round-off and gets no fit).
    """
    cell = Cell(col.kind, sorted(r.seed for r in runs))
    if col.kind == "value":
        return _summarise(_at_step(cell, runs, col.tag, col.step), col.interval)
    if col.kind == "count":
        return _count(cell, col, runs)
    if col.kind == "spearman":
        return _spearman(cell, col, runs)
    if col.kind == "area":
        return _summarise(_windowed(cell, runs, col.tag, col.window, time_average if col.average else area),
                          col.interval)
    if col.kind == "exponent":
        part = 0 if col.show == "exponent" else 1
        cell = _summarise(_windowed(cell, runs, col.tag, col.window, lambda s, v: loglog_fit(s, v)[part]), True)
        peak = arm_peak(runs, col.tag, col.window)
        if math.isfinite(peak) and peak <= 0:
            cell.note = f"no positive value in the window (peak {peak:.2g}): no power law"
        elif math.isfinite(top) and top > 0 and math.isfinite(peak) and peak <= LOG_FLOOR * top:
            cell.note = f"round-off: peak {peak:.2g} <= {LOG_FLOOR:g} x the largest over arms; no power law"
        return cell
    # cost: the arm's mean relative to the reference arm's mean, each at the column's step
    cell = _summarise(_at_step(cell, runs, col.tag, col.step), False)
    ref = _summarise(_at_step(Cell("value", []), reference or [], col.tag, col.step), False)
    cell.reference_step = ref.step
    cell.mixed = cell.mixed or ref.mixed or (cell.step is not None and ref.step is not None and cell.step != ref.step)
    if math.isfinite(cell.mean) and math.isfinite(ref.mean) and ref.mean != 0:
        cell.relative = cell.mean / ref.mean - 1.0
    return cell
