"""Cost of the curvature account on the GPT-2 bench model (4 layers, width 128, batch 16 × 32 tokens).

    python -m experiments.bench.curvature [--steps 100] [--repeats 5] [--threads 1]

Prints, for full fine-tuning and for LoRA r=8:

1. the step-time overhead of ``CurvatureMonitor`` measuring every 10 steps (Δu on its default 16 safety examples
   spread over the N = 64, or on all 64 with ``measure_n: all``; ‖P_S δ‖, ‖F^{1/2} P_S δ‖, the update overlap)
   relative to plain AdamW training, two ways: (a) end to end, CPU time of the process per step
   (``time.process_time``, one torch thread, so waiting for a core shared with other jobs is not counted), from the
   first callback's batch start to the last callback's batch end, after a 5-step warm-up, best of ``repeats``
   round-robin runs; (b) the CPU time spent inside the monitor's own per-step hooks over the same steps, per step,
   against the plain step (it has none of the run-to-run noise of (a)) (target ≤ 10 %);
2. the one-time cost at the start of fine-tuning in units of the mean training step: the subspace (N = 64, d = 16:
   per-example gradients, then the Gram matrix, its eigenpairs and the basis) and the AIC diagnostics (gradient and one
   Hessian-vector product on the first batch) (target for the subspace ≤ 10 steps);
3. the memory of the N per-example gradients, N × P × 4 bytes (float32), which is linear in N and in the number P of
   trainable parameters, with two extrapolations.
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch

from experiments.bench.reversion import TokenData
from testbed.curvature import SubspaceSettings, estimate_subspace, per_example_gradients
from testbed.interventions import CurvatureMonitor
from testbed.llm.models import IGNORE_INDEX
from testbed.llm.module import CausalLMModule
from testbed.testing import quiet_trainer

GPT2 = {"n_layer": 4, "n_head": 4, "n_embd": 128, "n_positions": 64}
N, D = 64, 16


class SafetyTokens(TokenData):
    """``TokenData`` with a safety set: N random sequences, the loss on their second half."""

    def __init__(self, vocab: int, n: int = N, seq: int = 32) -> None:
        super().__init__(vocab)
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(3, vocab, (n, seq), generator=gen)
        labels = ids.clone()
        labels[:, : seq // 2] = IGNORE_INDEX
        self.safety = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    def safety_batch(self) -> dict[str, torch.Tensor]:
        return self.safety


class StepClock:
    """Process CPU time per training step: ``start`` goes first in the callback list, ``stop`` last."""

    def __init__(self, warmup: int = 5) -> None:
        self.warmup, self.times, self._t0 = warmup, [], 0.0
        clock = self

        class Start(pl.Callback):
            def on_train_batch_start(self, *args: Any) -> None:
                clock._t0 = time.process_time()

        class Stop(pl.Callback):
            def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
                if trainer.global_step > clock.warmup:
                    clock.times.append(time.process_time() - clock._t0)

        self.start, self.stop = Start(), Stop()

    @property
    def mean(self) -> float:
        return sum(self.times) / len(self.times)


class TimedMonitor(CurvatureMonitor):
    """``CurvatureMonitor`` that adds up the CPU time of its per-step hooks after the warm-up (not the start-up)."""

    def __init__(self, *args: Any, warmup: int = 5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.warmup, self.seconds, self.measurements = warmup, 0.0, 0

    def _timed(self, hook: Any, trainer: pl.Trainer, *args: Any, counted: bool) -> None:
        before, t0 = len(self.history), time.process_time()
        hook(trainer, *args)
        if counted:
            self.seconds += time.process_time() - t0
            self.measurements += len(self.history) - before

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == 0:  # the AIC diagnostics: a one-time cost, reported apart
            return super().on_train_batch_start(trainer, *args)
        # the steps StepClock times: global_step > warm-up at their end, so >= warm-up at their start
        self._timed(super().on_train_batch_start, trainer, *args, counted=trainer.global_step >= self.warmup)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._timed(super().on_train_batch_end, trainer, *args, counted=trainer.global_step > self.warmup)


def step_time(model: CausalLMModule, data: SafetyTokens, callbacks: list[pl.Callback], steps: int) -> tuple[float, int]:
    """Mean CPU seconds per timed step, and the number of timed steps."""
    gc.collect()
    clock = StepClock()
    quiet_trainer(steps, [clock.start, *callbacks, clock.stop]).fit(copy.deepcopy(model), data)
    return clock.mean, len(clock.times)


def one_time_costs(model: CausalLMModule, data: SafetyTokens) -> dict[str, float]:
    """Seconds of CPU time (after one untimed warm-up estimate): per-example gradients by vmap and by a loop, the
    whole subspace estimate (vmap, then the Gram matrix, its eigenpairs and the basis), the diagnostics' grad + HVP."""
    from testbed.curvature import LossHVP
    from testbed.probes import probe_mode

    module, safety = copy.deepcopy(model), data.safety_batch()
    estimate_subspace(module, safety, SubspaceSettings(d=D))
    costs = {}
    for method in ("vmap", "loop"):
        t0 = time.process_time()
        per_example_gradients(module, safety, method=method)
        costs[method] = time.process_time() - t0
    t0 = time.process_time()
    estimate_subspace(module, safety, SubspaceSettings(d=D))
    costs["subspace"] = time.process_time() - t0
    batch = next(iter(data.train_dataloader()))
    params = [p for _, p in module.trainable_parameters()]
    t0 = time.process_time()
    with probe_mode(module, grad=True), module.curvature_mode():
        hvp = LossHVP(lambda: module.task_loss(batch), params)
        hvp(hvp.grad)
    costs["diagnostics"] = time.process_time() - t0
    return costs


