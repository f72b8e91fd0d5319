"""LLM-track benchmark: wall time of one seed of the safety-world history, and tokens/s with and without blocking.

    python experiments/bench/llm.py                 # all parts below that fit the machine
    python experiments/bench/llm.py --part history  # pre-train, align, plain + update-projection fine-tune (1 seed)
    python experiments/bench/llm.py --part study [--llama] [--seeds 0 1 2 3 4]   # the whole study, every arm
        (with one seed, --seeds 0, the matched null is left out: it is built from the other seeds)
    python experiments/bench/llm.py --part study --from runs/llm_safety          # times of a study already run
    python experiments/bench/llm.py --part tokens   # tokens/s: plain vs monitor + update projection (safety world)
    python experiments/bench/llm.py --part lora     # LoRA fine-tune of the largest recipe that fits (GPU), ± blocking

Figures are printed with the machine's load average (the CPU may be shared) and the CPU time of the process and
its children. On a shared machine run with one thread per process (``OMP_NUM_THREADS=1``): with two threads on two
busy cores the study ran about 9x slower in wall time (one GPT-2 seed, every arm: 1272 s at load 7 with 2 threads,
137 s at load 2-3 with 1 thread), and spinning threads inflate the CPU time too. On CPU, ``--part lora`` runs a tiny
model with a recipe's settings to exercise the code path; on a CUDA device it builds the recipes' architectures
(experiments/recipes/; randomly initialised, no download) from large to small, keeps the largest that trains without
running out of memory, and measures LoRA fine-tuning tokens/s with that recipe's settings (bf16, LoRA, batch, length,
gradient checkpointing): plain vs monitor vs monitor + update projection.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from testbed.llm.models import IGNORE_INDEX  # noqa: E402
from testbed.llm.module import CausalLMModule  # noqa: E402
from testbed.optim import OptimizerSettings  # noqa: E402
from testbed.protocol import TestbedDataModule  # noqa: E402

LADDER_GPU = [  # (hidden, layers, heads, kv heads, intermediate): ~13B, ~7B, ~3B, ~1B parameters
    (5120, 40, 40, 8, 13824), (4096, 32, 32, 8, 11008), (3072, 26, 24, 8, 8192), (2048, 22, 16, 4, 5632),
]  # fmt: skip
LADDER_CPU = [(128, 4, 4, 2, 256), (64, 2, 4, 2, 128)]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---- part 1: one seed of the whole history, or the whole study --------------------------------------------------
def phase_times(root: Path, wall: float | None = None, cpu: float | None = None) -> None:
    """Seconds per phase and arm of a study folder (from the runs' DONE.json), summed and per seed."""
    runs: dict[str, list[float]] = {}
    for done in sorted(root.rglob("DONE.json"), key=lambda p: p.stat().st_mtime):
        info = json.loads(done.read_text())
        if "phase" not in info:
            continue
        label = info["phase"] if info["arm"] is None else f"{info['phase']}[{info['arm']}]"
        runs.setdefault(label, []).append(info["seconds"])
    for label, seconds in runs.items():
        print(f"  {label:<44} {sum(seconds):7.1f} s wall in all, {sum(seconds) / len(seconds):6.1f} s per seed "
              f"({len(seconds)} seed(s))")
    total = sum(sum(v) for v in runs.values())
    print(f"  {'runs in all':<44} {total:7.1f} s wall")
    if wall is not None:
        print(f"  {'directions, planning and start-up':<44} {wall - total:7.1f} s wall")
        print(f"  {'total':<44} {wall:7.1f} s wall, {cpu:7.1f} s CPU (this process and its children, all "
              f"threads); load average after {load()}  (target for the whole study: ≤ 900 s)")


def _cpu() -> float:
    """CPU seconds of this process and its finished children (user + system, all threads)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_history(arms: tuple[str, ...] | None = ("plain", "update_projection"), seeds: tuple[int, ...] = (0,),
                  llama: bool = False) -> None:
    """Run the LLM study (``arms``: these arms only, or every arm and sweep point) into a temporary folder and print
    the time per phase."""
    from testbed.__main__ import main as testbed_main

    here = REPO / "experiments/llm_safety"
    study = yaml.safe_load((here / "study.yaml").read_text())
    study.update(name="bench_history", seeds=list(seeds))
    if arms is not None:
        study.update(arms={k: study["arms"][k] for k in arms}, sweeps={})
    if len(seeds) < 2:  # a matched null is built from the other seeds' histories: none to build it from
        nulls = [k for k, d in study["directions"].items() if d.get("kind") == "matched_null"]
        for name in nulls:
            del study["directions"][name]
        for callback in study["final"].get("callbacks", []):
            if callback.get("init_args", {}).get("matched_null") in [f"{{directions.{n}}}" for n in nulls]:
                del callback["init_args"]["matched_null"]
    for phase in study["phases"] + [study["final"]]:
        phase["config"] = str(here / phase["config"])
    study["report"] = str(here / study["report"])
    variant = ["--config", str(here / "llama.yaml")] if llama else []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(study))
        print(f"study ({'Llama' if llama else 'GPT-2'} configuration, seeds {list(seeds)}, "
              f"{'arms ' + ', '.join(arms) if arms else 'every arm'}): load average before {load()}, "
              f"torch threads {torch.get_num_threads()}")
        wall0, cpu0 = time.perf_counter(), _cpu()
        testbed_main(["study", "--config", str(path), *variant, "--runs_dir", str(Path(tmp) / "runs"),
                      "--quiet", "true"])
        wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
        phase_times(next(p for p in (Path(tmp) / "runs").iterdir() if p.is_dir()), wall, cpu)


# ---- part 2: tokens/s on the safety world ---------------------------------------------------------------------
class TokenTimer(pl.Callback):
    """Counts real (non-pad) tokens of training batches and times the training loop."""

    def __init__(self) -> None:
        self.tokens, self.start, self.seconds = 0, 0.0, 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *_: Any) -> None:
        self.tokens += int(batch["attention_mask"].sum())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start


def _direction_file(module: CausalLMModule, datamodule: Any, layers: list[str], path: Path) -> str:
    """A v_rev-shaped direction from the module and a slightly perturbed copy (throughput does not depend on it)."""
    import copy

    from testbed.directions import Extraction, extract_direction

    other = copy.deepcopy(module)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    extract_direction(other, module, datamodule.probe_batch(), layers, Extraction(pooling="last")).save(path)
    del other
    return str(path)


def _fit(module: CausalLMModule, datamodule: Any, steps: int, callbacks: list, **trainer_kwargs: Any) -> TokenTimer:
    timer = TokenTimer()
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[timer, *callbacks],
                         **trainer_kwargs)  # fmt: skip
    trainer.fit(module, datamodule)
    return timer


def _arms(direction: str) -> dict[str, list]:
    from testbed.interventions import ReversionMonitor, UpdateProjectionBlocker

    return {
        "plain": [],
        "monitor(10)": [ReversionMonitor(direction, every_n_steps=10)],
        "monitor(10)+update_projection": [ReversionMonitor(direction, every_n_steps=10),
                                          UpdateProjectionBlocker(direction)],  # fmt: skip
    }


def bench_tokens(steps: int = 40) -> None:
    from testbed.llm import SafetyWorldDataModule

    pl.seed_everything(0)
    config = yaml.safe_load((REPO / "experiments/llm_safety/finetune.yaml").read_text())["model"]["init_args"]
    datamodule = SafetyWorldDataModule(phase="finetune")
    with tempfile.TemporaryDirectory() as tmp:
        base = CausalLMModule(model=config["model"], optimizer=OptimizerSettings(**config["optimizer"]))
        initial = {k: v.clone() for k, v in base.state_dict().items()}
        datamodule.setup("fit")
        direction = _direction_file(base, datamodule, ["blocks.0.resid_post", "blocks.1.resid_post"],
                                    Path(tmp) / "v.pt")  # fmt: skip
        print(f"tokens/s, safety-world fine-tune, default model, {steps} steps, load average {load()}")
        _fit(base, datamodule, 3, [])  # warm-up, on a throwaway copy of the weights below
        baseline = None
        for name, callbacks in _arms(direction).items():
            pl.seed_everything(0)
            module = CausalLMModule(model=config["model"], optimizer=OptimizerSettings(**config["optimizer"]))
            module.load_state_dict(initial)
            timer = _fit(module, datamodule, steps, callbacks)
            rate = timer.tokens / timer.seconds
            baseline = baseline or rate
            print(f"  {name:<32} {rate:9.0f} tokens/s  ({timer.seconds:.1f} s; {rate / baseline:.2f}× plain)")


# ---- part 3: LoRA on the largest recipe that fits -----------------------------------------------------------------
# The recipes' architectures (experiments/recipes/), largest first, as randomly initialised Llama-layout models (no
# download; the Qwen models' attention biases and q/k norms are left out, which does not change the cost much):
# (recipe, hidden, layers, heads, kv heads, intermediate, vocabulary).
RECIPE_ARCHS = [
    ("llama31_8b", 4096, 32, 32, 8, 14336, 128256), ("llama32_3b", 3072, 28, 24, 8, 8192, 128256),
    ("qwen25_3b", 2048, 36, 16, 2, 11008, 151936), ("qwen3_1_7b", 2048, 28, 16, 8, 6144, 151936),
]  # fmt: skip
CPU_ARCH = ("llama32_3b", 64, 2, 4, 2, 128, 512)  # CPU: a tiny model with the recipe's settings (code path only)


class RandomTokens(TestbedDataModule):
    """Random token sequences of fixed length: LM loss on the second half (the 'response')."""

    def __init__(self, vocab: int, length: int, batch_size: int, n: int = 1024) -> None:
        super().__init__()
        self.vocab, self.length, self.batch_size, self.n = vocab, length, batch_size, n
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, vocab, (n, length), generator=g)

    def _batch(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        labels = ids.clone()
        labels[:, : self.length // 2] = IGNORE_INDEX
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    def train_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(self.ids, batch_size=self.batch_size, collate_fn=lambda r: self._batch(
            torch.stack(r)))  # fmt: skip

    def probe_batch(self) -> dict[str, torch.Tensor]:
        ids = self.ids[:8, : self.length // 2]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def recipe_settings(name: str) -> dict[str, Any]:
    """The recipe's LoRA, optimizer, gradient checkpointing, batch size, sequence length and precision."""
    recipe = yaml.safe_load((REPO / "experiments/recipes" / f"{name}.yaml").read_text())
    model, data = recipe["model"]["init_args"], recipe["data"]["init_args"]
    return {"lora": model["lora"], "optimizer": model["optimizer"], "checkpointing": model["gradient_checkpointing"],
            "batch": data["batch_size"], "length": data["max_length"], "precision": recipe["trainer"]["precision"]}


def _recipe_model(arch: tuple, settings: dict[str, Any]) -> CausalLMModule:
    _, hidden, layers, heads, kv, inter, vocab = arch
    cfg = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
           "intermediate_size": inter, "max_position_embeddings": max(4096, settings["length"])}  # fmt: skip
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        return CausalLMModule(model="llama", model_config=cfg, vocab_size=vocab, lora=settings["lora"],
                              optimizer=OptimizerSettings(**settings["optimizer"]),
                              gradient_checkpointing=settings["checkpointing"])  # fmt: skip


