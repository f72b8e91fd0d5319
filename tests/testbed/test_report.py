"""``testbed report`` on a synthetic study with known numbers: every column kind, the same-step rule, last-step
marks, unfinished runs, a truncated event file, Spearman and the ordering test against scipy, the written files
and plots, the repository's two specs, and bad input as one ``ConfigError`` line."""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from testbed.errors import ConfigError
from testbed.report import build_report, load_spec, read_scalars
from testbed.report.cells import compute_cell
from testbed.report.runs import Run
from testbed.report.spec import Column, parse_spec
from testbed.report.stats import difference_test, jonckheere, ordering_test
from testbed.study.layout import DONE, RUN_CONFIG, SHARED, RunKey, run_dir
from tests.helpers.paths import REPO_ROOT

REPO = REPO_ROOT
SEEDS = (0, 1, 2)
ARMS = {"a": 0.0, "b": 1.0, "c": 2.0}  # arm -> its "strength" setting (dose plots)
STRENGTH = {"a": 0.5, "b": 1.5, "c": 3.0}


def f32(x: float) -> float:
    """Event files store float32: what the report reads back."""
    return float(np.float32(x))


def mx(arm: str, seed: int, step: int) -> float:
    return ARMS[arm] + 0.1 * seed**2 + 0.01 * step


def cos(arm: str, seed: int, step: int) -> float:
    return 0.3 + 0.05 * seed + 0.2 * ARMS[arm] + 0.01 * (step % 3)


def harm(arm: str, seed: int, step: int) -> float:
    return round(0.1 * ARMS[arm] + 0.02 * step + 0.03 * ((seed + step) % 4), 2)  # ties on purpose


def loss(arm: str, seed: int, step: int) -> float:
    return 1e-3 * (1 + ARMS[arm]) * step ** (4.0 + 0.1 * seed)


def m_steps(arm: str, seed: int) -> list[int]:
    """m/x every 2 steps; arm b seed 2 stops at step 8 (a seed that lacks step 10)."""
    return list(range(0, 9 if (arm, seed) == ("b", 2) else 11, 2))


def write_run(root: Path, key: RunKey, scalars: dict[str, dict[int, float]], done: bool = True,
              config: dict | None = None) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    folder = run_dir(root, key)
    with SummaryWriter(str(folder)) as writer:
        for tag, series in scalars.items():
            for step, value in series.items():
                writer.add_scalar(tag, value, step)
    if config is not None:
        (folder / RUN_CONFIG).write_text(yaml.safe_dump(config))
    if done:
        (folder / DONE).write_text("{}")
    return folder


