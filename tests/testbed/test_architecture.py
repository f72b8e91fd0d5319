"""The house rule: the shared layer never reaches up into the orchestration.

The shared modules (protocol, probes, directions, metrics, interventions, curvature) must not import the CLI, the
study package, the commands module or the report: neither at import time (checked in a fresh interpreter through
``sys.modules``) nor anywhere in their source, lazy imports inside functions included, directly or through other
testbed modules (checked statically on the import graph).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT

# The shared layer, listed by hand: a new library module is added here on purpose.
SHARED_LAYER = [
    "testbed.protocol",
    "testbed.probes",
    "testbed.directions",
    "testbed.metrics",
    "testbed.interventions",
    "testbed.curvature",
]
ORCHESTRATION = ["testbed.cli", "testbed.__main__", "testbed.study", "testbed.commands", "testbed.report"]


def module_source(name: str) -> list[Path]:
    """The source files of module ``name`` below the repository: one file, or every file of a package."""
    base = REPO_ROOT.joinpath(*name.split("."))
    if base.is_dir():
        return sorted(base.rglob("*.py"))
    return [base.with_suffix(".py")] if base.with_suffix(".py").is_file() else []


def existing(names: list[str]) -> list[str]:
    return [name for name in names if module_source(name)]


def is_orchestration(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in ORCHESTRATION)


def imported_names(path: Path, package: str | None = None) -> set[str]:
    """Every module named by an import in ``path`` (at any depth, relative imports resolved against ``package``,
    by default the file's own), plus string arguments of ``importlib.import_module`` / ``__import__``;
    ``from a import b`` yields both ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = ".".join(path.relative_to(REPO_ROOT).parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, node.module] if node.module else parent)
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def reachable(start: str) -> dict[str, str]:
    """Testbed modules reachable from ``start`` through any import statement, each with the module importing it."""
    seen: dict[str, str] = {start: ""}
    todo = [start]
    while todo:
        current = todo.pop()
        for path in module_source(current):
            for name in imported_names(path):
                if name.split(".")[0] != "testbed" or name in seen or not module_source(name):
                    continue
                seen[name] = current
                todo.append(name)
    return seen


def test_the_shared_layer_list_is_complete_and_exists() -> None:
    assert "testbed.interventions" in existing(SHARED_LAYER)
    assert set(existing(["testbed.protocol", "testbed.probes", "testbed.directions", "testbed.metrics"])) <= set(
        existing(SHARED_LAYER)
    )


@pytest.mark.parametrize("module", existing(SHARED_LAYER))
def test_shared_module_source_never_imports_the_orchestration(module: str) -> None:
    """Statically, lazy imports inside functions included, directly or through any other testbed module."""
    graph = reachable(module)
    bad = sorted(name for name in graph if is_orchestration(name))
    chains = []
    for name in bad:
        chain = [name]
        while graph[chain[-1]]:
            chain.append(graph[chain[-1]])
        chains.append(" <- ".join(chain))
    assert not bad, f"{module} reaches the orchestration: {chains}"


@pytest.mark.parametrize("module", existing(SHARED_LAYER))
def test_importing_a_shared_module_loads_no_orchestration(module: str) -> None:
    """At run time, in a fresh interpreter: what importing the module pulls in, transitively."""
    code = (
        "import json, sys\n"
        f"import {module}\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [name for name in loaded if is_orchestration(name)], f"importing {module} loaded the orchestration"


def test_the_static_check_sees_lazy_imports(tmp_path: Path) -> None:
    """The checker itself: an import inside a function, a relative import and import_module are all found."""
    source = tmp_path / "probe.py"
    source.write_text(
        "import importlib\n"
        "def f():\n"
        "    from testbed.study import runner\n"
        "    from . import cli\n"
        "    return importlib.import_module('testbed.report')\n"
    )
    names = imported_names(source, package="testbed")
    assert {"testbed.study.runner", "testbed.cli", "testbed.report"} <= names
    assert all(is_orchestration(n) for n in ("testbed.study.runner", "testbed.cli", "testbed.report"))
