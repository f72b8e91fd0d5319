"""Why cos(drift, v_rev) rises over the first steps in one configuration and not in another: the early trajectory
under probe pooling, layer and learning rate, and the part of the drift that harmful and benign prompts share.

    python experiments/llm_safety/trajectory.py runs/llm_safety [--lrs 3e-4 1e-3] [--seeds 0 1 2 3 4]

For each seed of a finished study (its ``_shared/pretrain`` and ``_shared/align`` checkpoints and the plain arm's
run config), v_rev is taken for both poolings (last prompt token, mean over prompt tokens) at every layer, and plain
fine-tuning is re-run in-process from the aligned weights at each learning rate. At steps 1, 2, 5, 10, 20, 50 and
100 it measures, per (pooling, layer):

- cos: cos(drift_h, v_rev), drift_h = mean representation of the harmful probe prompts now minus at the start;
- shared: cos(drift_b, v_rev), drift_b the same for benign prompts of the training families (what fine-tuning does
  to every prompt alike, e.g. to the shared last token ``<assistant>``);
- specific: cos(drift_h − drift_b, v_rev), the drift that is particular to harmful prompts.

It prints mean ± std over seeds (and the number of seeds whose cos rose from step 1 to step 20).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml

from testbed.commands import build_from_config
from testbed.directions import direction_from_reps
from testbed.llm.data import prompt_batch
from testbed.probes import ProbeSet
from testbed.weights import load_weights

STEPS = (1, 2, 5, 10, 20, 50, 100)
POOLINGS = ("last", "mean")


class Trajectory(pl.Callback):
    """Records cos, shared and specific (module docstring) at ``STEPS`` for every (pooling, layer)."""

    def __init__(self, harmful: ProbeSet, benign: ProbeSet, layers: list[str], vectors: dict) -> None:
        self.harmful, self.benign, self.layers, self.vectors = harmful, benign, layers, vectors
        self.start: dict = {}
        self.rows: dict[tuple[str, str, int], tuple[float, float, float]] = {}

    def _means(self, module: pl.LightningModule) -> dict:
        out = {}
        for pooling in POOLINGS:
            for name, probe in (("h", self.harmful), ("b", self.benign)):
                for layer, rep in probe.mean(module, self.layers, pooling).items():
                    out[pooling, name, layer] = rep
        return out

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start = self._means(module)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: object) -> None:
        if trainer.global_step not in STEPS:
            return
        now = self._means(module)
        for pooling in POOLINGS:
            for layer in self.layers:
                v = self.vectors[pooling, layer]
                d_h = now[pooling, "h", layer] - self.start[pooling, "h", layer]
                d_b = now[pooling, "b", layer] - self.start[pooling, "b", layer]
                cos = [float(torch.dot(d, v) / d.norm().clamp_min(1e-30)) for d in (d_h, d_b, d_h - d_b)]
                self.rows[pooling, layer, trainer.global_step] = tuple(cos)


def run_seed(study: Path, seed: int, lr: float, steps: int) -> dict:
    config = study / "plain" / f"seed={seed}" / "run_config.yaml"
    module, datamodule = build_from_config(config, seed)
    shared = study / "_shared"
    layers = module.layer_names()
    harmful = ProbeSet(datamodule.probe_batch())
    benign_prompts = [datamodule.format(e.prompt) for e in datamodule.world.prompts("train_benign", harmful.size)]
    benign = ProbeSet(prompt_batch(datamodule.tokenizer, benign_prompts))
    reps = {}
    for phase in ("pretrain", "align"):
        load_weights(module, str(shared / phase / f"seed={seed}" / "checkpoints" / "last.ckpt"), what=phase)
        reps[phase] = {p: harmful.read(module, layers, p) for p in POOLINGS}
    vectors = {(p, k): direction_from_reps(reps["pretrain"][p][k], reps["align"][p][k], "diff_means", k)
               for p in POOLINGS for k in layers}  # fmt: skip
    module.optimizer_settings.lr = lr
    recorder = Trajectory(harmful, benign, layers, vectors)
    pl.seed_everything(seed, verbose=False)
    pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0, callbacks=[recorder]).fit(module, datamodule)
    return recorder.rows


def _cell(values: list[float]) -> str:
    return f"{statistics.fmean(values):+.2f}±{statistics.stdev(values) if len(values) > 1 else 0:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="default: the study's fine-tune lr")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: every seed of the plain arm")
    args = parser.parse_args()
    from testbed.__main__ import quiet_third_party

    quiet_third_party()
    seeds = args.seeds or sorted(int(p.name.split("=")[1]) for p in (args.study / "plain").glob("seed=*"))
    plain = yaml.safe_load((args.study / "plain" / f"seed={seeds[0]}" / "run_config.yaml").read_text())
    lrs = args.lrs or [float(plain["model"]["init_args"]["optimizer"]["lr"])]
    for lr in lrs:
        runs = [run_seed(args.study, seed, lr, max(STEPS)) for seed in seeds]
        print(f"\n{args.study.name}: lr {lr:g}, {len(seeds)} seeds — cos(drift, v_rev) | shared (benign prompts) | "
              "specific (harmful − benign)")
        print("| pooling | layer | " + " | ".join(f"@{s}" for s in STEPS) + " | rose 1→20 |")
        print("|---|---|" + "---|" * (len(STEPS) + 1))
        for pooling, layer in sorted({key[:2] for key in runs[0]}):
            cells = []
            for step in STEPS:
                parts = [[run[pooling, layer, step][i] for run in runs] for i in range(3)]
                cells.append(" / ".join(_cell(p) for p in parts))
            rose = sum(run[pooling, layer, 20][0] > run[pooling, layer, 1][0] for run in runs)
            print(f"| {pooling} | {layer} | " + " | ".join(cells) + f" | {rose}/{len(runs)} |")


if __name__ == "__main__":
    main()
