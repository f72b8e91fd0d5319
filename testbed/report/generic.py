"""The spec ``report`` builds when none is given: one table per tag, threshold counts and log-log fits from the
command-line options (``--steps``, ``--threshold``, ``--loglog``, ``--fit_window``)."""

from __future__ import annotations

import re

from testbed.errors import ConfigError
from testbed.report.spec import Column, Plot, Spec, Table

__all__ = ["parse_threshold", "generic_spec"]


def parse_threshold(text: str) -> tuple[str, float | str]:
    """``TAG=VALUE`` where VALUE is a number or another tag."""
    if "=" not in text:
        raise ConfigError(f"--threshold expects TAG=VALUE (VALUE a number or a tag), got {text!r}")
    tag, value = (s.strip() for s in text.rsplit("=", 1))
    try:
        return tag, float(value)
    except ValueError:
        return tag, value


def _file(tag: str, prefix: str = "") -> str:
    return prefix + tag.replace("/", "__").replace(" ", "_")


def generic_spec(
    arms: list[str],
    logged: list[str],
    tags: list[re.Pattern],
    steps: list[int] | None,
    thresholds: list[str],
    loglog: list[str],
    theory_tag: str,
    fit_window: tuple[int, int] | None,
) -> Spec:
    """A spec over ``arms`` (rows, labelled by name) from the command line's options.

    Args:
        arms: the arms to report, in order.
        logged: every tag the arms logged.
        tags: expressions selecting the tags to tabulate and plot (none: all but Lightning's ``epoch``).
        steps: steps to tabulate each tag at (none: each run's last step).
        thresholds: ``TAG=VALUE`` counts of run-steps above a number or another tag.
        loglog: tags to fit on log-log axes (exponent and coefficient, beside ``theory_tag`` where logged).
        theory_tag: the tag holding theory's prediction.
        fit_window: first and last step of the fits.
    """
    missing = [t for t in loglog if t not in logged]
    if missing:
        raise ConfigError(f"--loglog tag(s) {missing} not logged by the reported runs; logged tags: {logged}")
    chosen = [t for t in logged if (any(p.search(t) for p in tags) if tags else t != "epoch")]
    rows = {a: a for a in arms}
    at: list[int | str] = sorted(set(steps)) if steps else ["last"]
    tables = [Table(f"`{t}`", rows, [Column("value", f"@{s}" if s != "last" else "last step", t, s, sig=4) for s in at])
              for t in chosen]
    counts = []
    for text in thresholds:
        tag, above = parse_threshold(text)
        counts.append(Column("count", f"{tag} > {above}", tag, above=above))
    if counts:
        tables.append(Table("Run-steps above a threshold", rows, counts))
    fits = []
    for tag in loglog:
        for who in [tag] + ([theory_tag] if theory_tag in logged and theory_tag != tag else []):
            prefix = "theory " if who == theory_tag and who != tag else ""
            fits += [Column("exponent", f"{prefix}exponent of {who}", who, window=fit_window, sig=4),
                     Column("exponent", f"{prefix}coefficient of {who}", who, window=fit_window, show="coefficient",
                            sig=4)]
    if fits:
        tables.append(Table("Log-log fits: value ≈ coefficient · step^exponent", rows, fits))
    if not tables:
        raise ConfigError(f"nothing to report: no tag matches --tags; logged tags: {logged}")
    plots = [Plot("lines", _file(t), {"tag": t}) for t in chosen]
    plots += [Plot("loglog", _file(t, "loglog__"), {"tag": t, "theory": theory_tag if theory_tag in logged else None,
                                                    "steps": list(fit_window) if fit_window else None})
              for t in loglog]
    return Spec(None, tables, plots)
