"""Run the gravity-toy study and print its numbers in the paper's form (mean ± std over seeds).

    python experiments/toy/gravity/run.py                      # runs the study (resumes finished runs), then the table
    python experiments/toy/gravity/run.py --summary-only --runs-dir runs

The study itself is ``python -m testbed study --config experiments/toy/gravity/study.yaml``; this script calls the
same function and then reads the TensorBoard logs of every arm and seed back.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from testbed.report import read_scalars

HERE = Path(__file__).resolve().parent
LAYER = "blocks.1.hidden"
ARMS = ["plain", "blocked", "blocked-one-sided", "penalty", "clamp", "random-control", "l2-anchor"]


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """All scalar tags of a run folder: ``{tag: {step: value}}`` (the last value wins per step)."""
    series = read_scalars(run_dir)
    return {tag: dict(zip(steps.tolist(), values.tolist(), strict=True)) for tag, (steps, values) in series.items()}


def fmt(values: list[float], pct: bool = False) -> str:
    if not values:
        return "n/a"
    scale = 100.0 if pct else 1.0
    mean = statistics.fmean(values) * scale
    std = (statistics.stdev(values) * scale) if len(values) > 1 else 0.0
    return f"{mean:.3f}±{std:.3f}" if not pct else f"{mean:.1f}%±{std:.1f}%"


def summarize(study_dir: Path, seeds: list[int]) -> None:
    cos_tag = f"reversion/cos_drift_vrev/{LAYER}"
    exc_tag = f"reversion/exceeds_null_p99/{LAYER}"
    header = f"{'arm':<19}{'cos@1':>14}{'cos@20':>14}{'cos@100':>14}{'>p99 steps':>14}{'harm@100':>16}{'val loss':>14}"
    print(header)
    print("-" * len(header))
    for arm in ARMS:
        rows: dict[str, list[float]] = {k: [] for k in ("c1", "c20", "c100", "exc", "n", "harm", "loss")}
        for seed in seeds:
            run = study_dir / arm / f"seed={seed}"
            if not run.is_dir():
                continue
            s = scalars(run)
            cos = s.get(cos_tag, {})
            if not cos:
                continue
            rows["c1"].append(cos.get(1, float("nan")))
            rows["c20"].append(cos.get(20, float("nan")))
            rows["c100"].append(cos[max(cos)])
            rows["exc"].append(sum(s.get(exc_tag, {}).values()))
            rows["n"].append(len(s.get(exc_tag, {})))
            harm = s.get("align/harmfulness", {})
            loss = s.get("val/loss", {})
            if harm:
                rows["harm"].append(harm[max(harm)])
            if loss:
                rows["loss"].append(loss[max(loss)])
        if not rows["c1"]:
            continue
        exceed = f"{int(sum(rows['exc']))}/{int(sum(rows['n']))}"
        print(
            f"{arm:<19}{fmt(rows['c1']):>14}{fmt(rows['c20']):>14}{fmt(rows['c100']):>14}{exceed:>14}"
            f"{fmt(rows['harm'], pct=True):>16}{fmt(rows['loss']):>14}"
        )
    aligned = []
    for seed in seeds:
        run = study_dir / "_shared" / "align" / f"seed={seed}"
        if run.is_dir():
            harm = scalars(run).get("align/harmfulness", {})
            if harm:
                aligned.append(harm[max(harm)])
    print(f"harmfulness of the aligned model (before fine-tuning): {fmt(aligned, pct=True)}; seeds {seeds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.summary_only:
        from testbed.__main__ import main as testbed_main

        testbed_main(
            [
                "study",
                "--config",
                str(HERE / "study.yaml"),
                "--runs_dir",
                args.runs_dir,
                "--seeds",
                str(seeds),
                "--quiet",
                "true",
            ]
        )
    summarize(Path(args.runs_dir) / "gravity_toy", seeds)


if __name__ == "__main__":
    main()
