"""The report spec: a small YAML file naming a study's table rows, columns and plots.

::

    title: Gravity toy, 3 seeds
    tags: {cos: reversion/cos_drift_vrev/blocks.1.hidden}    # short names (optional)
    rows: {plain: plain, blocked: update projection}          # arm: label, in table order
    reference: plain                                          # for `cost` columns
    columns:
      - {kind: value, tag: cos, step: 20}                     # mean ± std over seeds at step 20 (or `last`)
      - {kind: count, tag: cos, above: 0.288}                 # run-steps above a number, a tag, or `indicator: true`
      - {kind: cost, tag: val/loss, step: last}               # mean / reference mean − 1, in %
      - {kind: area, tag: reversion/drift_along/blocks.1.hidden}
      - {kind: area, tag: align/harmfulness, average: true}     # area / span of steps: the mean over the run
      - {kind: exponent, tag: curvature/delta_u, steps: [20, 200]}  # log-log fit, 95% t-interval over seeds
      - {kind: spearman, x: cos, y: align/harmfulness}        # per arm; pooled over arms in the notes
    tests: [{column: cos@20, order: [blocked, plain]}]         # one-sided ordering test on per-seed values
    tests: [{kind: difference, column: cos@20, order: [random, plain]}]   # two-sided test of a difference
    tables: [{title: ..., rows: ..., columns: ...}]            # further tables (same keys)
    plots:
      - {kind: lines, tag: cos, reference: [{value: 0.288, label: null p99}]}
      - {kind: dual, left: cos, right: align/harmfulness}
      - {kind: dose, column: cos@20, x: {setting: trainer.callbacks.1.init_args.strength}}
      - {kind: loglog, tag: curvature/delta_u, theory: curvature/series_pred, steps: [20, 200]}

Value-like columns take ``percent`` (×100, "%"), ``unit``, ``digits`` (decimals) or ``sig`` (significant digits),
``seeds`` (list the per-seed values) and ``interval`` (95% t-interval instead of ± std). Every problem is a
``ConfigError`` naming the file and the entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError
from testbed.io import load_yaml

__all__ = ["GENERATED", "PER_SEED_KINDS", "COLUMN_KINDS", "PLOT_KINDS", "Column", "Reference", "OrderingTest",
           "Table", "Plot", "Spec", "load_spec", "parse_spec", "check_tags"]

_FORMAT = {"label", "percent", "unit", "digits", "sig"}
# kind -> (required fields, optional fields)
COLUMN_KINDS: dict[str, tuple[set[str], set[str]]] = {
    "value": ({"tag", "step"}, _FORMAT | {"seeds", "interval"}),
    "count": ({"tag"}, {"label", "above", "indicator", "steps"}),
    "cost": ({"tag", "step"}, {"label", "reference", "digits", "sig"}),
    "area": ({"tag"}, _FORMAT | {"steps", "seeds", "interval", "average"}),
    "exponent": ({"tag"}, {"label", "digits", "sig", "steps", "show", "seeds"}),
    "spearman": ({"x", "y"}, {"label", "digits", "sig", "steps"}),
}
_PLOT_COMMON = {"rows", "title", "file"}
PLOT_KINDS: dict[str, tuple[set[str], set[str]]] = {
    "lines": ({"tag"}, _PLOT_COMMON | {"reference", "percent", "ylabel", "steps"}),
    "dual": ({"left", "right"}, _PLOT_COMMON | {"left_percent", "right_percent", "left_label", "right_label"}),
    "dose": ({"column", "x"}, _PLOT_COMMON | {"table", "xlabel", "ylabel"}),
    "loglog": ({"tag"}, _PLOT_COMMON | {"theory", "steps"}),
}
GENERATED = "(generated from the command-line options)"
PER_SEED_KINDS = ("value", "area", "exponent")  # columns with one number per seed: ordering tests, dose plots
_TABLE_KEYS = {"title", "rows", "reference", "columns", "tests", "notes"}
_TOP_KEYS = _TABLE_KEYS | {"tags", "tables", "plots"}


@dataclass(frozen=True)
class Column:
    """One table column; which fields matter depends on ``kind`` (see the module docstring)."""

    kind: str
    label: str
    tag: str | None = None
    step: int | str | None = None
    window: tuple[int, int] | None = None
    above: float | str | None = None
    indicator: bool = False
    x: str | None = None
    y: str | None = None
    reference: str | None = None
    show: str = "exponent"
    percent: bool = False
    unit: str = ""
    digits: int | None = None
    sig: int | None = None
    seeds: bool = False
    interval: bool = False
    average: bool = False

    def tags(self) -> list[str]:
        found = [self.tag, self.x, self.y, self.above if isinstance(self.above, str) else None]
        return [t for t in found if t]


@dataclass(frozen=True)
class Reference:
    """A horizontal line (a number) or band (a tag's values) drawn on a plot."""

    label: str
    value: float | None = None
    tag: str | None = None


@dataclass(frozen=True)
class OrderingTest:
    """``ordering``: H1 the column's per-seed values increase along ``order`` (arms); ``difference``: H1 the two arms
    of ``order`` differ (two-sided)."""

    column: str
    order: tuple[str, ...]
    kind: str = "ordering"


@dataclass
class Table:
    title: str | None
    rows: dict[str, str]
    columns: list[Column]
    reference: str | None = None
    tests: list[OrderingTest] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Plot:
    kind: str
    name: str
    fields: dict[str, Any]
    rows: tuple[str, ...] | None = None
    references: tuple[Reference, ...] = ()

    def tags(self) -> list[str]:
        keys = ("tag", "left", "right", "theory")
        return [self.fields[k] for k in keys if self.fields.get(k)] + [r.tag for r in self.references if r.tag]


@dataclass
class Spec:
    title: str | None
    tables: list[Table]
    plots: list[Plot]
    source: str = GENERATED

    def tags(self) -> list[str]:
        found = [t for table in self.tables for c in table.columns for t in c.tags()]
        return list(dict.fromkeys(found + [t for p in self.plots for t in p.tags()]))


class _Reader:
    """Checks one spec file's entries; every complaint names the file and the entry."""

    def __init__(self, source: str, aliases: dict[str, str]) -> None:
        self.source, self.aliases = source, aliases

    def fail(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"report spec {self.source}: {where}: {problem}")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {value!r}")
        return value

    def fields(self, entry: Any, where: str, kinds: dict[str, tuple[set[str], set[str]]], what: str) -> dict:
        entry = self.mapping(entry, where)
        kind = entry.get("kind")
        if kind not in kinds:
            raise self.fail(where, f"unknown {what} kind {kind!r}; kinds: {', '.join(kinds)}")
        required, optional = kinds[kind]
        missing, unknown = required - set(entry), set(entry) - required - optional - {"kind"}
        if missing or unknown:
            problem = f"missing {sorted(missing)}" if missing else f"unknown field(s) {sorted(unknown)}"
            raise self.fail(where, f"{kind} {what}: {problem}; fields: {sorted(required | optional)}")
        return entry

    def tag(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"a tag must be a non-empty string, got {value!r}")
        return self.aliases.get(value, value)

    def step(self, value: Any, where: str) -> int | str:
        if value == "last" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise self.fail(where, f"step must be a non-negative integer or 'last', got {value!r}")

    def window(self, value: Any, where: str) -> tuple[int, int] | None:
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        if value is not None and not (ok and value[0] <= value[1]):
            raise self.fail(where, f"steps must be [first, last] with 0 <= first <= last, got {value!r}")
        return None if value is None else (int(value[0]), int(value[1]))

    def number(self, value: Any, where: str, low: int = 0) -> int | None:
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise self.fail(where, f"expected an integer >= {low}, got {value!r}")
        return value

    def rows(self, value: Any, where: str) -> dict[str, str]:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return {v: v for v in value}
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            return {k: str(v if v is not None else k) for k, v in value.items()}
        raise self.fail(where, f"rows must be a mapping arm: label or a list of arms, got {value!r}")


def _default_label(kind: str, entry: dict[str, Any], step: Any, above: Any) -> str:
    tag = entry.get("tag")
    if kind == "value":
        return f"{tag}@{step}"
    if kind == "count":
        return f"{tag} > {above}" if above is not None else f"{tag} (count of 1s)"
    if kind == "spearman":
        return f"ρ({entry['x']}, {entry['y']})"
    area = "mean" if entry.get("average") else "area"
    return {"cost": f"{tag} cost", "area": f"{area} of {tag}", "exponent": f"{entry.get('show', 'exponent')} of {tag}"
            }[kind]


def _column(r: _Reader, entry: Any, where: str) -> Column:
    entry = r.fields(entry, where, COLUMN_KINDS, "column")
    kind = entry["kind"]
    tag = r.tag(entry["tag"], where) if "tag" in entry else None
    step = r.step(entry["step"], where) if "step" in entry else None
    above = entry.get("above")
    if kind == "count" and (above is None) == (not entry.get("indicator")):
        raise r.fail(where, "a count column takes exactly one of 'above' (a number or a tag) and 'indicator: true'")
    if isinstance(above, bool) or not (above is None or isinstance(above, (int, float, str))):
        raise r.fail(where, f"'above' must be a number or a tag, got {above!r}")
    above = r.tag(above, where) if isinstance(above, str) else above
    if isinstance(above, float) and not math.isfinite(above):
        raise r.fail(where, f"'above' must be finite, got {above!r}")
    if entry.get("show", "exponent") not in ("exponent", "coefficient"):
        raise r.fail(where, f"show must be 'exponent' or 'coefficient', got {entry['show']!r}")
    if "digits" in entry and "sig" in entry:
        raise r.fail(where, "give 'digits' (decimals) or 'sig' (significant digits), not both")
    x, y = (r.tag(entry[k], where) if k in entry else None for k in ("x", "y"))
    default = _default_label(kind, entry, step, above)
    return Column(kind, str(entry.get("label", default)), tag, step, r.window(entry.get("steps"), where), above,
                  bool(entry.get("indicator", False)), x, y, entry.get("reference"), entry.get("show", "exponent"),
                  bool(entry.get("percent", False)), str(entry.get("unit", "")), r.number(entry.get("digits"), where),
                  r.number(entry.get("sig"), where, 1), bool(entry.get("seeds", False)),
                  bool(entry.get("interval", False)), bool(entry.get("average", False)))


def _table(r: _Reader, entry: dict[str, Any], where: str, rows: Any = None, reference: Any = None) -> Table:
    unknown = set(entry) - _TABLE_KEYS - ({"tags", "tables", "plots"} if where == "top level" else set())
    if unknown:
        raise r.fail(where, f"unknown key(s) {sorted(unknown)}; keys: {sorted(_TOP_KEYS)}")
    columns_in = entry.get("columns")
    if not isinstance(columns_in, list) or not columns_in:
        raise r.fail(where, "'columns' must be a non-empty list")
    columns = [_column(r, c, f"{where}, column {i + 1}") for i, c in enumerate(columns_in)]
    labels = [c.label for c in columns]
    if len(set(labels)) != len(labels):
        raise r.fail(where, f"column labels must differ, got {labels}")
    tests = []
    for i, t in enumerate(entry.get("tests") or []):
        t = r.mapping(t, f"{where}, test {i + 1}")
        order = t.get("order")
        kind = t.get("kind", "ordering")
        if kind not in ("ordering", "difference") or set(t) - {"kind", "column", "order"} or (
                kind == "difference" and not (isinstance(order, list) and len(order) == 2)):
            raise r.fail(f"{where}, test {i + 1}", "a test is {column: LABEL, order: [arm, arm, ...]} (ordering) or "
                         "{kind: difference, column: LABEL, order: [arm, arm]}")
        per_seed = [c.label for c in columns if c.kind in PER_SEED_KINDS]
        if t.get("column") not in per_seed or not (isinstance(order, list) and len(order) >= 2):
            raise r.fail(f"{where}, test {i + 1}", f"needs 'column' (a value, area or exponent column: {per_seed}) "
                         "and 'order' (two or more arms)")
        tests.append(OrderingTest(t["column"], tuple(str(a) for a in order), kind))
    notes = entry.get("notes") or []
    notes = [notes] if isinstance(notes, str) else [str(n) for n in notes]
    ref = entry.get("reference", reference)
    rows_of = r.rows(entry.get("rows", rows), f"{where}, rows")
    for i, test in enumerate(tests):
        if set(test.order) - set(rows_of):
            raise r.fail(f"{where}, test {i + 1}", f"arm(s) {sorted(set(test.order) - set(rows_of))} are not rows")
    if any(c.kind == "cost" and not (c.reference or ref) for c in columns):
        raise r.fail(where, "a cost column needs a reference arm ('reference' on the table or the column)")
    return Table(entry.get("title"), rows_of, columns, ref, tests, notes)


def _plot(r: _Reader, entry: Any, where: str, index: int) -> Plot:
    entry = dict(r.fields(entry, where, PLOT_KINDS, "plot"))
    kind = entry.pop("kind")
    for key in ("tag", "left", "right", "theory"):
        if key in entry:
            entry[key] = r.tag(entry[key], where)
    refs = []
    for i, ref in enumerate(entry.pop("reference", None) or []):
        ref = r.mapping(ref, f"{where}, reference {i + 1}")
        if len({"value", "tag"} & set(ref)) != 1 or set(ref) - {"value", "tag", "label"}:
            raise r.fail(f"{where}, reference {i + 1}", "a reference is {value: NUMBER} or {tag: TAG}, with a label")
        value = ref.get("value")
        if "value" in ref and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise r.fail(f"{where}, reference {i + 1}", f"value must be a number, got {value!r}")
        tag = r.tag(ref["tag"], where) if "tag" in ref else None
        refs.append(Reference(str(ref.get("label", tag or value)), None if value is None else float(value), tag))
    if kind == "dose":
        x = r.mapping(entry["x"], f"{where}, x")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x.values())
        if not (set(x) == {"setting"} and isinstance(x["setting"], str)) and not (x and numbers):
            raise r.fail(f"{where}, x", "x is {setting: dotted.config.path} or a mapping arm: number")
    rows = entry.pop("rows", None)
    if rows is not None:
        rows = tuple(r.rows(rows, f"{where}, rows"))
    subject = entry.get("tag") or entry.get("left") or entry["column"]
    name = str(entry.get("file") or f"{index + 1:02d}_{kind}_{subject}")
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name.removesuffix(".png"))
    return Plot(kind, name, entry, rows, tuple(refs))


