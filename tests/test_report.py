"""``testbed report`` on event files with known numbers: table (mean ± sample std over seeds), threshold counts,
log-log fits against a known power law and theory's line, the written md/csv/json/png, and CLI errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from testbed.errors import ConfigError
from testbed.report import build_report

SEEDS = (0, 1, 2)
COEF = {"a": 2.0e-3, "b": 5.0e-2}
OFFSET = {"a": 1.0, "b": -3.0}


def metric(arm: str, seed: int, step: int) -> float:
    return OFFSET[arm] + 0.1 * seed ** 2 + 0.01 * step


def cos(arm: str, seed: int, step: int) -> float:
    return 0.3 + 0.05 * seed + (0.2 if arm == "b" else 0.0) + 0.01 * (step % 3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study folder: arms a and b with three seeds, a round-off arm z, and one shared phase."""
    from torch.utils.tensorboard import SummaryWriter

    root = tmp_path_factory.mktemp("report") / "study"
    for arm in ("a", "b"):
        for seed in SEEDS:
            with SummaryWriter(str(root / arm / f"seed={seed}")) as writer:
                for step in range(0, 11, 2):  # logged every 2 steps
                    writer.add_scalar("m/x", metric(arm, seed, step), step)
                for step in range(1, 41):
                    writer.add_scalar("align/loss", COEF[arm] * (1 + 0.1 * seed) * step**4, step)
                    writer.add_scalar("theory/align_loss_pred", COEF[arm] * step**4, step)
                    writer.add_scalar("reversion/cos", cos(arm, seed, step), step)
                    writer.add_scalar("reversion/null_p99", 0.405 + 0.1 * (arm == "b"), step)
    for seed in SEEDS:
        with SummaryWriter(str(root / "z" / f"seed={seed}")) as writer:
            for step in range(1, 41):
                writer.add_scalar("align/loss", 1e-33 * (1 + seed) * step, step)
    with SummaryWriter(str(root / "_shared" / "pre" / "seed=0")) as writer:
        writer.add_scalar("m/x", 99.0, 0)
    return root


def rows_of(payload: dict, metric_name: str) -> dict[tuple[str, object], dict]:
    return {(r["arm"], r["step"]): r for r in payload["summary"] if r["metric"] == metric_name}


def test_table_is_mean_and_sample_std_over_seeds(runs: Path, tmp_path: Path) -> None:
    payload = build_report(runs, steps=[5, 10], tags=["^m/"], out=tmp_path, plots=False)
    table = rows_of(payload, "m/x")
    for arm in ("a", "b"):
        for step, logged in ((5, 4), (10, 10)):  # step 5 was not logged: the value at step 4 stands
            values = [metric(arm, s, logged) for s in SEEDS]
            row = table[(arm, step)]
            assert row["n"] == 3
            assert row["mean"] == pytest.approx(np.mean(values), rel=1e-6)
            assert row["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-5)
    assert {r["arm"] for r in payload["summary"]} == {"a", "b"}  # shared phases only on request
    last = rows_of(build_report(runs, tags=["^m/"], out=tmp_path, plots=False, include_shared=True), "m/x")
    assert last[("_shared/pre", "last")]["mean"] == 99.0 and last[("_shared/pre", "last")]["n"] == 1
    assert last[("a", "last")]["mean"] == pytest.approx(np.mean([metric("a", s, 10) for s in SEEDS]), rel=1e-6)


def test_threshold_counts_run_steps_above_a_number_or_a_tag(runs: Path, tmp_path: Path) -> None:
    payload = build_report(runs, threshold=["reversion/cos=0.405", "reversion/cos=reversion/null_p99"],
                           tags=["^reversion/"], out=tmp_path, plots=False)
    counts = {(r["arm"], r["threshold"]): (r["exceed"], r["total"]) for r in payload["thresholds"]}
    for arm in ("a", "b"):
        expect_num = sum(cos(arm, s, t) > 0.405 for s in SEEDS for t in range(1, 41))
        null = 0.405 + 0.1 * (arm == "b")
        expect_tag = sum(cos(arm, s, t) > null for s in SEEDS for t in range(1, 41))
        assert counts[(arm, 0.405)] == (expect_num, 120)
        assert counts[(arm, "reversion/null_p99")] == (expect_tag, 120)
    assert 0 < counts[("a", 0.405)][0] < counts[("b", 0.405)][0] == 120
    assert 0 < counts[("b", "reversion/null_p99")][0] < 120


def test_loglog_fit_recovers_the_power_law_and_theory(runs: Path, tmp_path: Path) -> None:
    payload = build_report(runs, loglog=["align/loss"], fit_window=(2, 40), tags=["^align/"], out=tmp_path,
                           plots=False)
    fits = {r["arm"]: r for r in payload["loglog"]}
    for arm in ("a", "b"):
        assert fits[arm]["exponent"] == pytest.approx(4.0, abs=1e-6)  # values are stored as float32
        assert fits[arm]["exponent_std"] == pytest.approx(0.0, abs=1e-6)
        coefs = [COEF[arm] * (1 + 0.1 * s) for s in SEEDS]
        assert fits[arm]["coefficient"] == pytest.approx(np.mean(coefs), rel=1e-6)
        assert fits[arm]["coefficient_std"] == pytest.approx(np.std(coefs, ddof=1), rel=1e-4)
        assert fits[arm]["theory_exponent"] == pytest.approx(4.0, abs=1e-6)  # values are stored as float32
        assert fits[arm]["theory_coefficient"] == pytest.approx(COEF[arm], rel=1e-6)
        assert not fits[arm]["negligible"]
    assert fits["z"]["negligible"]  # round-off values: flagged, not presented as a power law


def test_writes_markdown_csv_json_and_readable_pngs(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    payload = build_report(runs, steps=[10], threshold=["reversion/cos=0.405"], loglog=["align/loss"], out=out)
    assert {p.name for p in out.iterdir()} == {"report.md", "report.csv", "report.json", "plots"}
    assert not list(out.rglob("*.partial"))
    md = (out / "report.md").read_text()
    assert "| arm | metric | step 10 |" in md and "## Log-log fits" in md and "## Threshold exceedance" in md
    assert "![loglog__align__loss](plots/loglog__align__loss.png)" in md
    with (out / "report.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(payload["summary"])
    for line, row in zip(table, payload["summary"], strict=True):
        assert (line["arm"], line["metric"], float(line["mean"])) == (row["arm"], row["metric"], row["mean"])
    assert json.loads((out / "report.json").read_text())["loglog"] == json.loads(json.dumps(payload["loglog"]))
    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.name for p in pngs} >= {"m__x.png", "align__loss.png", "loglog__align__loss.png"}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_report_and_clear_errors(runs: Path, tmp_path: Path, run_cli: object,
                                     capsys: pytest.CaptureFixture) -> None:
    assert run_cli(["report", str(runs), "--loglog", "align/loss", "--out", str(tmp_path / "r"), "--plots",
                    "false"]) == 0
    assert "a: align/loss exponent 4" in capsys.readouterr().out
    assert run_cli(["report", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert run_cli(["report", str(runs), "--loglog", "no/such_tag", "--plots", "false"]) == 2
    assert "--loglog tag(s) ['no/such_tag'] not logged" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="expects TAG=VALUE"):
        build_report(runs, threshold=["reversion/cos>0.4"], out=tmp_path, plots=False)
