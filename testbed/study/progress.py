"""A compact one-line progress display for long studies: which run (phase, arm, seed), which step, the loss.

On a terminal the line is redrawn in place; in a log file a line is printed at most every ``every_s`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import pytorch_lightning as pl

__all__ = ["StudyProgress", "format_metrics"]


def format_metrics(metrics: dict[str, Any], names: tuple[str, ...], limit: int = 2) -> str:
    """``name=value`` for the first ``limit`` of ``names`` present in ``metrics`` (falling back to train/*)."""
    chosen = [n for n in names if n in metrics] or sorted(n for n in metrics if n.startswith("train/"))
    parts = []
    for name in chosen[:limit]:
        try:
            parts.append(f"{name}={float(metrics[name]):.4g}")
        except (TypeError, ValueError):
            continue
    return " ".join(parts)


class StudyProgress(pl.Callback):
    """Print ``[k/N] phase arm=... seed=s  step i/T  train/loss=...  (elapsed)`` while a run trains.

    Args:
        label: what the run is, e.g. ``[3/12] finetune arm=blocked seed=1``.
        every_s: minimum seconds between lines when the stream is not a terminal.
        metrics: metric names to show, first found first.
        stream: where to print (default ``sys.stdout``, beside the study's own lines).
    """

    def __init__(
        self,
        label: str,
        every_s: float = 10.0,
        metrics: tuple[str, ...] = ("train/loss", "align/loss"),
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.every_s = every_s
        self.metrics = metrics
        self.stream = stream or sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0 = 0.0
        self._last = 0.0
        self._total = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = self._last = time.monotonic()
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        self._total = int(total) if total not in (None, float("inf")) else 0
        self._print(trainer, final=False)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last >= (0.2 if self.live else self.every_s):
            self._last = now
            self._print(trainer, final=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print(trainer, final=True)

    def line(self, trainer: pl.Trainer) -> str:
        step = trainer.global_step
        of = f"/{self._total} ({100 * step / self._total:.0f}%)" if self._total else ""
        shown = format_metrics(dict(trainer.callback_metrics), self.metrics)
        return f"{self.label}  step {step}{of}  {shown}  ({time.monotonic() - self._t0:.1f}s)".rstrip()

    def _print(self, trainer: pl.Trainer, final: bool) -> None:
        text = self.line(trainer)
        if self.live:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
