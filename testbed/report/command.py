"""``python -m testbed report RUN_DIR [--spec report.yaml]``: read the runs, fill the spec's tables, draw its plots,
and write everything at the end (so bad input leaves nothing half-written)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError
from testbed.io import atomic_write_bytes, atomic_write_text
from testbed.report.generic import generic_spec
from testbed.report.runs import Run, RunSet, compile_pattern, discover_runs, natural_key
from testbed.report.spec import GENERATED, Spec, Table, check_tags, load_spec
from testbed.report.tables import FilledTable, fill_table
from testbed.report.writers import summary_rows, table_payload, to_csv, to_json, to_markdown
from testbed.study import layout

__all__ = ["build_report", "report_command"]



def _listed(value: Any) -> list | None:
    return None if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _out_dir(root: Path, out: str | Path | None) -> Path:
    out_dir = Path(out) if out is not None else root / "report"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} names an existing file; give a folder")
    return out_dir


def _select(table: Table, keep: re.Pattern | None, known: set[str], source: str) -> Table:
    named = list(table.rows) + [a for a in [table.reference] + [c.reference for c in table.columns] if a]
    absent = [arm for arm in dict.fromkeys(named) if arm not in known]
    if absent:
        raise ConfigError(f"report spec {source}: arm(s) {absent} have no runs; arms: {sorted(known, key=natural_key)}")
    return replace(table, rows={a: label for a, label in table.rows.items() if keep is None or keep.search(a)})


def _keep_tags(spec: Spec, patterns: list[re.Pattern]) -> Spec:
    """Only the columns and plots with a tag that ``--tags`` selects."""
    def wanted(tags: list[str]) -> bool:
        return any(p.search(t) for p in patterns for t in tags)

    tables = [replace(t, columns=[c for c in t.columns if wanted(c.tags())],
                      tests=[x for x in t.tests if any(c.label == x.column and wanted(c.tags()) for c in t.columns)])
              for t in spec.tables]
    if not any(t.columns for t in tables):
        raise ConfigError(f"--tags selects no column of report spec {spec.source}")
    return Spec(spec.title, [t for t in tables if t.columns], [p for p in spec.plots if wanted(p.tags())],
                spec.source)


def _spec(root: Path, run_set: RunSet, spec: str | None, generic: dict[str, Any], keep: re.Pattern | None,
          tag_patterns: list[re.Pattern], include_shared: bool) -> Spec:
    known = {r.arm for r in run_set.runs + run_set.unfinished}
    explicit = any(generic[k] for k in ("steps", "thresholds", "loglog", "fit_window"))
    if spec is not None and explicit:
        raise ConfigError("--steps, --threshold, --loglog and --fit_window make a table without a spec; "
                          "with --spec, put them in the spec")
    path = Path(spec) if spec is not None else layout.report_spec_file(root)
    if spec is not None or (path.is_file() and not explicit):
        loaded = load_spec(path)
        loaded.tables = [_select(t, keep, known, loaded.source) for t in loaded.tables]
        absent = [a for p in loaded.plots for a in p.rows or () if a not in known]
        if absent:
            raise ConfigError(f"report spec {loaded.source}: plot arm(s) {absent} have no runs; "
                              f"arms: {sorted(known, key=natural_key)}")
        if not any(t.rows for t in loaded.tables):
            raise ConfigError(f"no arm of report spec {loaded.source} matches --arms {keep.pattern!r}")
        return _keep_tags(loaded, tag_patterns) if tag_patterns else loaded
    arms = sorted({r.arm for r in run_set.runs if (include_shared or not r.key.shared)
                   and (keep is None or keep.search(r.arm))}, key=natural_key)
    if not arms:
        what = f" matching --arms {keep.pattern!r}" if keep is not None else ""
        raise ConfigError(f"no arms{what} under {root} (shared phases need --include_shared true); "
                          f"arms: {sorted(known, key=natural_key)}")
    logged = sorted({t for r in run_set.runs if r.arm in arms for t in r.scalars})
    return generic_spec(arms, logged, tag_patterns, generic["steps"], generic["thresholds"], generic["loglog"],
                        generic["theory_tag"], generic["fit_window"])


def _arms_used(spec: Spec) -> list[str]:
    refs = [c.reference or t.reference for t in spec.tables for c in t.columns if c.kind == "cost"]
    arms = [a for t in spec.tables for a in t.rows] + [a for a in refs if a]
    return list(dict.fromkeys(arms + [a for p in spec.plots for a in (p.rows or ())]))


def build_report(
    run_dir: str | Path,
    spec: str | Path | None = None,
    steps: list[int] | None = None,
    threshold: list[str] | None = None,
    loglog: list[str] | None = None,
    tags: list[str] | None = None,
    arms: str | None = None,
    include_shared: bool = False,
    include_unfinished: bool = False,
    theory_tag: str = "curvature/series_pred",
    fit_window: tuple[int, int] | None = None,
    out: str | Path | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Compute and write the report (arguments as in :func:`report_command`); returns the JSON payload."""
    root = Path(run_dir)
    keep = compile_pattern("--arms", arms)
    tag_patterns = [compile_pattern("--tags", t) for t in tags or []]
    out_dir = _out_dir(root, out)
    if spec is not None:
        load_spec(spec)  # a broken spec is named before the runs are read
    run_set = discover_runs(root, include_unfinished=include_unfinished)
    generic = {"steps": steps, "thresholds": threshold or [], "loglog": loglog or [], "theory_tag": theory_tag,
               "fit_window": tuple(fit_window) if fit_window else None}
    the_spec = _spec(root, run_set, None if spec is None else str(spec), generic, keep, tag_patterns, include_shared)
    groups: dict[str, list[Run]] = {arm: [] for arm in _arms_used(the_spec)}
    for run in run_set.runs:
        if run.arm in groups:
            groups[run.arm].append(run)
    check_tags(the_spec, sorted({t for runs in groups.values() for r in runs for t in r.scalars}))
    filled = [fill_table(t, groups) for t in the_spec.tables if t.rows]
    pngs = _render(the_spec, filled, groups, keep, out_dir) if plots else {}
    reported = [r for runs in groups.values() for r in sorted(runs, key=lambda r: r.seed)]
    problems = [p for r in reported for p in r.problems]
    left_out = [r for r in run_set.unfinished if r.arm in groups and not include_unfinished]
    if left_out:
        problems.append(f"left out {len(left_out)} unfinished run(s) (no DONE.json; --include_unfinished true "
                        f"includes and marks them): " + ", ".join(f"{r.arm} seed {r.seed}" for r in left_out))
    summary = summary_rows(filled)
    payload = {"run_dir": str(root), "spec": the_spec.source, "study": run_set.study,
               "runs": [{"arm": r.arm, "seed": r.seed, "path": str(r.path), "finished": r.finished} for r in reported],
               "unfinished_left_out": [str(r.path) for r in left_out], "problems": problems,
               "tables": [table_payload(f) for f in filled], "summary": summary, "plots": [str(p) for p in pngs]}
    for path, data in pngs.items():
        atomic_write_bytes(path, lambda fh, data=data: fh.write(data))
    atomic_write_text(out_dir / "report.json", to_json(payload))
    atomic_write_text(out_dir / "report.csv", to_csv(summary))
    markdown = to_markdown(the_spec.title, root, the_spec.source, reported, filled, list(pngs), out_dir, problems)
    atomic_write_text(out_dir / "report.md", markdown)
    payload["markdown"] = markdown
    return payload


