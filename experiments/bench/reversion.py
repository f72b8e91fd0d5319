"""Step-time overhead of the reversion layer's callbacks relative to plain training.

    python experiments/bench/reversion.py [--steps 60] [--toy-steps 300] [--repeats 2]
    python experiments/bench/reversion.py --only update-proj --no-lora   # the cost per rank of the constraint sets

Models: the gravity toy (``GravityMLP``, batch 64, 64 probe inputs: probe batch = training batch) and a small
transformers model (``CausalLMModule``, GPT-2 config, 4 layers, width 128, batch 16, 16 probe prompts; LoRA r=8 as
a second case).
Per arm: the mean CPU time of the process per training step (``on_train_batch_start`` to the end of
``on_train_batch_end``, after all other callbacks; ``time.process_time`` with one torch thread, so waiting for a core
shared with other jobs is not counted), the best of ``repeats`` round-robin runs after a 5-step warm-up;
overhead = step time / plain step time - 1. Wall-clock means are printed beside.
Targets: monitor at cadence 10 <= 10 %, update projection every step <= 50 %.

J costs one forward and backward pass on its probe batch, so the blocker is also timed with J on a quarter of the
probe set (``jacobian_probe_size``) and with J recomputed every 10 steps. For those the table prints the leak: the
first-order motion along v_rev on the *full* probe set, mean_t |J_t·Δθ_t|, relative to plain training (separate,
untimed runs of the same steps; exact blocking gives ~0 %). A blocker that holds only the mean lets single probe
inputs move, so the table also prints the per-input leak, mean_t mean_i |J_t,i·Δθ_t| relative to plain (over the
first 20 steps), and times the constraint sets by rank: ``clusters`` of rank 2, 4 and 8 and ``examples`` (one
constraint per probe input). The one-sided reversion objective (block, relative strength 0.3) is timed beside.
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from testbed.directions import extract_direction
from testbed.interventions import (
    ActivationClamp,
    DirectionCallback,
    GradientProjectionBlocker,
    L2Anchor,
    ObjectiveSettings,
    ProjectionSettings,
    RepresentationPenalty,
    ReversionMonitor,
    ReversionObjective,
    UpdateProjectionBlocker,
)
from testbed.probes import ProbeSet
from testbed.protocol import TestbedDataModule
from testbed.testing import quiet_trainer
from toy_models.gravity import GravityData, GravityMLP


class StepTimer(pl.Callback):
    """Wall time of each training step, skipping ``warmup`` steps."""

    def __init__(self, warmup: int = 5) -> None:
        self.warmup, self.cpu, self.wall = warmup, [], []
        self._c0 = self._w0 = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._c0, self._w0 = time.process_time(), time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step > self.warmup:
            self.cpu.append(time.process_time() - self._c0)
            self.wall.append(time.perf_counter() - self._w0)


class TokenData(TestbedDataModule):
    """Random token batches with labels, and a fixed probe batch (for the transformers benchmark)."""

    def __init__(self, vocab: int, batch_size: int = 16, seq: int = 32, probe: int = 16) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(3, vocab, (batch_size * 8, seq), generator=gen)
        self.rows = [{"input_ids": i, "attention_mask": torch.ones(seq, dtype=torch.long), "labels": i} for i in ids]
        self.batch_size = batch_size
        self.probe = {
            "input_ids": torch.randint(3, vocab, (probe, seq), generator=gen),
            "attention_mask": torch.ones(probe, seq, dtype=torch.long),
        }

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.rows, batch_size=self.batch_size, shuffle=True)

    def probe_batch(self) -> dict[str, torch.Tensor]:
        return self.probe


class FirstOrderLeak(DirectionCallback):
    """Records |J·Δθ| per step (J of the mean probe representation, at the pre-step weights; the blockers' callbacks
    run first) and mean_i |J_i·Δθ| (J_i of each probe input's representation) for the first ``per_input_steps``."""

    def __init__(self, direction: str, per_input_steps: int = 20) -> None:
        super().__init__(direction)
        self.per_input_steps = per_input_steps
        self.moves: list[float] = []
        self.input_moves: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        params = [p for _, p in module.trainable_parameters()]
        reps = self.probe.read(module, self.layers, self.pooling, grad=True)
        per_input = sum((reps[k] - self.reference_mean[k]) @ self.vectors[k] for k in self.layers)  # [B]
        rows = [per_input.mean()] + (list(per_input) if trainer.global_step < self.per_input_steps else [])
        self._jacs = []
        for i, row in enumerate(rows):
            grads = torch.autograd.grad(row, params, retain_graph=i < len(rows) - 1, allow_unused=True)
            self._jacs.append([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)])
        self._before = [p.detach().clone() for p in params]

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        params = [p for _, p in module.trainable_parameters()]
        moves = [abs(sum(float((j * (p.detach() - b)).sum()) for j, p, b in zip(jac, params, self._before,
                                                                                 strict=True)))
                 for jac in self._jacs]  # fmt: skip
        self.moves.append(moves[0])
        if len(moves) > 1:
            self.input_moves.append(sum(moves[1:]) / (len(moves) - 1))


