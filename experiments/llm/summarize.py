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

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def at(series: list[tuple[int, float]] | None, step: int) -> float | None:
    """The value logged at ``step`` (the last one at or before it)."""
    if not series:
        return None
    before = [v for s, v in series if s <= step]
    return before[-1] if before else None


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
    aligned = [at(scalars(r).get("align/harmfulness"), 10**9) for r in align_runs]
    aligned_gen = [at(scalars(r).get("align/harmfulness_gen"), 10**9) for r in align_runs]
    lines.append(f"aligned model, held-out harmful families: likelihood {mean_std(aligned, '{:.1f}')} %, "
                 f"generate {mean_std(aligned_gen, '{:.1f}')} %  ({len(align_runs)} seeds)")  # fmt: skip
    lines.append("")
    head = ["arm", "seeds"] + [f"cos@{s}" for s in steps] + ["> null p99", "harm@0 %", "harm@20 %", "harm@100 %",
                                                            "harm_gen@100 %", "val/loss@100", "task cost"]  # fmt: skip
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    plain_loss = None
    rows = []
    for arm in arms:
        runs = [scalars(r) for r in sorted(arm.glob("seed=*"))]
        if not runs:
            continue
        cos = {s: [at(r.get(f"reversion/cos_drift_vrev/{layer}"), s) for r in runs] for s in steps}
        exceed = [v for r in runs for _, v in r.get(f"reversion/exceeds_null_p99/{layer}", [])]
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
