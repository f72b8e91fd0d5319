"""What a toy job imports: our code pulls in neither transformers, peft nor sympy, and theory works without sympy.

Lightning 2.6 imports torchmetrics, whose text metrics import ``transformers``, and ``torch._dynamo`` (reached from
``lightning_fabric.wrappers``) imports ``sympy``; the testbed cannot prevent those. So the toy-job test asks who
the *importer* of each of those modules is (its parent in ``python -X importtime``'s tree) and requires that it is
never a module of ours, and that ``peft`` is not imported at all. The tree shows only first imports, and Lightning
gets there first, so the same run also wraps ``builtins.__import__`` to record every ``import`` statement of ours
that names one of those packages, loaded already or not. The test prints what the third-party packages cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT

ROOT = REPO_ROOT
OURS = {"testbed", "toy_models", "theory"}
HEAVY = ("transformers", "peft", "sympy")
# Runs `python -m testbed <argv>` with every import statement that names a HEAVY package recorded when the importing
# module is one of ours; the pairs go to stderr as one JSON line after the job.
RUNNER = f"""
import builtins, json, runpy, sys
from tests.helpers.paths import REPO_ROOT
heavy, ours, seen, original = {HEAVY!r}, {sorted(OURS)!r}, set(), builtins.__import__
def record(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.partition('.')[0] in heavy and globals:
        importer = globals.get('__name__', '')
        if importer == '__main__' or importer.partition('.')[0] in ours:
            seen.add((importer, name))
    return original(name, globals, locals, fromlist, level)
builtins.__import__ = record
sys.argv = ['testbed', *sys.argv[1:]]
try:
    runpy.run_module('testbed', run_name='__main__', alter_sys=True)
finally:
    print('OUR-HEAVY-IMPORTS ' + json.dumps(sorted(seen)), file=sys.stderr)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@dataclass
class Row:
    """One line of ``-X importtime``: a module, its own and cumulative time (µs) and its depth in the tree."""

    name: str
    self_us: int
    cumulative_us: int
    depth: int

    @property
    def package(self) -> str:
        return self.name.split(".")[0]


def parse_importtime(stderr: str) -> tuple[list[Row], list[int | None]]:
    """The rows, and for each row the index of its importer (None at top level).

    Python prints a module after everything it imported, indenting by two spaces per level, so the importer of a row
    is the first row after it that is one level shallower.
    """
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:") :].split("|", 2)
        name = name[1:]  # the one space after the bar
        rows.append(Row(name.strip(), int(self_us), int(cumulative_us), (len(name) - len(name.lstrip(" "))) // 2))
    parents: list[int | None] = [None] * len(rows)
    open_rows: list[int] = []  # rows waiting for their importer, deepest last
    for i, row in enumerate(rows):
        while open_rows and rows[open_rows[-1]].depth > row.depth:
            parents[open_rows.pop()] = i
        open_rows.append(i)
    return rows, parents


def entry_points(rows: list[Row], parents: list[int | None], package: str) -> list[int]:
    """Rows of ``package`` with no ancestor in ``package``: where the rest of the program first reached into it."""
    found = []
    for i, row in enumerate(rows):
        if row.package != package:
            continue
        j = parents[i]
        while j is not None and rows[j].package != package:
            j = parents[j]
        if j is None:
            found.append(i)
    return found


def import_cost_summary(rows: list[Row], parents: list[int | None]) -> str:
    """One line per heavy package: its cumulative import time and who imported it."""
    lines = []
    for package in HEAVY:
        entries = entry_points(rows, parents, package)
        if not entries:
            lines.append(f"{package}: not imported")
            continue
        total_ms = sum(rows[i].cumulative_us for i in entries) / 1e3  # entry subtrees are disjoint
        importers = sorted({rows[p].name if (p := parents[i]) is not None else "<top level>" for i in entries})
        lines.append(f"{package}: {total_ms:g} ms cumulative, imported by {', '.join(importers)}")
    lines.append(f"all imports: {sum(r.self_us for r in rows) / 1e3:g} ms")
    return "\n".join(lines)


def test_parser_finds_importers_and_entry_points() -> None:
    stderr = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:        10 |         10 |       sympy.core",
            "import time:        20 |         30 |     sympy",
            "import time:         5 |         35 |   torch._dynamo",
            "import time:         1 |          1 |     sympy.polys",
            "import time:         2 |          3 |   theory.derivation",
            "import time:         4 |         42 | torch",
        ]
    )
    rows, parents = parse_importtime(stderr)
    assert [rows[p].name if p is not None else None for p in parents] == [
        "sympy",
        "torch._dynamo",
        "torch",
        "theory.derivation",
        "torch",
        None,
    ]
    assert entry_points(rows, parents, "sympy") == [1, 3]
    summary = import_cost_summary(rows, parents).splitlines()
    assert summary[0] == "transformers: not imported"
    assert summary[2] == "sympy: 0.031 ms cumulative, imported by theory.derivation, torch._dynamo"


def test_theory_imports_without_sympy() -> None:
    code = (
        "import sys\n"
        "import theory, theory.numerics, theory.fit, theory.quartic, theory.aic, theory.null\n"
        "from theory.fit import fit_loglog\n"
        "fit_loglog([1.0, 2.0, 3.0], [1.0, 4.1, 8.9])\n"  # the interval imports mpmath, still not sympy
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sympy', 'torch', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_quartic_module_main_still_prints_the_derivation() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "theory.quartic"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "Quartic law of alignment collapse" in out.stdout and out.stdout.count(": ok") == 4


def test_a_toy_job_imports_no_heavy_package_of_its_own(tmp_path: Path) -> None:
    cmd = [sys.executable, "-X", "importtime", "-c", RUNNER, "fit"]
    cmd += ["--config", str(ROOT / "experiments" / "toy_regimes" / "quartic.yaml"), "--trainer.max_steps", "3"]
    cmd += ["--trainer.callbacks.init_args.fit_window", "[1, 3]"]  # the curvature monitor's fit, inside the run
    cmd += ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]
    out = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    rows, parents = parse_importtime(out.stderr)
    assert {"testbed.cli", "toy_models.quadratic", "theory.quartic"} <= {row.name for row in rows}  # our code ran
    summary = import_cost_summary(rows, parents)
    print(f"\nThird-party imports of `testbed fit` on the quartic toy:\n{summary}")
    pulled = [
        f"{rows[p].name} imports {row.name}"
        for row, p in zip(rows, parents, strict=True)
        if row.package in HEAVY and p is not None and rows[p].package in OURS
    ]
    assert not pulled, "our modules import heavy packages:\n" + "\n".join(pulled) + "\n" + summary
    assert "peft" not in {row.package for row in rows}, summary
    recorded = [line for line in out.stderr.splitlines() if line.startswith("OUR-HEAVY-IMPORTS ")]
    assert len(recorded) == 1, out.stderr[-3000:]
    statements = json.loads(recorded[0].split(" ", 1)[1])
    assert statements == [], f"import statements of ours naming {HEAVY}: {statements}\n{summary}"


if __name__ == "__main__":  # pragma: no cover - handy for reporting the figures
    sys.exit(pytest.main([__file__, "-q", "-s", "-k", "toy_job"]))
