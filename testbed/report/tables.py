"""A spec table filled from the runs: rows of cells, their text, the ordering tests and the notes under the table.

Cell text says where its numbers come from: a fixed-step column names the step in its header; a ``last`` cell ends
with ``@step``; ``n=k/m`` marks a cell that only k of the arm's m seeds could fill; ``†`` marks values from different
steps (each listed in the notes); ``‡`` marks an arm that includes unfinished runs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from testbed.report.cells import Cell, arm_peak, compute_cell
from testbed.report.runs import Run
from testbed.report.spec import Column, Table
from testbed.report.stats import difference_test, ordering_test, spearman

__all__ = ["Row", "FilledTable", "fill_table", "header", "cell_text"]

MIXED, UNFINISHED = "†", "‡"


@dataclass
class Row:
    arm: str
    label: str
    seeds: list[int]
    unfinished: list[int]
    cells: dict[str, Cell]


@dataclass
class FilledTable:
    table: Table
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    tests: list[dict] = field(default_factory=list)
    pooled: dict[str, dict] = field(default_factory=dict)


def _num(x: float, col: Column, default_digits: int = 3) -> str:
    if not math.isfinite(x):
        return "–"
    if col.sig is not None:
        return f"{x:.{col.sig}g}"
    return f"{x:.{col.digits if col.digits is not None else default_digits}f}"


def _scaled(x: float, col: Column) -> float:
    return x * 100.0 if col.percent else x


def _unit(col: Column) -> str:
    return "%" if col.percent and not col.unit else col.unit


def header(col: Column) -> str:
    """The column header: the label, with the fixed step or window it reads when the label does not say it."""
    if isinstance(col.step, int) and not re.search(rf"@{col.step}(?!\d)", col.label):
        return f"{col.label} @{col.step}"
    if col.window is not None and col.kind != "value":
        return f"{col.label} (steps {col.window[0]}–{col.window[1]})"
    return col.label


def _step_mark(cell: Cell, col: Column) -> str:
    if col.kind in ("value", "cost") and col.step == "last" and cell.steps:
        steps = sorted(set(cell.steps.values()))
        return f" @{steps[0]}" if len(steps) == 1 else f" @{steps[0]}–{steps[-1]}{MIXED}"
    return f" {MIXED}" if cell.mixed else ""


def cell_text(col: Column, cell: Cell, is_reference: bool = False) -> str:
    """The text of one cell (``–`` where there is nothing to show)."""
    if not cell.logged:
        return "–"
    short = f" (n={cell.n}/{len(cell.seeds)})" if cell.n < len(cell.seeds) else ""
    if cell.n == 0:
        return f"–{short}"
    unit = _unit(col)
    if col.kind == "count":
        return f"{cell.count}/{cell.total}{short}"
    if col.kind == "spearman":
        if cell.rho is None or not math.isfinite(cell.rho):
            return f"– ({cell.note}){short}"
        return f"{_num(cell.rho, col)} (n={cell.count}){short}"
    if col.kind == "cost":
        if is_reference:
            return "reference" + _step_mark(cell, col)
        digits = col.digits if col.digits is not None else 1
        rel = "–" if cell.relative is None else f"{100 * cell.relative:+.{digits}f}%"
        return rel + _step_mark(cell, col) + short
    if col.kind == "exponent" and (cell.note or "").startswith("round-off"):
        return "≈ 0 (round-off)"
    mean = _scaled(cell.mean, col)
    if (col.interval or col.kind == "exponent") and math.isfinite(cell.low):
        text = f"{_num(mean, col)}{unit} [{_num(_scaled(cell.low, col), col)}, {_num(_scaled(cell.high, col), col)}]"
    elif math.isfinite(cell.std):
        text = f"{_num(mean, col)}±{_num(_scaled(cell.std, col), col)}{unit}"
    else:
        text = f"{_num(mean, col)}{unit}"
    if col.seeds:
        text += " (" + ", ".join(_num(_scaled(cell.values[s], col), col) for s in sorted(cell.values)) + ")"
    return text + _step_mark(cell, col) + short


def _mixed_note(col: Column, row: Row, cell: Cell, reference: str | None) -> str:
    if col.kind in ("value", "cost"):
        steps = ", ".join(f"seed {s} @{t}" for s, t in sorted(cell.steps.items()))
        ref = f"; reference {reference} @{cell.reference_step}" if col.kind == "cost" else ""
        return f"{MIXED} {header(col)}, {row.label}: values from different steps ({steps}{ref})"
    spans = ", ".join(f"seed {s}: {a}–{b} ({k} steps)" for s, (a, b, k) in sorted(cell.steps.items()))
    return f"{MIXED} {header(col)}, {row.label}: the seeds logged different steps ({spans})"


def _legend(filled: FilledTable) -> list[str]:
    kinds = {c.kind for c in filled.table.columns}
    out = []
    if kinds & {"value", "area", "exponent", "cost"}:
        out.append("Cells: mean±std over seeds (sample std, ddof=1), combining only values logged at the same step; "
                   "`@s` = the step a last-step value comes from; `n=k/m` = only k of the arm's m seeds have it.")
    if "exponent" in kinds or any(c.interval for c in filled.table.columns):
        out.append("[low, high] = 95% Student-t interval for the mean over seeds (scipy.stats.t, n−1 dof).")
    if "exponent" in kinds:
        out.append("Exponent/coefficient: per-seed least-squares fit of log value on log step (value ≈ "
                   "coefficient · step^exponent) over the steps shown.")
    if "count" in kinds:
        out.append("k/n = run-steps above the threshold / run-steps logged, over every seed of the arm.")
    if "area" in kinds:
        out.append("Area: trapezoid rule over each seed's logged steps (numpy.trapezoid); a mean is that area divided "
                   "by the span of the steps.")
    for col in filled.table.columns:
        if col.kind == "cost":
            ref = col.reference or filled.table.reference
            out.append(f"{header(col)}: mean {col.tag} / mean of the reference arm {ref} − 1.")
        if col.kind == "spearman":
            out.append(f"{header(col)}: Spearman ρ over run-steps where both tags are logged at the same step "
                       "(torchmetrics spearman_corrcoef; n = pairs).")
    return out


def _tests(filled: FilledTable, cells_of: dict[str, dict[str, Cell]]) -> None:
    for test in filled.table.tests:
        missing = [a for a in test.order if a not in cells_of]
        if missing:  # rows the --arms filter left out
            filled.notes.append(f"{test.kind.capitalize()} test {', '.join(test.order)} on '{test.column}': not run "
                                f"({missing} not reported).")
            continue
        groups = [list(cells_of[a][test.column].values.values()) for a in test.order]
        if min(len(g) for g in groups) < 2:  # scipy's permutation test needs two values per group
            filled.notes.append(f"{test.kind.capitalize()} test {', '.join(test.order)} on '{test.column}': not run "
                                "(an arm has fewer than two per-seed values).")
            continue
        result = ordering_test(groups) if test.kind == "ordering" else difference_test(*groups)
        filled.tests.append({"column": test.column, "order": list(test.order), "kind": test.kind,
                             "statistic": result.statistic, "pvalue": result.pvalue, "exact": result.exact,
                             "permutations": result.permutations})
        h1 = " < ".join(test.order) if test.kind == "ordering" else " ≠ ".join(test.order)
        filled.notes.append(f"{test.kind.capitalize()} test, H1: {h1} on '{test.column}' (per-seed values): "
                            f"{result.describe()}.")


def fill_table(table: Table, groups: dict[str, list[Run]]) -> FilledTable:
    """Every cell of ``table`` from ``groups`` (arm -> reported runs), with its notes and tests."""
    rows = []
    for arm, label in table.rows.items():
        runs = groups.get(arm, [])
        mark = f" {UNFINISHED}" if any(not r.finished for r in runs) else ""
        rows.append(Row(arm, label + mark, sorted(r.seed for r in runs),
                        sorted(r.seed for r in runs if not r.finished), {}))
    for col in table.columns:
        peaks = [arm_peak(groups.get(a, []), col.tag, col.window) for a in table.rows] if col.kind == "exponent" else []
        top = max((p for p in peaks if math.isfinite(p)), default=float("nan"))
        ref = groups.get(col.reference or table.reference or "", [])
        for row in rows:
            row.cells[col.label] = compute_cell(col, groups.get(row.arm, []), ref, top)
    filled = FilledTable(table, rows, _legend(FilledTable(table, rows)))
    for col in table.columns:
        for row in rows:
            cell = row.cells[col.label]
            if cell.mixed:
                filled.notes.append(_mixed_note(col, row, cell, col.reference or table.reference))
            if cell.note and col.kind != "spearman":
                filled.notes.append(f"{header(col)}, {row.label}: {cell.note}.")
        if col.kind == "spearman":
            xs = [x for row in rows for x in row.cells[col.label].pairs[0]]
            ys = [y for row in rows for y in row.cells[col.label].pairs[1]]
            rho = spearman(xs, ys)
            filled.pooled[col.label] = {"rho": rho, "n": len(xs)}
            shown = f"{rho:.3f}" if math.isfinite(rho) else "– (too few pairs or constant)"
            filled.notes.append(f"{header(col)} pooled over the {len(rows)} arms above: ρ = {shown} (n = {len(xs)} "
                                "run-steps).")
    _tests(filled, {row.arm: row.cells for row in rows})
    if any(row.unfinished for row in rows):
        which = "; ".join(f"{row.arm}: seed(s) {row.unfinished}" for row in rows if row.unfinished)
        filled.notes.append(f"{UNFINISHED} includes unfinished runs (no DONE.json): {which}.")
    filled.notes.extend(table.notes)
    return filled
