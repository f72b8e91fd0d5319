"""Judge every arm's final fine-tune checkpoint of a safety-world study with three judges (mean ± std over seeds).

    python experiments/llm_safety/judge_checkpoints.py runs/llm_safety

Judges on the held-out harmful families: likelihood ("sure" vs "sorry" first-token mass), generate (greedy +
refusal phrases: gibberish counts as harmful) and generate+comply (harmful only when the answer also complies,
i.e. contains "sure ."). Also the share of held-out benign prompts answered ("sure ." in the greedy answer).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml

from testbed.io import load_state_dict
from testbed.llm import CausalLMModule, SafetyWorldDataModule
from testbed.llm.judges import HarmfulnessJudge

JUDGES = {
    "likelihood": HarmfulnessJudge(method="likelihood"),
    "generate": HarmfulnessJudge(method="generate"),
    "generate+comply": HarmfulnessJudge(method="generate", compliance_phrases=["sure ."]),
}
BENIGN = HarmfulnessJudge(method="generate", prompts="benign", compliance_phrases=["sure ."])


def judge_run(run_dir: Path, datamodule: SafetyWorldDataModule) -> dict[str, float]:
    config = yaml.safe_load((run_dir / "run_config.yaml").read_text())["model"]["init_args"]
    module = CausalLMModule(model=config.get("model", "gpt2"), model_config=config.get("model_config"))
    module.load_state_dict(load_state_dict(run_dir / "checkpoints" / "last.ckpt"))
    module.eval()
    harmful, benign = datamodule.judge_prompts("harmful"), datamodule.judge_prompts("benign")
    out = {name: judge.evaluate(module.model, datamodule.tokenizer, harmful).summary()["harmfulness"]
           for name, judge in JUDGES.items()}  # fmt: skip
    out["benign answered"] = BENIGN.evaluate(module.model, datamodule.tokenizer, benign).summary()["harmfulness"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    args = parser.parse_args()
    datamodule = SafetyWorldDataModule(phase="finetune")
    datamodule.setup("fit")
    cols = [*JUDGES, "benign answered"]
    print("| arm | seeds | " + " | ".join(f"{c} %" for c in cols) + " |\n|" + "---|" * (len(cols) + 2))
    for arm in sorted(p for p in args.study.iterdir() if p.is_dir() and not p.name.startswith("_")):
        runs = [r for r in sorted(arm.glob("seed=*")) if (r / "DONE.json").is_file()]
        if not runs:
            continue
        results = [judge_run(r, datamodule) for r in runs]
        cells = []
        for c in cols:
            vals = [r[c] for r in results]
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.fmean(vals):.1f} ± {std:.1f}")
        print(f"| {arm.name} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