def arm_scalars(arm: str, seed: int) -> dict[str, dict[int, float]]:
    return {
        "m/x": {s: mx(arm, seed, s) for s in m_steps(arm, seed)},
        "rev/cos": {s: cos(arm, seed, s) for s in range(1, 21)},
        "rev/null": {s: 0.4 + 0.1 * ARMS[arm] for s in range(1, 21)},
        "rev/above": {s: float(cos(arm, seed, s) > 0.45) for s in range(1, 21)},
        "harm": {s: harm(arm, seed, s) for s in range(0, 21, 5)},
        "align/loss": {s: loss(arm, seed, s) for s in range(1, 31)},
        "val/loss": {19: 0.5 + 0.1 * ARMS[arm] + 0.01 * seed},
    }


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Arms a, b, c x seeds 0-2 (finished), an unfinished seed 3 of arm a, a shared phase, a round-off arm z."""
    root = tmp_path_factory.mktemp("report") / "study"
    for arm in ARMS:
        for seed in SEEDS:
            config = {"trainer": {"callbacks": [{"class_path": "x.Monitor"},
                                                {"class_path": "x.Blocker", "init_args": {"strength": STRENGTH[arm]}}]}}
            write_run(root, RunKey(arm, seed), arm_scalars(arm, seed), config=config)
    write_run(root, RunKey("a", 3), {"m/x": {10: 999.0}}, done=False)
    for seed in SEEDS:
        write_run(root, RunKey("_shared/align", seed, "align"), {"harm": {39: 0.2 + 0.01 * seed}})
        write_run(root, RunKey("z", seed), {"align/loss": {s: 1e-33 * (1 + seed) * s for s in range(1, 31)}})
    return root


def spec_file(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def report(study: Path, tmp_path: Path, spec: dict, **kw) -> dict:
    return build_report(study, spec=spec_file(tmp_path, spec), out=tmp_path / "out", plots=kw.pop("plots", False), **kw)


def cells(payload: dict, table: int = 0) -> dict[tuple[str, str], dict]:
    t = payload["tables"][table]
    return {(row["arm"], col): row["cells"][col] for row in t["rows"] for col in t["columns"]}


ROWS = {"a": "arm a", "b": "arm b", "c": "arm c"}


def test_value_columns_combine_only_the_same_step(study: Path, tmp_path: Path) -> None:
    spec = {"rows": ROWS, "columns": [{"kind": "value", "tag": "m/x", "step": 4},
                                      {"kind": "value", "tag": "m/x", "step": 10, "label": "x ten", "seeds": True},
                                      {"kind": "value", "tag": "m/x", "step": "last", "label": "x last"},
                                      {"kind": "value", "tag": "m/x", "step": 5, "label": "x five"}]}
    payload = report(study, tmp_path, spec)
    got = cells(payload)
    assert payload["tables"][0]["columns"] == ["m/x@4", "x ten @10", "x last", "x five @5"]
    for arm in ARMS:
        values = [f32(mx(arm, s, 4)) for s in SEEDS]
        assert got[arm, "m/x@4"]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert got[arm, "m/x@4"]["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9)
        assert got[arm, "x five @5"]["text"] == "– (n=0/3)"  # step 5 was never logged: not the step-4 value
    # b seed 2 stops at step 8: its step-10 cell has two seeds, never seed 2's step-8 value
    b10 = got["b", "x ten @10"]
    assert (b10["n"], b10["n_seeds"], sorted(b10["values"])) == (2, 3, [0, 1])
    assert b10["mean"] == pytest.approx(np.mean([f32(mx("b", s, 10)) for s in (0, 1)]), rel=1e-12)
    assert b10["text"].endswith("(n=2/3)") and b10["text"].count("(") == 2  # per-seed list, then the n mark
    # "last": each seed's own last step, marked because they differ, the steps listed in the notes
    assert got["a", "x last"]["text"] == f"{np.mean([f32(mx('a', s, 10)) for s in SEEDS]):.3f}±" \
        f"{np.std([f32(mx('a', s, 10)) for s in SEEDS], ddof=1):.3f} @10"
    b_last = got["b", "x last"]
    assert b_last["mixed"] and b_last["steps"] == {0: 10, 1: 10, 2: 8} and b_last["text"].endswith("@8–10†")
    assert "† x last, arm b: values from different steps (seed 0 @10, seed 1 @10, seed 2 @8)" in payload["tables"][0][
        "notes"]
    assert "a" in [r["arm"] for r in payload["runs"]] and {r["seed"] for r in payload["runs"] if r["arm"] == "a"} == {
        0, 1, 2}


def test_unfinished_runs_left_out_or_marked(study: Path, tmp_path: Path) -> None:
    spec = {"rows": {"a": "arm a"}, "columns": [{"kind": "value", "tag": "m/x", "step": 10}]}
    left_out = report(study, tmp_path, spec)
    assert cells(left_out)["a", "m/x@10"]["n_seeds"] == 3
    assert any("left out 1 unfinished run(s)" in p and "a seed 3" in p for p in left_out["problems"])
    marked = report(study, tmp_path, spec, include_unfinished=True)
    row = marked["tables"][0]["rows"][0]
    assert row["label"] == "arm a ‡" and row["unfinished"] == [3] and row["cells"]["m/x@10"]["n"] == 4
    assert any(n.startswith("‡ includes unfinished runs") and "seed(s) [3]" in n for n in marked["tables"][0]["notes"])


def test_count_cost_area_columns(study: Path, tmp_path: Path) -> None:
    spec = {"rows": ROWS, "reference": "a", "tags": {"cos": "rev/cos"},
            "columns": [{"kind": "count", "tag": "cos", "above": 0.355, "label": "num"},
                        {"kind": "count", "tag": "cos", "above": "rev/null", "label": "tag"},
                        {"kind": "count", "tag": "rev/above", "indicator": True, "label": "ind", "steps": [1, 10]},
                        {"kind": "cost", "tag": "val/loss", "step": "last", "label": "cost"},
                        {"kind": "area", "tag": "cos", "steps": [2, 12], "label": "area", "interval": True}]}
    payload = report(study, tmp_path, spec)
    got = cells(payload)
    ref = np.mean([f32(0.5 + 0.01 * s) for s in SEEDS])
    for arm, shift in ARMS.items():
        cos_f = {(s, t): f32(cos(arm, s, t)) for s in SEEDS for t in range(1, 21)}
        num = sum(v > 0.355 for v in cos_f.values())
        tag = sum(v > f32(0.4 + 0.1 * shift) for v in cos_f.values())
        ind = sum(cos(arm, s, t) > 0.45 for s in SEEDS for t in range(1, 11))
        assert got[arm, "num"]["text"] == f"{num}/60" and got[arm, "tag"]["text"] == f"{tag}/60"
        assert got[arm, "ind (steps 1–10)"]["text"] == f"{ind}/30"
        mean = np.mean([f32(0.5 + 0.1 * shift + 0.01 * s) for s in SEEDS])
        assert got[arm, "cost"]["relative"] == pytest.approx(mean / ref - 1, rel=1e-12)
        areas = [np.trapezoid([cos_f[s, t] for t in range(2, 13)], range(2, 13)) for s in SEEDS]
        cell = got[arm, "area (steps 2–12)"]
        assert cell["mean"] == pytest.approx(np.mean(areas), rel=1e-12)
        low, high = stats.t.interval(0.95, 2, loc=np.mean(areas), scale=stats.sem(areas))
        assert (cell["low"], cell["high"]) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert got["a", "cost"]["text"] == "reference @19"
    assert got["c", "cost"]["text"] == f"{100 * got['c', 'cost']['relative']:+.1f}% @19"
    assert 0 < int(got["a", "num"]["text"].split("/")[0]) < 60


def test_exponent_with_t_interval_and_round_off(study: Path, tmp_path: Path) -> None:
    spec = {"rows": {"a": "a", "c": "c", "z": "z"},
            "columns": [{"kind": "exponent", "tag": "align/loss", "steps": [2, 30], "label": "k", "seeds": True},
                        {"kind": "exponent", "tag": "align/loss", "show": "coefficient", "label": "coef"}]}
    payload = report(study, tmp_path, spec)
    got = cells(payload)
    for arm in ("a", "c"):
        per_seed = []
        for s in SEEDS:
            t = np.arange(2, 31, dtype=np.float64)
            per_seed.append(np.polyfit(np.log(t), np.log([f32(loss(arm, s, int(x))) for x in t]), 1)[0])
        assert per_seed == pytest.approx([4.0, 4.1, 4.2], abs=1e-5)
        cell = got[arm, "k (steps 2–30)"]
        assert cell["mean"] == pytest.approx(np.mean(per_seed), rel=1e-10)
        low, high = stats.t.interval(0.95, 2, loc=np.mean(per_seed), scale=stats.sem(per_seed))
        assert (cell["low"], cell["high"]) == (pytest.approx(low, rel=1e-8), pytest.approx(high, rel=1e-8))
        assert cell["text"] == f"4.100 [{low:.3f}, {high:.3f}] (4.000, 4.100, 4.200)"
        assert got[arm, "coef"]["mean"] == pytest.approx(1e-3 * (1 + ARMS[arm]), rel=1e-4)
    assert got["z", "k (steps 2–30)"]["text"] == "≈ 0 (round-off)"
    assert any("t interval" in n.lower() or "Student-t" in n for n in payload["tables"][0]["notes"])


def test_spearman_per_arm_and_pooled_match_scipy(study: Path, tmp_path: Path) -> None:
    spec = {"rows": ROWS, "columns": [{"kind": "spearman", "x": "rev/cos", "y": "harm", "label": "rho"}]}
    payload = report(study, tmp_path, spec)
    pooled_x, pooled_y = [], []
    for arm in ARMS:
        xs = [f32(cos(arm, s, t)) for s in SEEDS for t in range(5, 21, 5)]  # steps both tags logged
        ys = [f32(harm(arm, s, t)) for s in SEEDS for t in range(5, 21, 5)]
        cell = cells(payload)[arm, "rho"]
        assert cell["rho"] == pytest.approx(stats.spearmanr(xs, ys).statistic, abs=1e-6)
        assert cell["count"] == 12
        pooled_x += xs
        pooled_y += ys
    pooled = payload["tables"][0]["pooled"]["rho"]
    assert pooled["n"] == 36 and pooled["rho"] == pytest.approx(stats.spearmanr(pooled_x, pooled_y).statistic, abs=1e-6)


def direct_ordering_p(groups: list[list[float]]) -> float:
    """P(J >= J_obs) over every assignment of the pooled values to groups of the same sizes."""
    pooled, sizes = [v for g in groups for v in g], [len(g) for g in groups]
    observed, hits, total = jonckheere(*groups), 0, 0
    for first in itertools.combinations(range(len(pooled)), sizes[0]):
        rest = [i for i in range(len(pooled)) if i not in first]
        for second in itertools.combinations(rest, sizes[1]):
            third = [i for i in rest if i not in second]
            split = [[pooled[i] for i in idx] for idx in (first, second, third)]
            hits += jonckheere(*split) >= observed - 1e-12
            total += 1
    return hits / total


def test_ordering_test_matches_a_direct_enumeration(study: Path, tmp_path: Path) -> None:
    spec = {"rows": ROWS, "columns": [{"kind": "value", "tag": "m/x", "step": 4, "label": "x"}],
            "tests": [{"column": "x", "order": ["a", "b", "c"]}, {"column": "x", "order": ["c", "a", "b"]}]}
    payload = report(study, tmp_path, spec)
    increasing, scrambled = payload["tables"][0]["tests"]
    groups = [[f32(mx(arm, s, 4)) for s in SEEDS] for arm in "abc"]
    assert increasing["exact"] and increasing["permutations"] == 1680
    assert increasing["statistic"] == 27.0 and increasing["pvalue"] == pytest.approx(direct_ordering_p(groups))
    assert increasing["pvalue"] == pytest.approx(1 / 1680)
    assert scrambled["pvalue"] == pytest.approx(direct_ordering_p([groups[2], groups[0], groups[1]]))
    assert any("Jonckheere–Terpstra J = 27" in n for n in payload["tables"][0]["notes"])
    tied = [[1.0, 2.0, 2.0], [2.0, 3.0], [3.0, 3.0, 5.0]]
    assert ordering_test(tied).pvalue == pytest.approx(direct_ordering_p(tied))


def test_difference_test_matches_a_direct_enumeration(study: Path, tmp_path: Path) -> None:
    spec = {"rows": ROWS, "columns": [{"kind": "value", "tag": "m/x", "step": 4, "label": "x"}],
            "tests": [{"kind": "difference", "column": "x", "order": ["a", "b"]}]}
    payload = report(study, tmp_path, spec)
    (test,) = payload["tables"][0]["tests"]
    a, b = ([f32(mx(arm, s, 4)) for s in SEEDS] for arm in "ab")
    pooled, observed, hits = a + b, np.mean(b) - np.mean(a), 0
    for first in itertools.combinations(range(6), 3):
        rest = [pooled[i] for i in range(6) if i not in first]
        hits += abs(np.mean(rest) - np.mean([pooled[i] for i in first])) >= abs(observed) - 1e-12
    assert test["kind"] == "difference" and test["exact"] and test["permutations"] == 20
    assert test["statistic"] == pytest.approx(observed) and test["pvalue"] == pytest.approx(hits / 20)
    assert any(n.startswith("Difference test, H1: a ≠ b") and "two-sided" in n for n in payload["tables"][0]["notes"])
    assert difference_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).pvalue == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="kind: difference"):
        parse_spec({**spec, "tests": [{"kind": "difference", "column": "x", "order": ["a", "b", "c"]}]}, "t")


def test_area_average_is_the_time_mean(study: Path, tmp_path: Path) -> None:
    spec = {"rows": ROWS, "columns": [{"kind": "area", "tag": "harm", "steps": [0, 20], "average": True}]}
    got = cells(report(study, tmp_path, spec))
    for arm in ARMS:
        means = [np.trapezoid([f32(harm(arm, s, t)) for t in range(0, 21, 5)], range(0, 21, 5)) / 20 for s in SEEDS]
        cell = got[arm, "mean of harm (steps 0–20)"]
        assert cell["mean"] == pytest.approx(np.mean(means), rel=1e-12)


def test_ordering_test_with_one_seed_per_arm_is_a_note(tmp_path: Path) -> None:
    root = tmp_path / "one_seed"
    for arm in "ab":
        write_run(root, RunKey(arm, 0), arm_scalars(arm, 0))
    spec = {"rows": {"a": "arm a", "b": "arm b"}, "columns": [{"kind": "value", "tag": "m/x", "step": 4, "label": "x"}],
            "tests": [{"column": "x", "order": ["a", "b"]}]}  # fmt: skip
    table = report(root, tmp_path, spec)["tables"][0]
    assert table["tests"] == [] and any("fewer than two per-seed values" in n for n in table["notes"])


def test_truncated_event_file_is_reported_not_fatal(study: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(study, root)
    event = next((root / "b" / "seed=1").glob("events.out.tfevents.*"))
    data = event.read_bytes()
    event.write_bytes(data[: len(data) - 9])
    spec = {"rows": ROWS, "columns": [{"kind": "value", "tag": "m/x", "step": 4}]}
    payload = build_report(root, spec=spec_file(tmp_path, spec), out=tmp_path / "o", plots=False)
    problem = [p for p in payload["problems"] if str(event) in p]
    assert len(problem) == 1 and "truncated or corrupt" in problem[0] and f"of {len(data) - 9}" in problem[0]
    assert str(event) in (tmp_path / "o" / "report.md").read_text()
    assert cells(payload)["b", "m/x@4"]["n"] == 3  # what could be read still counts


def test_plain_tensorboard_folders_are_not_a_study(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    for version in ("version_0", "version_1"):
        with SummaryWriter(str(tmp_path / "tb" / version)) as writer:
            writer.add_scalar("x", 1.0 if version.endswith("0") else 3.0, 5)
    payload = build_report(tmp_path / "tb", out=tmp_path / "o", plots=False)
    assert not payload["study"] and len(payload["runs"]) == 2 and not payload["problems"]
    assert [c["text"] for c in cells(payload).values()] == ["1 @5", "3 @5"]


def test_writes_markdown_csv_json_and_every_plot_kind(study: Path, tmp_path: Path) -> None:
    spec = {"title": "Synthetic", "rows": ROWS, "reference": "a",
            "columns": [{"kind": "value", "tag": "m/x", "step": 10, "label": "x@10"},
                        {"kind": "cost", "tag": "val/loss", "step": "last", "label": "cost"}],
            "plots": [{"kind": "lines", "tag": "rev/cos", "reference": [{"value": 0.5, "label": "p99"},
                                                                         {"tag": "rev/null", "label": "null"}]},
                      {"kind": "dual", "left": "rev/cos", "right": "harm", "rows": ["a", "c"]},
                      {"kind": "dose", "column": "x@10", "x": {"setting": "trainer.callbacks.1.strength"},
                       "file": "dose_setting"},
                      {"kind": "dose", "column": "x@10", "x": {"a": 0, "b": 1, "c": 2}, "file": "dose_map.png"},
                      {"kind": "loglog", "tag": "align/loss", "steps": [2, 30]}]}
    out = tmp_path / "out"
    payload = report(study, tmp_path, spec, plots=True)
    assert {p.name for p in out.iterdir()} == {"report.md", "report.csv", "report.json", "plots"}
    assert not list(out.rglob("*.partial"))
    names = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert names == ["01_lines_rev_cos.png", "02_dual_rev_cos.png", "05_loglog_align_loss.png", "dose_map.png",
                     "dose_setting.png"]
    for png in (out / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert md.startswith("# Synthetic") and "| arm | x@10 | cost |" in md and "![dose_map](plots/dose_map.png)" in md
    with (out / "report.csv").open() as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == len(payload["summary"]) == 6
    b_text = cells(payload)["b", "x@10"]["text"]
    assert ("b", "x@10", b_text) in {(ln["arm"], ln["column"], ln["text"]) for ln in lines}
    assert json.loads((out / "report.json").read_text())["tables"][0]["columns"] == ["x@10", "cost"]


def test_dose_points_follow_the_setting(study: Path) -> None:
    from testbed.report.plots import dose_points
    from testbed.report.runs import discover_runs
    from testbed.report.tables import fill_table

    spec = parse_spec({"rows": ROWS, "columns": [{"kind": "value", "tag": "m/x", "step": 4, "label": "x"}],
                       "plots": [{"kind": "dose", "column": "x", "x": {"setting": "trainer.callbacks.1.strength"}}]},
                      "inline")
    groups = discover_runs(study).by_arm()
    filled = [fill_table(spec.tables[0], groups)]
    label, points = dose_points(spec.plots[0], ROWS, groups, filled)
    assert label == "x @4" and [(x, name) for x, name, _ in points] == [(0.5, "arm a"), (1.5, "arm b"), (3.0, "arm c")]
    assert points[2][2] == pytest.approx([f32(mx("c", s, 4)) for s in SEEDS])


def test_generic_report_from_options_and_spec_in_the_run_folder(study: Path, tmp_path: Path) -> None:
    payload = build_report(study, steps=[4], threshold=["rev/cos=rev/null"], loglog=["align/loss"], tags=["^m/"],
                           arms="^[abc]$", out=tmp_path / "g", plots=False)
    titles = [t["title"] for t in payload["tables"]]
    assert titles == ["`m/x`", "Run-steps above a threshold", "Log-log fits: value ≈ coefficient · step^exponent"]
    assert {r["arm"] for r in payload["runs"]} == {"a", "b", "c"}
    row = next(r for r in payload["summary"] if r["arm"] == "a" and r["metric"] == "m/x")
    assert row["step"] == 4 and row["mean"] == pytest.approx(np.mean([f32(mx("a", s, 4)) for s in SEEDS]))
    root = tmp_path / "with_spec"
    shutil.copytree(study, root)
    spec_file(root, {"rows": {"c": "C"}, "columns": [{"kind": "value", "tag": "m/x", "step": 2}]}, "report.yaml")
    auto = build_report(root, plots=False)
    assert auto["spec"] == str(root / "report.yaml") and (root / "report" / "report.md").is_file()
    assert [r["label"] for r in auto["tables"][0]["rows"]] == ["C"]


def test_the_repository_specs_name_the_studies_arms() -> None:
    from testbed.study.spec import ArmSpec, SweepSpec, expand_sweeps

    for folder in (REPO / "experiments" / "gravity_toy", REPO / "experiments" / "llm_safety"):
        spec = load_spec(folder / "report.yaml")
        study = yaml.safe_load((folder / "study.yaml").read_text())
        sweeps = {k: SweepSpec(**v) for k, v in (study.get("sweeps") or {}).items()}
        base = {k: ArmSpec(callbacks=(v or {}).get("callbacks", [])) for k, v in study["arms"].items()}
        arms, _ = expand_sweeps(base, sweeps)
        rows = [a for t in spec.tables for a in t.rows if not a.startswith(f"{SHARED}/")]
        assert set(rows) == set(arms), folder
        assert spec.plots and all(p.kind in ("lines", "dual", "dose") for p in spec.plots)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sets(st.integers(0, 6), max_size=7), min_size=1, max_size=5), st.integers(0, 6))
def test_a_fixed_step_cell_uses_exactly_the_seeds_that_logged_it(step_sets: list[set[int]], step: int) -> None:
    runs = []
    for seed, steps in enumerate(step_sets):
        run = Run(RunKey("arm", seed), Path(f"/nowhere/{seed}"), True)
        ordered = np.array(sorted(steps), dtype=np.int64)
        run.__dict__["scalars"] = {"t": (ordered, 10.0 * seed + ordered.astype(np.float64))} if steps else {}
        runs.append(run)
    cell = compute_cell(Column("value", "t", "t", step), runs)
    having = [seed for seed, steps in enumerate(step_sets) if step in steps]
    assert sorted(cell.values) == having
    assert all(cell.values[s] == 10.0 * s + step for s in having) and set(cell.steps.values()) <= {step}
    expected = np.mean([10.0 * s + step for s in having]) if having else math.nan
    assert (math.isnan(cell.mean) and not having) or cell.mean == pytest.approx(expected)


def test_bad_input_is_one_config_error(study: Path, tmp_path: Path, run_cli, capsys) -> None:
    good = {"rows": ROWS, "columns": [{"kind": "value", "tag": "m/x", "step": 4}]}
    cases = [
        (dict(arms="(", spec=spec_file(tmp_path, good)), "--arms: invalid regular expression '('"),
        (dict(tags=["[z"]), "--tags: invalid regular expression '[z'"),
        (dict(spec=tmp_path / "absent.yaml"), "report spec not found"),
        (dict(spec=spec_file(tmp_path, good, "x.yaml").with_name("bad.yaml")), "report spec not found"),
        (dict(spec=spec_file(tmp_path, {"rows": ROWS, "columns": [{"kind": "median", "tag": "m/x"}]}, "k.yaml")),
         "unknown column kind 'median'; kinds: value, count"),
        (dict(spec=spec_file(tmp_path, {"rows": ROWS, "columns": [{"kind": "value", "tag": "no/such", "step": 1}]},
                             "t.yaml")), "tag(s) ['no/such'] never logged by the reported runs; logged tags: ["),
        (dict(spec=spec_file(tmp_path, {"rows": {"q": "q"}, "columns": good["columns"]}, "q.yaml")),
         "arm(s) ['q'] have no runs"),
        (dict(spec=spec_file(tmp_path, {**good, "reference": "nope", "columns": [
            {"kind": "cost", "tag": "val/loss", "step": "last"}]}, "r.yaml")), "arm(s) ['nope'] have no runs"),
        (dict(spec=spec_file(tmp_path, {"rows": ROWS, "columns": [{"kind": "value", "tag": "m/x", "step": 4,
                                                                   "color": "red"}]}, "f.yaml")),
         "unknown field(s) ['color']"),
        (dict(spec=spec_file(tmp_path, {**good, "tests": [{"column": "m/x@4", "order": ["a", "q"]}]}, "o.yaml")),
         "arm(s) ['q'] are not rows"),
        (dict(spec=spec_file(tmp_path, good), tags=["^none$"]), "--tags selects no column"),
        (dict(spec=spec_file(tmp_path, good), out=spec_file(tmp_path, good, "file.txt")), "names an existing file"),
        (dict(run_dir=tmp_path / "no_such_study"), "run folder not found"),
        (dict(spec=spec_file(tmp_path, good), steps=[3]), "make a table without a spec"),
        (dict(threshold=["rev/cos>0.4"]), "--threshold expects TAG=VALUE"),
        (dict(loglog=["no/such"]), "--loglog tag(s) ['no/such'] not logged"),
    ]
    (tmp_path / "bad.yaml").write_text("rows: [a\ncolumns: {")
    (tmp_path / "dup.yaml").write_text("rows: {a: a}\ncolumns: [{kind: value, tag: m/x, step: 1, step: 2}]\n")
    cases.append((dict(spec=tmp_path / "dup.yaml"), "duplicate key(s) ['step']"))
    cases[3] = (dict(spec=tmp_path / "bad.yaml"), "is not valid YAML")
    for kwargs, words in cases:
        kwargs.setdefault("run_dir", study)
        out = kwargs.pop("out", tmp_path / "never")
        with pytest.raises(ConfigError) as info:
            build_report(out=out, plots=False, **kwargs)
        assert words in str(info.value) and "\n" not in str(info.value), (kwargs, str(info.value))
    assert not (tmp_path / "never").exists()
    assert run_cli(["report", str(study), "--arms", "(", "--plots", "false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("testbed: error: --arms: invalid regular expression") and "\n" not in err


def test_read_scalars_keeps_the_latest_value_per_step(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("t", 1.0, 3)
        writer.add_scalar("t", 2.0, 3)
        writer.add_scalar("t", 5.0, 1)
    steps, values = read_scalars(tmp_path)["t"]
    assert steps.tolist() == [1, 3] and values.tolist() == [5.0, 2.0]