ARMS = {"monitor (default: Δu on 16 of the 64)": {}, "monitor, measure_n: all (Δu on all 64)": {"measure_n": "all"}}


def bench(name: str, model: CausalLMModule, data: SafetyTokens, steps: int, repeats: int) -> None:
    best: dict[str, float] = {}
    hooks: dict[str, list[float]] = {arm: [] for arm in ARMS}
    order = ["plain", *ARMS]
    for rep in range(repeats):
        for arm in order[rep % len(order) :] + order[: rep % len(order)]:
            monitor = None if arm == "plain" else TimedMonitor(
                {"d": D}, every_n_steps=10, fit_window=(1, 10), save=False, **ARMS[arm])  # fmt: skip
            mean, timed = step_time(model, data, [] if monitor is None else [monitor], steps)
            best[arm] = min(best.get(arm, float("inf")), mean)
            if monitor is not None:
                hooks[arm].append(monitor.seconds / timed)
                measurements = monitor.measurements
    costs = min((one_time_costs(model, data) for _ in range(repeats)), key=lambda c: c["subspace"])
    params = sum(p.numel() for _, p in model.trainable_parameters())
    step = best["plain"]
    print(f"\n{name}: P = {params:,} trainable parameters, {steps} steps ({measurements} measurements timed), "
          f"best of {repeats}")  # fmt: skip
    print(f"  plain step: {1000 * step:.1f} ms CPU")
    for arm in ARMS:
        inside = sorted(hooks[arm])[len(hooks[arm]) // 2]
        print(f"  curvature {arm}, every 10 steps: end to end {1000 * best[arm]:.1f} ms/step = "
              f"{100 * (best[arm] / step - 1):+.1f} %; inside its hooks {1000 * inside:.2f} ms/step = "
              f"{100 * inside / step:+.1f} % (median of {repeats}; target <= 10 %)")  # fmt: skip
    print(f"  one-time subspace (N = {N}, d = {D}): {costs['subspace']:.2f} s = {costs['subspace'] / step:.1f} steps "
          f"(target <= 10); per-example gradients alone: vmap {costs['vmap'] / step:.1f} steps, loop "
          f"{costs['loop'] / step:.1f} steps")  # fmt: skip
    diagnostics = costs["diagnostics"] / step
    print(f"  one-time AIC diagnostics (gradient + one HVP on the first batch): {diagnostics:.1f} steps")
    print(f"  per-example gradients: N x P x 4 bytes = {N} x {params:,} x 4 = {N * params * 4 / 2**20:.1f} MiB "
          "(linear in N and in P)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    from testbed.__main__ import quiet_third_party

    quiet_third_party()
    pl.seed_everything(0, verbose=False)
    data = SafetyTokens(vocab=512)
    bench("GPT-2 4x128, full fine-tuning", CausalLMModule(model="gpt2", model_config=GPT2, vocab_size=512), data,
          args.steps, args.repeats)  # fmt: skip
    bench("GPT-2 4x128, LoRA r=8 (peft's default targets: c_attn)",
          CausalLMModule(model="gpt2", model_config=GPT2, vocab_size=512, lora={"r": 8, "alpha": 16}), data,
          args.steps, args.repeats)  # fmt: skip
    lora_7b = 32 * 4 * 2 * 4096 * 16  # Llama-7B, LoRA r=16 on q/k/v/o: 32 layers × 4 projections × (A + B)
    print(f"\nscaling: memory = N x P x 4 bytes; e.g. N = 64 with LoRA r=16 on a 7B Llama (P = {lora_7b / 1e6:.1f} M) "
          f"needs {N * lora_7b * 4 / 2**30:.1f} GiB, full fine-tuning of 7B parameters {N * 7e9 * 4 / 2**40:.1f} TiB "
          "(at that scale use LoRA, fewer examples, or a block of the parameters)")  # fmt: skip


if __name__ == "__main__":
    main()