def _render(spec: Spec, filled: list[FilledTable], groups: dict[str, list[Run]], keep: re.Pattern | None,
            out_dir: Path) -> dict[Path, bytes]:
    from testbed.report.plots import render_plot  # matplotlib only when plots are wanted

    labels = {a: label for t in spec.tables for a, label in reversed(list(t.rows.items()))}
    first = list(spec.tables[0].rows) if spec.tables else []
    pngs = {}
    for plot in spec.plots:
        own = [t for t in spec.tables if plot.kind == "dose" and t.title == plot.fields.get("table")]
        default = list(own[0].rows) if own else first  # a dose plot draws its own table's rows
        arms = [a for a in (plot.rows or default) if keep is None or keep.search(a)]
        pngs[out_dir / "plots" / f"{plot.name}.png"] = render_plot(plot, {a: labels.get(a, a) for a in arms}, groups,
                                                                   filled)
    return pngs


def report_command(
    run_dir: str,
    spec: str | None = None,
    include_unfinished: bool = False,
    arms: str | None = None,
    tags: list[str] | str | None = None,
    out: str | None = None,
    plots: bool = True,
    steps: list[int] | int | None = None,
    threshold: list[str] | str | None = None,
    loglog: list[str] | str | None = None,
    fit_window: tuple[int, int] | None = None,
    theory_tag: str = "curvature/series_pred",
    include_shared: bool = False,
) -> None:
    """Tables (Markdown, CSV, JSON) and PNG plots of a study's runs, from a report spec or from the options below.

    Every cell says which step its numbers come from, and combines only values logged at that same step: a seed
    without the step is missing (``n=k/m``), seeds whose last steps differ are marked ``†``. In a study (a folder
    with ``DONE.json`` files) unfinished runs are left out unless asked for; a damaged event file is named in the
    report. A list option takes one value, a list (``--steps [100,200]``) or repeats with ``+=``.

    Args:
        run_dir: a study folder (``<runs_dir>/<name>``) or any folder of TensorBoard runs.
        spec: the report spec (YAML: rows, columns, plots); default ``RUN_DIR/report.yaml`` if it exists, else one
            table per tag built from the options below.
        include_unfinished: also report runs without ``DONE.json`` (marked ``‡``).
        arms: regular expression selecting arms (rows and plot lines).
        tags: regular expressions selecting tags (without a spec: the tables and plots; with one: its columns and
            plots that read a selected tag).
        out: output folder (default ``RUN_DIR/report``).
        plots: write the PNG plots.
        steps: without a spec, the steps to tabulate each tag at (default: each run's last step).
        threshold: without a spec, ``TAG=VALUE`` (VALUE a number or another tag): counts run-steps above it.
        loglog: without a spec, tags to fit on log-log axes (exponent and coefficient per arm, theory beside).
        fit_window: without a spec, ``[first, last]`` step of the log-log fits (default: all steps).
        theory_tag: the tag holding theory's prediction for the log-log tags.
        include_shared: without a spec, also report the shared phases (``_shared/<phase>``).
    """
    payload = build_report(run_dir, spec, _listed(steps), _listed(threshold), _listed(loglog), _listed(tags), arms,
                           include_shared, include_unfinished, theory_tag, fit_window, out, plots)
    out_dir = Path(out) if out is not None else Path(run_dir) / "report"
    if payload["spec"] != GENERATED:
        print(payload["markdown"])
    print(f"report: {len(payload['runs'])} run(s), {len(payload['tables'])} table(s), {len(payload['plots'])} "
          f"plot(s) -> {out_dir}/report.md (.csv, .json)")
    for problem in payload["problems"]:
        print(f"  problem: {problem}")
