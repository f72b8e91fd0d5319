"""Sweep sharpness λ × coupling c on the quadratic toy and fit how the quartic coefficient scales.

    python -m experiments.toy_regimes.scaling [--sharpness 2 5 10] [--coupling 0.1 0.25 0.5] [--save_dir runs]

Each point is ``python -m testbed fit --config experiments/toy_regimes/quartic.yaml`` (in-process) with λ and c
overridden.
The measured coefficient C = exp(mean(log Δu_n − 4 log n)) over the fit window (Δu from the shared curvature
monitor) is regressed as log C = a log λ + b log c + const; theory predicts a = 1, b = 2 (A ≈ (λ/8)‖P_S H g0‖² t⁴
with P_S H g0 ∝ c).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.inprocess import curvature_monitor, fit, quartic_coefficient, quiet

CONFIG = Path(__file__).resolve().parent / "quartic.yaml"


def sweep(
    sharpness: Sequence[float], coupling: Sequence[float], save_dir: str = "runs", config: Path = CONFIG
) -> list[dict[str, float]]:
    """One fit per (λ, c); returns rows with the measured coefficient, exponent and measured/predicted ratio."""
    rows = []
    for lam in sharpness:
        for c in coupling:
            overrides = [
                "--model.init_args.sharpness", str(lam),
                "--model.init_args.coupling", str(c),
                "--trainer.logger.init_args.name", "quartic_sweep",
                "--trainer.logger.init_args.version", f"lam={lam:g}/c={c:g}",
            ]  # fmt: skip
            monitor = curvature_monitor(fit([config], overrides, save_dir=save_dir))
            s = monitor.summary()
            rows.append(
                {
                    "sharpness": lam,
                    "coupling": c,
                    "coefficient": quartic_coefficient(monitor),
                    "exponent": s["curvature/exponent"],
                    "ratio": s["curvature/coefficient_ratio"],
                }
            )
    return rows


def scaling_fit(rows: list[dict[str, float]]) -> dict[str, float]:
    """Least squares log C = a log λ + b log c + const; returns a, b, const and R²."""
    lam = np.log([r["sharpness"] for r in rows])
    cpl = np.log([r["coupling"] for r in rows])
    y = np.log([r["coefficient"] for r in rows])
    design = np.stack([lam, cpl, np.ones_like(lam)], 1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    r2 = 1.0 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum())
    return {"lambda_exponent": float(coef[0]), "coupling_exponent": float(coef[1]), "const": float(coef[2]), "r2": r2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sharpness", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    parser.add_argument("--coupling", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--save_dir", default="runs")
    args = parser.parse_args()
    quiet()
    rows = sweep(args.sharpness, args.coupling, args.save_dir)
    print("| λ | c | measured coefficient of n⁴ | fitted exponent | measured/predicted |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r['sharpness']:g}", f"{r['coupling']:g}", f"{r['coefficient']:.4e}", f"{r['exponent']:.3f}"]
        print("| " + " | ".join([*cells, f"{r['ratio']:.4f}"]) + " |")
    f = scaling_fit(rows)
    print(
        f"\nlog-linear fit: coefficient ∝ λ^{f['lambda_exponent']:.4f} · c^{f['coupling_exponent']:.4f} "
        f"(R² = {f['r2']:.5f}; theory: λ¹ · c²)"
    )


if __name__ == "__main__":
    main()
