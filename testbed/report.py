"""``python -m testbed report RUN_DIR``: a study's TensorBoard logs as a table and figures.

Reads every run under RUN_DIR with TensorBoard's ``EventAccumulator``. Runs are grouped by arm: the path of a
run relative to RUN_DIR without its ``seed=<s>`` part (``plain/seed=0`` → arm ``plain``). Writes, atomically:

* ``report.md`` / ``report.csv`` / ``report.json``: for each arm, metric and chosen step, mean ± sample std
  (ddof=1) over seeds of the last value logged at or before that step (default: each run's last value);
* threshold counts: the number of (run, logged step) pairs whose value exceeds a threshold, which is a number or
  another tag logged at the same step (``--threshold reversion/cos_drift_vrev=reversion/null_p99``);
* log-log fits (``--loglog TAG``): per seed, the least-squares line through (log step, log value) over the fit
  window, so value ≈ coefficient · step^exponent; exponent and coefficient as mean ± std over seeds, beside the
  same fit of the theory tag (``theory/align_loss_pred``) where the runs log it;
* PNGs: each metric against step per arm (mean line, ±1 std band over seeds), and each log-log tag with its
  fitted slope in the legend and theory's prediction as a dashed line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from testbed.errors import ConfigError, TestbedError
from testbed.io import atomic_write_text

# Values this far below the largest over arms are round-off (e.g. an alignment loss theory says is exactly 0).
LOG_FLOOR = 1e-12
SEED_DIR = re.compile(r"^seed=(-?\d+)$")
Series = tuple[np.ndarray, np.ndarray]  # (steps [N] int, values [N] float), sorted by step


@dataclass
class RunLog:
    """The scalars of one run folder."""

    arm: str
    seed: int
    path: Path
    scalars: dict[str, Series] = field(default_factory=dict)


# ---- reading ------------------------------------------------------------------------------------------------


def read_scalars(run_dir: Path) -> dict[str, Series]:
    """All scalar series of one run folder; a step logged twice keeps its latest value."""
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


def _has_scalar_events(path: Path) -> bool:
    from testbed.tb_layout import LAYOUT_SUFFIX

    return any(not f.name.endswith(LAYOUT_SUFFIX) for f in path.glob("events.out.tfevents.*"))


def discover_runs(root: Path, include_shared: bool = False, arms: str | None = None) -> list[RunLog]:
    """Every run folder under ``root`` (``root`` itself if it is one), grouped into arm and seed."""
    if not root.is_dir():
        raise ConfigError(f"run directory not found: {root}")
    folders = sorted({f.parent for f in root.rglob("events.out.tfevents.*") if _has_scalar_events(f.parent)})
    runs = []
    for folder in folders:
        parts = folder.relative_to(root).parts
        seed_parts = [i for i, p in enumerate(parts) if SEED_DIR.match(p)]
        seed = int(SEED_DIR.match(parts[seed_parts[-1]]).group(1)) if seed_parts else 0
        arm = "/".join(p for i, p in enumerate(parts) if i not in seed_parts[-1:]) or root.name
        if arm.startswith("_shared") and not include_shared:
            continue
        if arms is not None and not re.search(arms, arm):
            continue
        runs.append(RunLog(arm, seed, folder))
    if not runs:
        what = "" if arms is None else f" matching --arms {arms!r}"
        raise TestbedError(f"no TensorBoard runs{what} under {root} (shared phases need --include_shared true)")
    for run in runs:
        run.scalars = read_scalars(run.path)
    return runs


def natural_key(name: str) -> list:
    """Sort key that orders numbers by value: ``sharpness=2.5`` before ``sharpness=10``."""
    return [(0, float(part), "") if re.fullmatch(r"\d+(\.\d+)?(e-?\d+)?", part) else (1, 0.0, part)
            for part in re.split(r"(\d+(?:\.\d+)?(?:e-?\d+)?)", name) if part]


def by_arm(runs: list[RunLog]) -> dict[str, list[RunLog]]:
    """Runs grouped by arm (arms in natural order, seeds ascending)."""
    groups: dict[str, list[RunLog]] = defaultdict(list)
    for run in runs:
        groups[run.arm].append(run)
    return {arm: sorted(groups[arm], key=lambda r: r.seed) for arm in sorted(groups, key=natural_key)}


# ---- numbers ------------------------------------------------------------------------------------------------


def value_at(series: Series, step: int | None) -> float | None:
    """The last value logged at or before ``step`` (``None``: the run's last value); None if there is none."""
    steps, values = series
    if step is None:
        return float(values[-1]) if len(values) else None
    idx = int(np.searchsorted(steps, step, side="right")) - 1
    return float(values[idx]) if idx >= 0 else None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else float("nan")


def summary_rows(groups: dict[str, list[RunLog]], tags: list[str], steps: list[int] | None) -> list[dict[str, Any]]:
    rows = []
    for arm, runs in groups.items():
        for tag in tags:
            for step in steps or [None]:
                found = [(r.seed, value_at(r.scalars[tag], step)) for r in runs if tag in r.scalars]
                seeds = [seed for seed, v in found if v is not None]
                values = [v for _, v in found if v is not None]
                if not values:
                    continue
                mean, std = mean_std(values)
                rows.append({"arm": arm, "metric": tag, "step": "last" if step is None else step, "n": len(values),
                             "mean": mean, "std": std, "seeds": seeds, "values": values})
    return rows


def parse_threshold(spec: str) -> tuple[str, float | str]:
    """``TAG=VALUE`` where VALUE is a number or another tag."""
    if "=" not in spec:
        raise ConfigError(f"--threshold expects TAG=VALUE (VALUE a number or a tag), got {spec!r}")
    tag, value = (s.strip() for s in spec.rsplit("=", 1))
    try:
        return tag, float(value)
    except ValueError:
        return tag, value


def threshold_rows(groups: dict[str, list[RunLog]], specs: list[str]) -> list[dict[str, Any]]:
    """Per arm: how many (run, logged step) pairs have ``tag`` > threshold."""
    rows = []
    for spec in specs:
        tag, limit = parse_threshold(spec)
        for arm, runs in groups.items():
            exceed = total = 0
            for run in runs:
                if tag not in run.scalars:
                    continue
                steps, values = run.scalars[tag]
                if isinstance(limit, str):
                    if limit not in run.scalars:
                        continue
                    ref = dict(zip(run.scalars[limit][0].tolist(), run.scalars[limit][1].tolist(), strict=True))
                    pairs = [(v, ref[s]) for s, v in zip(steps.tolist(), values.tolist(), strict=True) if s in ref]
                else:
                    pairs = [(v, limit) for v in values.tolist()]
                exceed += sum(v > lim for v, lim in pairs)
                total += len(pairs)
            if total:
                rows.append({"arm": arm, "metric": tag, "threshold": limit, "exceed": exceed, "total": total,
                             "fraction": exceed / total})
    return rows


def _fit(series: Series, window: tuple[int, int] | None) -> tuple[float, float]:
    """(exponent, coefficient) of value ≈ coefficient · step^exponent over the window (positive points only)."""
    from theory.fit import fit_loglog_slope  # imported here: reading logs needs no theory until a fit is asked for
    steps, values = series
    keep = np.ones_like(steps, dtype=bool) if window is None else (steps >= window[0]) & (steps <= window[1])
    slope, intercept = fit_loglog_slope(steps[keep].astype(np.float64), values[keep])
    return float(slope), math.exp(intercept) if math.isfinite(intercept) else float("nan")


def loglog_rows(
    groups: dict[str, list[RunLog]], tags: list[str], theory_tag: str, window: tuple[int, int] | None
) -> list[dict[str, Any]]:
    rows = []
    for tag in tags:
        peaks = {arm: max((float(np.max(r.scalars[tag][1])) for r in runs if tag in r.scalars), default=float("nan"))
                 for arm, runs in groups.items()}
        top = max((p for p in peaks.values() if math.isfinite(p)), default=float("nan"))
        for arm, runs in groups.items():
            fits = [_fit(r.scalars[tag], window) for r in runs if tag in r.scalars]
            if not fits:
                continue
            # An arm whose values stay this far below the others' is at round-off: its "fit" is noise.
            negligible = bool(peaks[arm] <= LOG_FLOOR * top) if math.isfinite(top) and top > 0 else False
            row: dict[str, Any] = {"arm": arm, "metric": tag, "n": len(fits), "peak": peaks[arm],
                                   "negligible": negligible}
            row["exponent"], row["exponent_std"] = mean_std([f[0] for f in fits if math.isfinite(f[0])])
            row["coefficient"], row["coefficient_std"] = mean_std([f[1] for f in fits if math.isfinite(f[1])])
            theory = [_fit(r.scalars[theory_tag], window) for r in runs if theory_tag in r.scalars]
            row["theory_exponent"], _ = mean_std([f[0] for f in theory if math.isfinite(f[0])])
            row["theory_coefficient"], _ = mean_std([f[1] for f in theory if math.isfinite(f[1])])
            rows.append(row)
    return rows


# ---- writing ------------------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return "–" if not math.isfinite(x) else f"{x:.{digits}g}"
    return str(x)


def _pm(mean: float, std: float) -> str:
    return _fmt(mean) if not math.isfinite(std) else f"{_fmt(mean)} ± {_fmt(std, 2)}"


def markdown(root: Path, summary: list[dict], thresholds: list[dict], fits: list[dict], plots: list[Path],
             out: Path) -> str:
    lines = [f"# Report: `{root}`", "", "Mean ± sample std (ddof=1) over seeds; n = number of seeds.", ""]
    steps = list(dict.fromkeys(str(r["step"]) for r in summary))
    cells: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for r in summary:
        cells[(r["arm"], r["metric"])][str(r["step"])] = f"{_pm(r['mean'], r['std'])} (n={r['n']})"
    lines += ["| arm | metric | " + " | ".join(f"step {s}" for s in steps) + " |",
              "|---|---|" + "---|" * len(steps)]
    for (arm, metric), by_step in cells.items():
        lines.append(f"| {arm} | {metric} | " + " | ".join(by_step.get(s, "–") for s in steps) + " |")
    if thresholds:
        lines += ["", "## Threshold exceedance (run-steps above the threshold)", "",
                  "| arm | metric | threshold | exceed / total | fraction |", "|---|---|---|---|---|"]
        lines += [f"| {r['arm']} | {r['metric']} | {_fmt(r['threshold'])} | {r['exceed']} / {r['total']} | "
                  f"{r['fraction']:.3f} |" for r in thresholds]
    if fits:
        lines += ["", "## Log-log fits: value ≈ coefficient · step^exponent", "",
                  "| arm | metric | exponent | coefficient | theory exponent | theory coefficient | n |",
                  "|---|---|---|---|---|---|---|"]
        lines += [_fit_line(r) for r in fits]
        if any(r["negligible"] for r in fits):
            lines += ["", f"≈ 0: the arm's largest value is below {LOG_FLOOR:g} × the largest over arms (round-off), "
                      "so no power law is fitted; raw fits are in report.json."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots]
    return "\n".join(lines) + "\n"


def _fit_line(r: dict[str, Any]) -> str:
    if r["negligible"]:
        return f"| {r['arm']} | {r['metric']} | ≈ 0 (peak {_fmt(r['peak'], 2)}) | – | – | – | {r['n']} |"
    return (f"| {r['arm']} | {r['metric']} | {_pm(r['exponent'], r['exponent_std'])} | "
            f"{_pm(r['coefficient'], r['coefficient_std'])} | {_fmt(r['theory_exponent'])} | "
            f"{_fmt(r['theory_coefficient'])} | {r['n']} |")


def _csv(summary: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["arm", "metric", "step", "n", "mean", "std"])
    for r in summary:
        writer.writerow([r["arm"], r["metric"], r["step"], r["n"], repr(r["mean"]), repr(r["std"])])
    return buf.getvalue()


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def build_report(
    run_dir: str | Path,
    steps: list[int] | None = None,
    threshold: list[str] | None = None,
    loglog: list[str] | None = None,
    tags: list[str] | None = None,
    arms: str | None = None,
    include_shared: bool = False,
    theory_tag: str = "theory/align_loss_pred",
    fit_window: tuple[int, int] | None = None,
    out: str | Path | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Compute and write the report (see the module docstring); returns the JSON payload."""
    from testbed.report_plots import plot_loglog, plot_metric

    root = Path(run_dir)
    runs = discover_runs(root, include_shared=include_shared, arms=arms)
    groups = by_arm(runs)
    all_tags = sorted({t for r in runs for t in r.scalars})
    # Lightning's own ``epoch`` counter is bookkeeping, not a result: only on request.
    chosen = [t for t in all_tags if (any(re.search(p, t) for p in tags) if tags else t != "epoch")]
    missing = [t for t in loglog or [] if t not in all_tags]
    if missing:
        raise ConfigError(f"--loglog tag(s) {missing} not logged under {root}; logged tags: {all_tags}")
    out_dir = Path(out) if out is not None else root / "report"
    summary = summary_rows(groups, chosen, sorted(steps) if steps else None)
    thresholds = threshold_rows(groups, threshold or [])
    fits = loglog_rows(groups, loglog or [], theory_tag, fit_window)
    written: list[Path] = []
    if plots:
        for tag in chosen:
            written.append(plot_metric(groups, tag, out_dir / "plots"))
        for tag in loglog or []:
            written.append(plot_loglog(groups, tag, theory_tag, fit_window, out_dir / "plots", fits))
    payload = _json_safe({"run_dir": str(root), "runs": [{"arm": r.arm, "seed": r.seed, "path": str(r.path)}
                                                          for r in runs],
                          "summary": summary, "thresholds": thresholds, "loglog": fits,
                          "plots": [str(p) for p in written]})
    atomic_write_text(out_dir / "report.json", json.dumps(payload, indent=2))
    atomic_write_text(out_dir / "report.csv", _csv(summary))
    atomic_write_text(out_dir / "report.md", markdown(root, summary, thresholds, fits, written, out_dir))
    return payload


def _listed(value: Any) -> list | None:
    return None if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def report_command(
    run_dir: str,
    steps: list[int] | int | None = None,
    threshold: list[str] | str | None = None,
    loglog: list[str] | str | None = None,
    tags: list[str] | str | None = None,
    arms: str | None = None,
    include_shared: bool = False,
    theory_tag: str = "theory/align_loss_pred",
    fit_window: tuple[int, int] | None = None,
    out: str | None = None,
    plots: bool = True,
) -> None:
    """Table (Markdown, CSV, JSON) and PNG plots of a study's runs: mean ± std over seeds per arm.

    A list option takes one value (``--loglog align/loss``), a list (``--steps [100,200]``) or repeats with
    ``+=`` (``--threshold+=a=1 --threshold+=b=2``).

    Args:
        run_dir: a study folder (``<runs_dir>/<name>``) or any folder of TensorBoard runs; runs are grouped by
            their path without the ``seed=<s>`` part.
        steps: steps at which to tabulate (the last value logged at or before each); default: each run's last value.
        threshold: ``TAG=VALUE`` (VALUE a number or another tag at the same step); counts run-steps above it.
        loglog: tags to fit and plot on log-log axes (exponent and coefficient per arm, theory's line beside).
        tags: regular expressions selecting the metrics to tabulate and plot (default: all).
        arms: regular expression selecting arms (default: all).
        include_shared: also report the shared phases (``_shared/<phase>``).
        theory_tag: the tag holding theory's prediction for the log-log tags.
        fit_window: ``[first, last]`` step of the log-log fit (default: all steps).
        out: output folder (default ``RUN_DIR/report``).
        plots: write the PNG plots.
    """
    payload = build_report(run_dir, _listed(steps), _listed(threshold), _listed(loglog), _listed(tags), arms,
                           include_shared, theory_tag, fit_window, out, plots)
    out_dir = Path(out) if out is not None else Path(run_dir) / "report"
    print(f"report: {len(payload['runs'])} run(s), {len(payload['summary'])} row(s), {len(payload['plots'])} "
          f"plot(s) -> {out_dir}/report.md (.csv, .json)")
    for row in payload["loglog"]:
        if row["negligible"]:
            print(f"  {row['arm']}: {row['metric']} ≈ 0 (peak {_fmt(row['peak'], 2)}, round-off): no power law fitted")
            continue
        print(f"  {row['arm']}: {row['metric']} exponent {_fmt(row['exponent'])} ± {_fmt(row['exponent_std'], 2)}, "
              f"coefficient {_fmt(row['coefficient'])}; theory exponent {_fmt(row['theory_exponent'])}, "
              f"coefficient {_fmt(row['theory_coefficient'])}")