def bench_lora(steps: int = 10) -> dict[str, Any]:
    """Tokens/s of the largest recipe that fits (GPU) or of a tiny model with a recipe's settings (CPU)."""
    cuda = torch.cuda.is_available()
    ladder = RECIPE_ARCHS if cuda else [CPU_ARCH]
    device = torch.cuda.get_device_name(0) if cuda else "CPU (no CUDA device: a tiny model exercises the code path)"
    for arch in ladder:
        settings = recipe_settings(arch[0])
        length, batch = (settings["length"], settings["batch"]) if cuda else (64, 4)
        kwargs: dict[str, Any] = {}
        if cuda:
            kwargs = {"accelerator": "gpu", "devices": 1, "precision": settings["precision"]}
        try:
            with tempfile.TemporaryDirectory() as tmp:
                module = _recipe_model(arch, settings)
                if cuda:
                    module = module.to(torch.bfloat16)
                n_params = sum(p.numel() for p in module.parameters())
                data = RandomTokens(arch[-1], length, batch)
                direction = _direction_file(module, data, [f"blocks.{arch[2] // 2}.resid_post"], Path(tmp) / "v.pt")
                _fit(module, data, 2, [], **kwargs)  # warm-up (allocator, kernels)
                rates = {name: (lambda t: t.tokens / t.seconds)(_fit(module, data, steps, callbacks, **kwargs))
                         for name, callbacks in _arms(direction).items()}  # fmt: skip
                peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        except torch.cuda.OutOfMemoryError:
            print(f"  {arch[0]}: out of memory, trying the next recipe")
            module = None
            torch.cuda.empty_cache()
            continue
        print(f"LoRA fine-tune tokens/s on {device}: recipe {arch[0]} ({n_params / 1e9:.2f} B params, r="
              f"{settings['lora']['r']}, batch {batch} x {length}, {kwargs.get('precision', '32-true')}, gradient "
              f"checkpointing {settings['checkpointing']}), peak {peak:.1f} GiB, load average {load()}")  # fmt: skip
        for name, rate in rates.items():
            print(f"  {name:<32} {rate:9.0f} tokens/s  ({rate / rates['plain']:.2f}x plain)")
        return {"recipe": arch[0], "params": n_params, "peak_gib": peak, "tokens_per_s": rates}
    print("  no recipe fits this device")
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["history", "study", "tokens", "lora", "all"], default="all")
    parser.add_argument("--steps", type=int, default=40, help="steps per tokens/s measurement")
    parser.add_argument("--llama", action="store_true", help="study: the Llama configuration (llama.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="study: the seeds")
    parser.add_argument("--from", dest="source", type=Path, help="study: print the times of this study folder")
    args = parser.parse_args()
    from testbed.__main__ import quiet_third_party

    quiet_third_party()  # offline, no Lightning tips
    if args.part in ("tokens", "all"):
        bench_tokens(args.steps)
    if args.part in ("lora", "all"):
        bench_lora(max(3, args.steps // 4))
    if args.part in ("history", "all"):
        bench_history()
    if args.part == "study":
        if args.source is not None:
            print(f"study {args.source}:")
            phase_times(args.source)
        else:
            bench_history(None, tuple(args.seeds), args.llama)


if __name__ == "__main__":
    main()