def arms(path: str, probe_size: int) -> dict[str, Any]:
    quarter = max(1, probe_size // 4)
    return {
        "plain": lambda: [],
        "monitor@1": lambda: [ReversionMonitor(path, every_n_steps=1)],
        "monitor@10": lambda: [ReversionMonitor(path, every_n_steps=10)],
        "update-projection": lambda: [UpdateProjectionBlocker(path)],
        f"update-proj., J on {quarter}": lambda: [
            UpdateProjectionBlocker(path, ProjectionSettings(jacobian_probe_size=quarter))
        ],
        "update-projection@10": lambda: [UpdateProjectionBlocker(path, ProjectionSettings(every_n_steps=10))],
        **{f"update-proj. clusters r={r}": (lambda r=r: [UpdateProjectionBlocker(
            path, ProjectionSettings(constraints="clusters", rank=r))]) for r in (2, 4, 8)},
        f"update-proj. examples r={probe_size}": lambda: [UpdateProjectionBlocker(
            path, ProjectionSettings(constraints="examples"))],
        "objective block 0.3": lambda: [ReversionObjective(path, ObjectiveSettings(strength=0.3))],
        "gradient-projection": lambda: [GradientProjectionBlocker(path)],
        "penalty": lambda: [RepresentationPenalty(path, strength=1.0)],
        "clamp": lambda: [ActivationClamp(path)],
        "l2-anchor": lambda: [L2Anchor(strength=1.0)],
    }


def step_time(model: pl.LightningModule, dm: Any, callbacks: list[pl.Callback], steps: int) -> tuple[float, float]:
    gc.collect()  # start every timed run with the same heap (otherwise later arms pay for earlier runs' garbage)
    timer = StepTimer()
    quiet_trainer(steps, [*callbacks, timer]).fit(copy.deepcopy(model), dm)
    return sum(timer.cpu) / len(timer.cpu), sum(timer.wall) / len(timer.wall)


def leak(model: pl.LightningModule, dm: Any, path: str, blocker: list[pl.Callback], steps: int
         ) -> tuple[float, float]:
    """(mean |J·Δθ| on the full probe set, mean per-input |J_i·Δθ|), each as a share of plain training's."""
    moves, inputs = [], []
    for callbacks in ([], blocker):
        recorder = FirstOrderLeak(path)
        pl.seed_everything(0, verbose=False)
        quiet_trainer(steps, [*callbacks, recorder]).fit(copy.deepcopy(model), dm)
        moves.append(sum(recorder.moves) / len(recorder.moves))
        inputs.append(sum(recorder.input_moves) / len(recorder.input_moves))
    return moves[1] / moves[0], inputs[1] / inputs[0]


def bench(name: str, model: pl.LightningModule, dm: Any, layer: str, steps: int, repeats: int,
          only: str | None = None) -> None:
    pl.seed_everything(0, verbose=False)  # the stand-in witness below, hence v_rev, is the same whatever ran before
    witness = copy.deepcopy(model)
    with torch.no_grad():
        for p in witness.parameters():
            p.add_(0.01 * torch.randn_like(p))
    tmp = Path(tempfile.mkdtemp())
    path = str(extract_direction(witness, model, ProbeSet(dm.probe_batch()), [layer]).save(tmp / "v.pt"))
    cpu: dict[str, float] = {}
    wall: dict[str, float] = {}
    made = {k: v for k, v in arms(path, ProbeSet(dm.probe_batch()).size).items()
            if only is None or k == "plain" or k.startswith(only)}  # fmt: skip
    names = list(made)
    for rep in range(repeats):  # round-robin, rotated, so load bursts and run order hit every arm alike
        for arm in names[rep % len(names) :] + names[: rep % len(names)]:
            make = made[arm]
            c, w = step_time(model, dm, make(), steps)
            cpu[arm], wall[arm] = min(cpu.get(arm, c), c), min(wall.get(arm, w), w)
    print(f"\n{name}  (layer {layer}, {steps} steps, best of {repeats})")
    print(f"{'arm':<30}{'cpu ms/step':>12}{'overhead':>10}{'wall ms/step':>14}{'leak':>8}{'per input':>11}")
    for arm in names:
        mean, per_input = leak(model, dm, path, made[arm](), steps) if arm.startswith("update-") else (None, None)
        shares = f"{100 * mean:>7.1f}%{100 * per_input:>10.1f}%" if mean is not None else ""
        print(f"{arm:<30}{1000 * cpu[arm]:>12.2f}{100 * (cpu[arm] / cpu['plain'] - 1):>9.1f}%"
              f"{1000 * wall[arm]:>14.2f}{shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description="reversion-layer step-time overhead")
    parser.add_argument("--steps", type=int, default=60, help="steps per run on the transformers models")
    parser.add_argument(
        "--toy-steps", type=int, default=300, help="steps per run on the toy (3 ms steps: more for a stable mean)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=None, help="time only the arms whose name starts with this (and plain), "
                        "e.g. 'update-proj' for the cost per rank of the constraint sets")
    parser.add_argument("--no-lora", action="store_true", help="skip the LoRA case")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    pl.seed_everything(0, verbose=False)
    bench(
        "gravity toy (GravityMLP 32-64-64-5, batch 64, probe 64)",
        GravityMLP(),
        GravityData(phase="finetune", n_train=6400, probe_size=64),
        "blocks.1.hidden",
        args.toy_steps,
        args.repeats,
        args.only,
    )

    from testbed.llm.module import CausalLMModule

    cfg = {"n_layer": 4, "n_head": 4, "n_embd": 128, "n_positions": 64}
    dm = TokenData(vocab=512)
    bench(
        "transformers GPT-2 (4 layers, width 128, batch 16x32 tokens, probe 16), full fine-tune",
        CausalLMModule(model="gpt2", model_config=cfg, vocab_size=512),
        dm,
        "blocks.2.resid_post",
        args.steps,
        args.repeats,
        args.only,
    )
    if args.no_lora:
        return
    bench(
        "transformers GPT-2 (same), LoRA r=8 on c_attn/c_proj",
        CausalLMModule(model="gpt2", model_config=cfg, vocab_size=512, lora={"r": 8, "alpha": 16}),
        dm,
        "blocks.2.resid_post",
        args.steps,
        args.repeats,
        args.only,
    )


if __name__ == "__main__":
    main()
