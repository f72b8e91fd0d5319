"""The report's documents: Markdown (tables, notes, plots, problems), CSV (one line per cell) and JSON (everything)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from testbed.report.runs import Run
from testbed.report.spec import Column
from testbed.report.tables import FilledTable, cell_text, header

__all__ = ["measure", "summary_rows", "table_payload", "to_markdown", "to_csv", "to_json"]

_CSV_FIELDS = ["table", "arm", "label", "column", "kind", "metric", "tag", "step", "n", "n_seeds", "mean", "std", "low",
               "high", "count", "total", "relative", "rho", "mixed", "text"]


def _md_minus(text: str) -> str:
    return re.sub(r"(?<![\w.])-(?=\d)", "−", text)


def measure(col: Column) -> str:
    """What a column's cells measure, in a word: the tag itself for values, else ``kind(tag)``."""
    if col.kind == "value":
        return col.tag
    if col.kind == "count":
        return f"{col.tag} > {col.above if col.above is not None else 0.5}"
    if col.kind == "spearman":
        return f"spearman({col.x}, {col.y})"
    return f"{col.show if col.kind == 'exponent' else col.kind}({col.tag})"


def summary_rows(tables: list[FilledTable]) -> list[dict[str, Any]]:
    """One flat record per cell (the CSV's lines; also in the JSON as ``summary``)."""
    out = []
    for t_index, filled in enumerate(tables):
        name = filled.table.title or f"table {t_index + 1}"
        for col in filled.table.columns:
            for row in filled.rows:
                cell = row.cells[col.label]
                record = cell.to_dict()
                is_ref = row.arm == (col.reference or filled.table.reference)
                record.update(table=name, arm=row.arm, label=row.label, column=header(col), metric=measure(col),
                              tag=col.tag, text=cell_text(col, cell, is_ref))
                out.append(record)
    return out


def _seeds_line(filled: FilledTable) -> str:
    sets = {tuple(row.seeds) for row in filled.rows}
    if len(sets) == 1:
        return f"Seeds: {', '.join(map(str, next(iter(sets)))) or 'none'} in every arm."
    per_arm = (f"{row.label}: {', '.join(map(str, row.seeds)) or 'none'}" for row in filled.rows)
    return "Seeds: " + "; ".join(per_arm) + "."


def _table_md(filled: FilledTable) -> list[str]:
    cols = filled.table.columns
    lines = [f"## {filled.table.title}", ""] if filled.table.title else []
    lines += ["| arm | " + " | ".join(header(c) for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for row in filled.rows:
        cells = [cell_text(c, row.cells[c.label], row.arm == (c.reference or filled.table.reference)) for c in cols]
        lines.append(f"| {row.label} | " + " | ".join(_md_minus(t) for t in cells) + " |")
    lines += [""] + [f"- {note}" for note in [_seeds_line(filled)] + filled.notes] + [""]
    return lines


def to_markdown(
    title: str | None,
    root: Path,
    source: str,
    runs: list[Run],
    tables: list[FilledTable],
    plots: list[Path],
    out_dir: Path,
    problems: list[str],
) -> str:
    """The whole ``report.md``."""
    lines = [f"# {title or f'Report: {root.name}'}", "",
             f"Runs: `{root}` ({len(runs)} runs); spec: {source}. Made by `python -m testbed report`.", ""]
    for filled in tables:
        lines += _table_md(filled)
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plots] + [""]
    if problems:
        lines += ["## Problems", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(lines)


def to_csv(summary: list[dict[str, Any]]) -> str:
    """``report.csv``: one line per cell, full-precision numbers."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for record in summary:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in record.items()})
    return buf.getvalue()


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_json(payload: dict[str, Any]) -> str:
    """``report.json`` (non-finite numbers become null)."""
    return json.dumps(_json_safe(payload), indent=2, ensure_ascii=False)


def table_payload(filled: FilledTable) -> dict[str, Any]:
    """One filled table as plain data."""
    cols = filled.table.columns
    rows = [{"arm": row.arm, "label": row.label, "seeds": row.seeds, "unfinished": row.unfinished,
             "cells": {header(c): {**row.cells[c.label].to_dict(),
                                   "text": cell_text(c, row.cells[c.label],
                                                     row.arm == (c.reference or filled.table.reference))}
                       for c in cols}}
            for row in filled.rows]
    return {"title": filled.table.title, "columns": [header(c) for c in cols], "rows": rows, "notes": filled.notes,
            "tests": filled.tests, "pooled": filled.pooled}