def parse_spec(data: Any, source: str) -> Spec:
    """A ``Spec`` from parsed YAML; ``source`` names it in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"report spec {source}: expected a mapping at the top, got {type(data).__name__}")
    aliases = data.get("tags") or {}
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise ConfigError(f"report spec {source}: 'tags' must map short names to tags")
    r = _Reader(source, aliases)
    tables = [replace(_table(r, data, "top level"), title=None)] if "columns" in data else []
    if not tables and set(data) - _TOP_KEYS:
        raise r.fail("top level", f"unknown key(s) {sorted(set(data) - _TOP_KEYS)}; keys: {sorted(_TOP_KEYS)}")
    for i, entry in enumerate(data.get("tables") or []):
        entry = r.mapping(entry, f"table {i + 1}")
        tables.append(_table(r, entry, f"table {i + 1}", data.get("rows"), data.get("reference")))
    if not tables:
        raise ConfigError(f"report spec {source}: no table ('columns' at the top level, or 'tables')")
    plots = [_plot(r, p, f"plot {i + 1}", i) for i, p in enumerate(data.get("plots") or [])]
    return Spec(data.get("title"), tables, plots, source)


def load_spec(path: str | Path) -> Spec:
    """Read and check a report spec file (``testbed.io.load_yaml``: UTF-8, no key given twice)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"report spec not found: {path}")
    return parse_spec(load_yaml(path, "report spec"), str(path))


def check_tags(spec: Spec, logged: list[str]) -> None:
    """Every tag the spec names must be logged by some reported run."""
    missing = [t for t in spec.tags() if t not in set(logged)]
    if missing:
        raise ConfigError(f"report spec {spec.source}: tag(s) {missing} never logged by the reported runs; "
                          f"logged tags: {logged}")
