"""The reversion monitor: how the probe representations drift relative to v_rev, against the isotropic null.

At measured steps it logs, per layer, under ``reversion/``: ``cos_drift_vrev`` (cos of drift = m_l(θ) − m_l^ref
with v_l), ``drift_along`` (<drift, v_l>), ``drift_orth_norm``, the 0/1 indicators ``exceeds_null_p99`` /
``_p999`` (cos above the exact isotropic null's quantile for the layer width, ``theory.null``) and the running
``exceed_frac_*``. With a matched empirical null (``matched_null``: null directions built the way v_rev is, see
``testbed.nulls``) it also logs the null's quantile ``null_matched_p99`` (and ``_p999``) at each measured step, the
indicators ``exceeds_null_matched_p99`` / ``_p999`` and ``exceed_frac_matched_*``. It never touches training:
weights are bit-identical with and without it. Under DDP each process reads its shard of the probe batch and the sums
are reduced (``testbed.metrics.DriftAlignment``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch

from testbed.errors import ConfigError, fraction, one_of, positive_int
from testbed.interventions.base import DirectionCallback, DirectionSource
from testbed.metrics import NULL_LEVELS, DriftAlignment, EmpiricalNullExceedance, NullExceedance, level_name
from testbed.nulls import NullDirections, load_null_directions
from testbed.step_log import log_at_step
from testbed.strategies import ALL_FAMILIES
from testbed.tags import REVERSION, tag

__all__ = ["ReversionMonitor"]


class ReversionMonitor(DirectionCallback):
    """Log drift alignment with v_rev and null exceedance at a cadence, without touching training.

    Measured after the first update (step 1), at every multiple of ``every_n_steps``, at the extra ``steps``, and
    at the end of training; each measurement is also kept in ``self.history``.

    Args:
        direction: the direction to measure against (``random: true`` for a random-direction control).
        every_n_steps: measurement cadence in optimizer steps.
        steps: extra steps at which to measure.
        reference: ``start`` (mean representation at the start of this run) or ``file`` (the file's reference mean).
        null_levels: isotropic-null quantiles for the exceedance indicators.
        shard_probe: under multi-process training each rank reads its shard of the probe batch; the sums are reduced.
        task_keys: keys of ``trainer.callback_metrics`` (e.g. ``train/loss``) recorded in ``history``.
        matched_null: a null-direction file (``testbed.nulls``; a study's ``{directions.<name>}`` of kind
            ``matched_null``) for the matched empirical null beside the isotropic one.
    """

    supported_strategies: ClassVar[frozenset[str]] = ALL_FAMILIES

    def __init__(
        self,
        direction: DirectionSource,
        every_n_steps: int = 10,
        steps: list[int] | None = None,
        reference: Literal["start", "file"] = "start",
        null_levels: list[float] | None = None,
        shard_probe: bool = True,
        task_keys: list[str] | None = None,
        matched_null: str | None = None,
    ) -> None:
        super().__init__(direction)
        self.every_n_steps = positive_int("every_n_steps", every_n_steps)
        self.steps = {positive_int("monitor steps", s) for s in (steps or [])}
        self.reference = one_of("reference", reference, ("start", "file"))
        self.null_levels = tuple(fraction("null level", p, open_low=True, open_high=True)
                                 for p in (null_levels or NULL_LEVELS))  # fmt: skip
        self.shard_probe = shard_probe
        self.task_keys = list(task_keys if task_keys is not None else ["train/loss"])
        if matched_null is not None and (not isinstance(matched_null, str) or not matched_null):
            raise ConfigError(f"matched_null must be a null-direction file path, got {matched_null!r}")
        self.matched_null_path = matched_null
        self.matched_null: NullDirections | None = None
        self.matched: dict[str, EmpiricalNullExceedance] = {}
        self.history: list[dict[str, float]] = []
        self.nulls: dict[str, NullExceedance] = {}
        self._drift: dict[str, DriftAlignment] = {}
        self._last_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.matched_null_path is not None:
            self.matched_null = load_null_directions(self.matched_null_path, pl_module, self.probe, self.layers)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        restored = self._restored
        super().on_train_start(trainer, pl_module)
        if self.reference == "file" and restored is None:
            if not self.directions.reference_mean:
                raise ConfigError(f"{self.source.path} holds no reference mean; use reference: start")
            self.reference_mean = {k: self.directions.reference_mean[k].to(pl_module.device) for k in self.layers}
        self._drift = {}
        # The per-step cos is already global after the drift metric's sync, so the exceedance counters are not synced.
        self.nulls = {
            k: NullExceedance(self.directions.width(k), self.null_levels, sync_on_compute=False).to(pl_module.device)
            for k in self.layers
        }
        if self.matched_null is not None:
            self.matched = {k: EmpiricalNullExceedance(self.matched_null.vectors[k], self.null_levels,
                                                       sync_on_compute=False).to(pl_module.device)
                            for k in self.layers}  # fmt: skip
        for k, (exceed, total) in (restored or {}).get("null_counts", {}).items():
            self.nulls[k].exceed.copy_(exceed)
            self.nulls[k].total.copy_(total)
        for k, (exceed, total) in (restored or {}).get("matched_counts", {}).items():
            if k in self.matched:
                self.matched[k].exceed.copy_(exceed)
                self.matched[k].total.copy_(total)

    def _drift_metric(self, layer: str, shard: bool, device: torch.device) -> DriftAlignment:
        """One drift metric per layer, built once (its reference and direction are fixed for the run)."""
        if layer not in self._drift:
            self._drift[layer] = DriftAlignment(
                self.vectors[layer], self.reference_mean[layer], sync_on_compute=shard
            ).to(device)
        return self._drift[layer]

    def _due(self, step: int) -> bool:
        return step >= 1 and (step == 1 or step % self.every_n_steps == 0 or step in self.steps)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Measure now (all ranks must call it together under DDP); returns the logged values."""
        world, rank = trainer.world_size, trainer.global_rank
        shard = self.shard_probe and world > 1
        reps = self.probe.read(
            pl_module, self.layers, self.pooling, batch=self.probe.shard(rank, world) if shard else None
        )
        values: dict[str, float] = {}
        for layer in self.layers:
            metric = self._drift_metric(layer, shard, pl_module.device)
            metric.reset()
            metric.update(reps[layer])
            out = metric.compute()
            cos = out["cos"]
            values[tag(REVERSION, "cos_drift_vrev", layer)] = float(cos)
            values[tag(REVERSION, "drift_along", layer)] = float(out["along"])
            values[tag(REVERSION, "drift_orth_norm", layer)] = float(out["orth_norm"])
            null = self.nulls[layer]
            for p, ind in zip(self.null_levels, null.indicators(cos), strict=True):
                values[tag(REVERSION, f"exceeds_null_{level_name(p)}", layer)] = float(ind)
            null.update(cos)
            for name, val in null.compute().items():
                if name.startswith("exceed_frac"):
                    values[tag(REVERSION, name, layer)] = float(val)
            if layer in self.matched:
                values.update(self._matched_values(layer, cos, out["drift"]))
        log_at_step(trainer, values)
        record = {"step": float(trainer.global_step), **values}
        for key in self.task_keys:
            if key in trainer.callback_metrics:
                record[key] = float(trainer.callback_metrics[key])
        self.history.append(record)
        self._last_step = trainer.global_step
        return values

    def _matched_values(self, layer: str, cos: torch.Tensor, drift: torch.Tensor) -> dict[str, float]:
        """The matched null's quantiles at this step, the exceedance indicators and the running fractions."""
        matched = self.matched[layer]
        quantiles, above = matched.exceedance(cos, drift)
        matched.update(above)
        values = {}
        for i, p in enumerate(self.null_levels):
            values[tag(REVERSION, f"null_matched_{level_name(p)}", layer)] = float(quantiles[i])
            values[tag(REVERSION, f"exceeds_null_matched_{level_name(p)}", layer)] = float(above[i])
        for name, val in matched.compute().items():
            values[tag(REVERSION, name, layer)] = float(val)
        return values

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step != self._last_step and self._due(step):
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step >= 1 and trainer.global_step != self._last_step:
            self.measure(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["null_counts"] = {k: (m.exceed.cpu(), m.total.cpu()) for k, m in self.nulls.items()}
        state["matched_counts"] = {k: (m.exceed.cpu(), m.total.cpu()) for k, m in self.matched.items()}
        state["history"] = list(self.history)
        state["last_step"] = self._last_step
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.history = list(state.get("history", []))
        self._last_step = int(state.get("last_step", -1))
