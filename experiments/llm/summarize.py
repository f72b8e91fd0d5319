"""The LLM study in the paper's form: mean ± std over seeds per arm, read back from TensorBoard.

    python experiments/llm/summarize.py runs/llm_safety [--layer blocks.1.resid_post]

Prints, per arm: cos(drift, v_rev) at steps 1, 20 and 100; run-steps whose cos exceeds the isotropic null's p99
(counted over every measured step of every seed); harmfulness on the held-out harmful families before
fine-tuning (step 0), at step 20 and at T=100, for both judges (likelihood, greedy + refusal phrases); the
benign-task validation loss at the end and its cost relative to plain fine-tuning. Std is the sample std (ddof=1).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from testbed.report import Series, read_scalars, value_at


def at(series: Series | None, step: int | None) -> float | None:
    """The value logged at ``step`` (the last one at or before it; ``None``: the last one), if the tag was logged."""
    return None if series is None else value_at(series, step)


def mean_std(values: list[float | None], fmt: str = "{:.3f}") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{fmt.format(statistics.fmean(vals))} ± {fmt.format(std)}"


def summarize(study: Path, layer: str, steps: tuple[int, ...] = (1, 20, 100)) -> str:
    arms = sorted(p for p in study.iterdir() if p.is_dir() and not p.name.startswith("_") and p.name != "report")
    lines = [f"study {study} — layer {layer}; mean ± std over seeds", ""]
    align_runs = sorted((study / "_shared" / "align").glob("seed=*"))
    align_logs = [read_scalars(r) for r in align_runs]
    aligned = [at(log.get("align/harmfulness"), None) for log in align_logs]
    aligned_gen = [at(log.get("align/harmfulness_gen"), None) for log in align_logs]
    lines.append(f"aligned model, held-out harmful families: likelihood {mean_std(aligned, '{:.1f}')} %, "
                 f"generate {mean_std(aligned_gen, '{:.1f}')} %  ({len(align_runs)} seeds)")  # fmt: skip
    lines.append("")
    head = ["arm", "seeds"] + [f"cos@{s}" for s in steps] + ["> null p99", "harm@0 %", "harm@20 %", "harm@100 %",
                                                            "harm_gen@100 %", "val/loss@100", "task cost"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    plain_loss = None
    rows = []
    for arm in arms:
        runs = [read_scalars(r) for r in sorted(arm.glob("seed=*"))]
        if not runs:
            continue
        cos = {s: [at(r.get(f"reversion/cos_drift_vrev/{layer}"), s) for r in runs] for s in steps}
        exceed_tag = f"reversion/exceeds_null_p99/{layer}"
        exceed = [float(v) for r in runs if exceed_tag in r for v in r[exceed_tag][1]]
        harm = {s: [at(r.get("align/harmfulness"), s) for r in runs] for s in (0, 20, 100)}
        harm_gen = [at(r.get("align/harmfulness_gen"), 100) for r in runs]
        loss = [at(r.get("val/loss"), 100) for r in runs]
        if arm.name == "plain":
            plain_loss = statistics.fmean([v for v in loss if v is not None])
        rows.append((arm.name, len(runs), cos, exceed, harm, harm_gen, loss))
    for name, n, cos, exceed, harm, harm_gen, loss in rows:
        mean_loss = statistics.fmean([v for v in loss if v is not None]) if any(v is not None for v in loss) else None
        cost = f"{100 * (mean_loss / plain_loss - 1):+.1f} %" if plain_loss and mean_loss else "n/a"
        cells = [name, str(n)] + [mean_std(cos[s]) for s in steps]
        cells += [f"{int(sum(exceed))}/{len(exceed)}", mean_std(harm[0], "{:.1f}"), mean_std(harm[20], "{:.1f}"),
                  mean_std(harm[100], "{:.1f}"), mean_std(harm_gen, "{:.1f}"), mean_std(loss), cost]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="the study folder, e.g. runs/llm_safety")
    parser.add_argument("--layer", default="blocks.1.resid_post")
    args = parser.parse_args()
    if not args.study.is_dir():
        raise SystemExit(f"summarize: error: no study folder {args.study}")
    print(summarize(args.study, args.layer))


if __name__ == "__main__":
    main()
