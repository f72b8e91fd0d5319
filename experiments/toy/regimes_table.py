"""The measured regime table of the quadratic toy: which AIC condition is broken, and what the exponent does.

    python -m experiments.toy.regimes_table [--save_dir runs]

Runs the three regime configs through ``python -m testbed fit`` (in-process) and prints a Markdown table: theory's
verdict (check_aic) and predicted leading exponent beside the fitted exponent and measured/predicted coefficient.
"""

from __future__ import annotations

import argparse
import math

from experiments.toy.common import fit, quiet

REGIMES = [
    ("AIC holds", "regime_aic.yaml"),
    ("orthogonality broken", "regime_non_orthogonal.yaml"),
    ("coupling zero", "regime_uncoupled.yaml"),
]


def regime_rows(save_dir: str = "runs") -> list[dict[str, object]]:
    """Fit every regime config and collect one row of numbers per regime."""
    rows = []
    for label, config in REGIMES:
        model = fit(config, save_dir=save_dir)
        s, aic, hp = model.fit_summary, model.aic, model.hparams
        rows.append(
            {
                "regime": label,
                "epsilon": hp.orthogonality_violation,
                "coupling": hp.coupling,
                "aic_holds": aic.holds,
                "predicted_exponent": aic.exponent,
                "exponent": s.exponent if s.points >= 2 else math.nan,
                "ratio": s.coefficient_ratio,
                "max_loss": s.max_loss,
                "max_in_fraction": s.max_in_fraction,
            }
        )
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    """Render the rows as a Markdown table."""
    head = (
        "| regime | ε | c | AIC (theory) | predicted exponent | measured exponent | measured/predicted | max A "
        "| max ‖P_S δ‖/‖δ‖ |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        pred = "none (A ≡ 0)" if r["predicted_exponent"] is None else str(r["predicted_exponent"])
        exp = "— (A at numerical zero)" if math.isnan(r["exponent"]) else f"{r['exponent']:.3f}"
        ratio = "—" if math.isnan(r["ratio"]) else f"{r['ratio']:.4f}"
        lines.append(
            f"| {r['regime']} | {r['epsilon']:g} | {r['coupling']:g} | {'holds' if r['aic_holds'] else 'fails'} "
            f"| {pred} | {exp} | {ratio} | {r['max_loss']:.3e} | {r['max_in_fraction']:.2e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save_dir", default="runs", help="TensorBoard save directory")
    args = parser.parse_args()
    quiet()
    print(markdown(regime_rows(args.save_dir)))


if __name__ == "__main__":
    main()
