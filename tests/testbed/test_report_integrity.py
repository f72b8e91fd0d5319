"""Report integrity, end to end on small hand-written runs: a cell combines only values logged at its step and says
which; a seed without that step (or with a non-finite value there) is shown missing, not averaged in; unfinished runs
are left out unless asked for and then marked; a truncated event file is reported, not fatal."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from testbed.report import build_report
from testbed.study.layout import DONE, RunKey, run_dir


def _run(root: Path, arm: str, seed: int, series: dict[int, float], done: bool = True) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    folder = run_dir(root, RunKey(arm, seed))
    with SummaryWriter(str(folder)) as writer:
        for step, value in series.items():
            writer.add_scalar("m/x", value, step)
    if done:
        (folder / DONE).write_text("{}")
    return folder


@pytest.fixture
def study(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    _run(root, "a", 0, {3: 1.0, 11: 2.0})
    _run(root, "a", 1, {3: 3.0, 11: 4.0})
    _run(root, "a", 2, {3: 5.0})  # stopped at step 3: its "last" is not the others' step 11
    _run(root, "b", 0, {3: 1.0, 11: math.nan})  # logged before non-finite values were refused
    _run(root, "b", 1, {3: 2.0, 11: 6.0})
    _run(root, "b", 2, {3: 900.0, 11: 900.0}, done=False)  # still running (or killed): no DONE.json
    return root


def _cells(payload: dict) -> dict[tuple[str, str], dict]:
    table = payload["tables"][0]
    return {(row["arm"], col): row["cells"][col] for row in table["rows"] for col in table["columns"]}


def _report(study: Path, tmp_path: Path, **kw) -> dict:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"rows": ["a", "b"], "columns": [{"kind": "value", "tag": "m/x", "step": 11},
                                                                    {"kind": "value", "tag": "m/x", "step": "last"}]}))
    return build_report(study, spec=spec, out=tmp_path / "out", plots=False, **kw)


def test_cells_combine_only_one_step_and_show_missing_seeds(study: Path, tmp_path: Path) -> None:
    payload = _report(study, tmp_path)
    cell = _cells(payload)["a", "m/x@11"]
    assert cell["values"] == {0: 2.0, 1: 4.0} and cell["n"] == 2 and cell["n_seeds"] == 3  # seed 2's step 3 is not in
    assert cell["mean"] == pytest.approx(3.0) and cell["text"].endswith("(n=2/3)")
    mixed = _cells(payload)["a", "m/x@last"]
    assert mixed["mixed"] and mixed["steps"] == {0: 11, 1: 11, 2: 3} and "†" in mixed["text"]


def test_a_non_finite_value_is_missing_and_named(study: Path, tmp_path: Path) -> None:
    payload = _report(study, tmp_path)
    cell = _cells(payload)["b", "m/x@11"]
    assert cell["values"] == {1: 6.0} and cell["mean"] == 6.0 and cell["text"].endswith("(n=1/2)")
    notes = payload["tables"][0]["notes"]
    assert any("seed(s) [0] logged a non-finite value there, left out" in note for note in notes)
    assert all(np.isfinite(row["cells"]["m/x@11"]["mean"]) for row in payload["tables"][0]["rows"])


def test_unfinished_runs_are_left_out_unless_asked_for_and_then_marked(study: Path, tmp_path: Path) -> None:
    payload = _report(study, tmp_path)
    assert payload["unfinished_left_out"] == [str(run_dir(study, RunKey("b", 2)))]
    assert 900.0 not in _cells(payload)["b", "m/x@11"]["values"].values()
    marked = _report(study, tmp_path, include_unfinished=True)
    row = next(r for r in marked["tables"][0]["rows"] if r["arm"] == "b")
    assert row["unfinished"] == [2] and "‡" in row["label"] and row["cells"]["m/x@11"]["values"][2] == 900.0


def test_a_truncated_event_file_is_reported_and_the_rest_still_counts(study: Path, tmp_path: Path) -> None:
    event = next(run_dir(study, RunKey("a", 1)).glob("events.out.tfevents.*"))
    data = event.read_bytes()
    event.write_bytes(data[:-7])
    payload = _report(study, tmp_path)
    assert any("truncated or corrupt" in p and str(event) in p for p in payload["problems"])
    assert _cells(payload)["a", "m/x@11"]["values"] == {0: 2.0}  # the cut record is gone, the run still reads
