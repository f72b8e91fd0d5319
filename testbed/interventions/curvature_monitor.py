"""The curvature monitor: the AIC diagnostics at the start of fine-tuning and the safety loss's early growth.

At the start (θ*, before the first update) it estimates S (``SubspaceCallback``) and, on the first training batch,
measures the AIC quantities (``testbed.curvature.diagnose``: λ_d, tail, ε = ‖P_S g‖, γ = ‖F^{1/2} P_S H g‖) and the
verdict with its predicted exponent; these are logged at step 0 under ``curvature/`` and written with S to
``<log_dir>/curvature.pt``. Then, at step 1, every ``every_n_steps`` steps, at the extra ``steps`` and at the end, with
δ = θ − θ* it logs

- ``delta_u``: Δu = u(θ) − u(θ*), the safety loss (mean of ``safety_losses``) on ``measure_n`` examples spread evenly
  over the safety batch (default: 16, or all when there are fewer; ``all``: every example S is estimated from), minus
  its start: one forward pass over them per measurement, ``subspace.chunk_size`` examples at a time;
- ``disp_in_S`` = ‖P_S δ‖, ``disp_f`` = ‖F^{1/2} P_S δ‖, ``disp_norm`` = ‖δ‖, and ``update_overlap`` =
  ‖P_S Δθ‖/‖Δθ‖ for the last update Δθ;
- ``linear_pred`` = ∇u(θ*)·δ and ``quadratic_pred`` = ½‖F^{1/2} P_S δ‖²: near θ* Δu ≈ linear_pred + quadratic_pred
  (the AIC's account assumes θ* is a stationary point of u, i.e. linear_pred ≈ 0; ``safety_grad_norm`` =
  ‖∇u(θ*)‖ at step 0 says how far that holds), and ``leading_law`` = γ² t⁴/8 with
  t = η·steps (``law: gd`` uses the discrete form γ² η⁴ n²(n−1)²/8, ``theory.quartic.leading_law_gd``); η is the
  first optimizer's learning rate at the start. Under Adam the update is not η·g, so t = η·steps is only a nominal
  time and the law a reference curve, not a prediction;
- ``series_pred`` and ``ratio`` = Δu / series_pred, when ``theory_order`` is set: theory's GD series of the quadratic
  model from the measured λ, S, g and H (``theory.quartic.predict_alignment_loss_gd``);
- ``loglog_slope``: the running least-squares slope of log Δu against log step over ``fit_window``
  (``theory.fit.RunningLogLogFit``).

At the end: ``exponent`` with its 95% interval (``exponent_low``, ``exponent_high``), ``coefficient``,
``coefficient_ratio`` (geometric mean of Δu / series_pred over the window) and ``max_delta_u``. A step whose
displacement in S is at round-off (‖P_S δ‖ <= 1e-12 ‖δ‖) is logged but not fitted. It never touches training: the
passes run in eval mode with the RNG isolated. Under FSDP2 every process measures together (the forward passes are
collective); ``theory_order`` is refused there (theory's series works on whole vectors), and ``curvature.pt`` holds
the whole S, gathered from the shards.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from testbed.curvature.diagnostics import AICThresholds, Diagnostics, diagnose
from testbed.curvature.estimate import SubspaceSettings, safety_loss, spread_subset
from testbed.curvature.hvp import LossHVP
from testbed.errors import ConfigError, as_settings, one_of, positive_int
from testbed.interventions.subspace_base import SubspaceCallback
from testbed.probes import batch_size, probe_mode
from testbed.sharding import full_flat, is_sharded, local_flat
from testbed.step_log import log_at_step
from testbed.strategies import FULL_PARAMETERS
from testbed.tags import CURVATURE, tag
from theory.fit import RunningLogLogFit
from theory.quartic import leading_law, leading_law_gd, predict_alignment_loss_gd

__all__ = ["CurvatureMonitor", "DEFAULT_MEASURE_N", "RELATIVE_ZERO"]

RELATIVE_ZERO = 1e-12  # ‖P_S δ‖ at or below this fraction of ‖δ‖ is round-off of a zero projection: not fitted
DEFAULT_MEASURE_N = 16  # Δu's examples by default: one forward pass of about a training batch per measurement


def _t(name: str) -> str:
    return tag(CURVATURE, name)


class CurvatureMonitor(SubspaceCallback):
    """Log the AIC diagnostics at the start and the safety loss's growth against S and the quartic law.

    Args:
        subspace: how S is estimated (``SubspaceSettings``; ``method: random`` is for the blocker's control only).
        every_n_steps: measurement cadence in optimizer steps.
        steps: extra steps at which to measure (e.g. a dense early window).
        fit_window: [start, end] steps of the early log-log fit of Δu (inside the run).
        theory_order: terms of theory's GD series to log as ``series_pred`` (None: no series).
        law: ``gd`` (γ²η⁴n²(n−1)²/8) or ``flow`` (γ²t⁴/8, t = ηn) for ``leading_law``.
        aic: thresholds of the verdict (``AICThresholds``).
        save: write S and the diagnostics to ``<log_dir>/curvature.pt`` (atomically; rank zero, with a logger).
        measure_n: measure Δu (and ∇u(θ*) for ``linear_pred``) on this many safety examples, spread evenly over the
            safety batch (rows ⌊i·N/m⌋); ``all``: on all N that S is estimated from; default (None): 16, or all N when
            there are fewer. A measurement is one forward pass over them, so its cost grows with measure_n: at 16 it
            is about a third of a training step of 16 examples (logged as ``curvature/measure_n``).
    """

    def __init__(
        self,
        subspace: SubspaceSettings | None = None,
        every_n_steps: int = 10,
        steps: list[int] | None = None,
        fit_window: tuple[int, int] = (1, 10),
        theory_order: int | None = None,
        law: Literal["gd", "flow"] = "gd",
        aic: AICThresholds | None = None,
        save: bool = True,
        measure_n: int | Literal["all"] | None = None,
    ) -> None:
        super().__init__(subspace)
        if self.settings.method == "random":
            raise ConfigError("CurvatureMonitor measures an estimated subspace: method must be fisher or hessian")
        self.every_n_steps = positive_int("every_n_steps", every_n_steps)
        self.steps = {positive_int("monitor steps", s) for s in (steps or [])}
        if len(fit_window) != 2 or not 1 <= int(fit_window[0]) < int(fit_window[1]):
            raise ConfigError(f"fit_window must be [start, end] with 1 <= start < end, got {list(fit_window)}")
        self.fit_window = (int(fit_window[0]), int(fit_window[1]))
        if sum(self._due(n) for n in range(self.fit_window[0], self.fit_window[1] + 1)) < 2:
            raise ConfigError(f"fit_window {list(self.fit_window)} holds fewer than two measured steps (every_n_steps="
                              f"{self.every_n_steps}, steps={sorted(self.steps)}): nothing to fit")
        self.theory_order = positive_int("theory_order", theory_order, allow_none=True)
        self.law = one_of("law", law, ("gd", "flow"))
        self.thresholds = as_settings(AICThresholds, aic, "aic") or AICThresholds()
        self.save = bool(save)
        if measure_n not in (None, "all") and (isinstance(measure_n, bool) or not isinstance(measure_n, int)
                                               or measure_n < 1):  # fmt: skip
            raise ConfigError(f"measure_n must be a positive integer, all, or null (the default of "
                              f"{DEFAULT_MEASURE_N} examples), got {measure_n!r}")
        self.measure_n = measure_n
        self.measured: Any = None  # the safety examples Δu is measured on
        self.diagnostics: Diagnostics | None = None
        self.history: list[dict[str, float]] = []
        self.series: np.ndarray | None = None
        self.fit = RunningLogLogFit(self.fit_window)
        self.u_star = math.nan
        self.eta = math.nan
        self.safety_grad: torch.Tensor | None = None  # ∇u(θ*) [P]
        self._snapshot: torch.Tensor | None = None
        self._last_step = -1

    @property
    def supported_strategies(self) -> frozenset[str]:  # type: ignore[override]
        """Theory's series works on whole vectors: with ``theory_order`` set, not under FSDP2."""
        return FULL_PARAMETERS if self.theory_order is not None else FULL_PARAMETERS | {"fsdp2"}

    # ---- set-up ---------------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.max_steps <= 0:
            return
        start, end = self.fit_window
        if start > trainer.max_steps:
            raise ConfigError(f"fit_window {[start, end]} lies outside the run (max_steps={trainer.max_steps})")
        if end > trainer.max_steps:
            rank_zero_warn(f"fit_window {[start, end]} ends after the run (max_steps={trainer.max_steps}): the fit "
                           f"uses steps [{start}, {trainer.max_steps}]")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.theory_order is not None and is_sharded(self.params(pl_module)):  # a strategy outside the families
            raise ConfigError("CurvatureMonitor theory_order needs whole parameter vectors: it does not run on sharded "
                              "parameters (unset theory_order, or use strategy: ddp or one device)")
        restored = self._restored
        super().on_train_start(trainer, pl_module)
        size = batch_size(self.safety)
        if isinstance(self.measure_n, int) and self.measure_n > size:
            raise ConfigError(f"measure_n={self.measure_n} exceeds the safety set ({size} examples)")
        count = {None: min(DEFAULT_MEASURE_N, size), "all": size}.get(self.measure_n, self.measure_n)
        self.measured = spread_subset(self.safety, count)
        if restored is not None:
            self._restore_monitor(restored)
            return
        self.u_star = self._safety_loss(pl_module)
        self.eta = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else math.nan
        self.safety_grad = self.safety_gradient(pl_module, self.measured)
        stationary = {_t("safety_grad_norm"): float(self.partition.norm(self.safety_grad)),
                      _t("safety_grad_in_S"): float(self.subspace.coords(self.safety_grad, self.partition).norm()),
                      _t("measure_n"): float(batch_size(self.measured))}
        log_at_step(trainer, {**self.subspace.scalars(), **stationary}, step=0)

    def _safety_loss(self, pl_module: pl.LightningModule) -> float:
        with probe_mode(pl_module):
            return float(safety_loss(pl_module, self.measured, self.settings.chunk_size))

    # ---- the AIC diagnostics on the first batch ---------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any) -> None:
        if trainer.global_step == 0 and self.diagnostics is None:
            self._diagnose(trainer, pl_module, batch)
        self._snapshot = self.flat_params(pl_module).clone() if self._due(trainer.global_step + 1) else None

    def _diagnose(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        params = self.params(pl_module)
        with probe_mode(pl_module, grad=True), pl_module.curvature_mode():
            hvp = LossHVP(lambda: pl_module.task_loss(batch), params, self.settings.hvp, partition=self.partition,
                          average=True)
            hg = hvp(hvp.grad)
            self.diagnostics = diagnose(self.subspace, hvp.grad, hg, self.thresholds, self.partition, hvp.describe())
            if self.theory_order is not None:
                self.series = self._series(trainer, hvp)
        log_at_step(trainer, self.diagnostics.scalars(), step=0)
        if trainer.is_global_zero:
            print(f"{type(self).__name__}: {self.subspace.how}; H g by {hvp.describe()}\n"
                  f"{type(self).__name__}: {self.diagnostics.verdict.line()}", flush=True)  # fmt: skip
        if self.save and trainer.loggers and trainer.log_dir:
            basis = full_flat(self.subspace.basis, params)  # a collective under FSDP2: every process takes part
            if trainer.is_global_zero:
                extra = {"diagnostics": self.diagnostics.record(), "u_star": self.u_star, "eta": self.eta}
                replace(self.subspace, basis=basis).save(f"{trainer.log_dir}/curvature.pt", extra)

    def _series(self, trainer: pl.Trainer, hvp: LossHVP) -> np.ndarray:
        """theory's GD series of the quadratic model for steps 0..max_steps (from the measured λ, S, g, H)."""
        s = self.subspace
        horizon = max(int(trainer.max_steps), self.fit_window[1])
        basis = s.basis.double().cpu().numpy().T  # [P, d]

        def apply(v: np.ndarray) -> np.ndarray:
            return hvp(torch.as_tensor(v, device=s.basis.device)).double().cpu().numpy()

        lam, g = s.eigenvalues.double().cpu().numpy(), hvp.grad.double().cpu().numpy()
        return predict_alignment_loss_gd(lam, basis, apply, g, self.eta, np.arange(horizon + 1), self.theory_order)

    # ---- measurements ----------------------------------------------------------------------------------------
    def _due(self, step: int) -> bool:
        return step >= 1 and (step == 1 or step % self.every_n_steps == 0 or step in self.steps)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Measure now (every process calls it together under DDP); returns the logged values."""
        step = trainer.global_step
        theta = self.flat_params(pl_module)
        delta = theta - self.theta_star
        coords = self.subspace.coords(delta, self.partition)
        in_s, f_norm = float(coords.norm()), float(self.subspace.weighted_norm(coords.double()))
        norm = float(self.partition.norm(delta))
        du = self._safety_loss(pl_module) - self.u_star
        gamma = self.diagnostics.gamma if self.diagnostics is not None else math.nan
        law = leading_law_gd(gamma, self.eta, step) if self.law == "gd" else leading_law(gamma, self.eta * step)
        values = {_t("delta_u"): du, _t("disp_in_S"): in_s, _t("disp_f"): f_norm, _t("disp_norm"): norm,
                  _t("linear_pred"): float(self.partition.matmul(self.safety_grad, delta)),
                  _t("quadratic_pred"): 0.5 * f_norm**2, _t("leading_law"): law}  # fmt: skip
        if self._snapshot is not None:
            update = theta - self._snapshot
            size = float(self.partition.norm(update))
            if size > 0:
                values[_t("update_overlap")] = float(self.subspace.coords(update, self.partition).norm()) / size
        usable = in_s > RELATIVE_ZERO * norm
        if usable:
            self.fit.add(step, du)
        if math.isfinite(self.fit.slope):
            values[_t("loglog_slope")] = self.fit.slope
        if self.series is not None and step < len(self.series):
            values[_t("series_pred")] = float(self.series[step])
            if usable and self.series[step] > 0:
                values[_t("ratio")] = du / float(self.series[step])
        values = {k: v for k, v in values.items() if math.isfinite(v)}
        log_at_step(trainer, values)
        self.history.append({"step": float(step), "usable": float(usable), **values})
        self._last_step = step
        return values

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step != self._last_step and self._due(step):
            self.measure(trainer, pl_module)
        self._snapshot = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step >= 1 and trainer.global_step != self._last_step:
            self.measure(trainer, pl_module)
        summary = self.summary()
        log_at_step(trainer, {k: v for k, v in summary.items() if math.isfinite(v)})
        if trainer.is_global_zero:
            print(f"{type(self).__name__}: {self.summary_line(summary)}", flush=True)

    # ---- the fit ------------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, float]:
        """Exponent (95% interval), coefficient, measured/series ratio over the window, and the largest Δu."""
        fit = self.fit.fit()
        start, end = self.fit_window
        window = [r for r in self.history if start <= r["step"] <= end and r["usable"] and r[_t("delta_u")] > 0]
        ratios = [r[_t("ratio")] for r in window if _t("ratio") in r]
        out = {_t("exponent"): fit.slope, _t("exponent_low"): fit.ci_low, _t("exponent_high"): fit.ci_high,
               _t("coefficient"): fit.coefficient, _t("fit_points"): float(fit.n_points),
               _t("max_delta_u"): max((r[_t("delta_u")] for r in self.history), default=math.nan)}  # fmt: skip
        out[_t("coefficient_ratio")] = float(np.exp(np.mean(np.log(ratios)))) if ratios else math.nan
        return out

    def summary_line(self, summary: dict[str, float] | None = None) -> str:
        """One line: the fitted exponent with its interval, and measured/predicted when there is a series."""
        s = summary or self.summary()
        window = f"steps [{self.fit_window[0]}, {self.fit_window[1]}]"
        if s[_t("fit_points")] < 2:
            return (f"no power law to fit: Δu was at round-off or <= 0 at the steps of {window} "
                    f"(max Δu over the run = {s[_t('max_delta_u')]:.3e})")  # fmt: skip
        line = f"fitted exponent of Δu {self.fit.fit().text()} over {window}"
        ratio = s[_t("coefficient_ratio")]
        return line + (f"; measured/predicted coefficient {ratio:.4f}" if math.isfinite(ratio) else "")

    # ---- resumable state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if not state:
            return state
        diag = self.diagnostics
        state.update({"u_star": self.u_star, "eta": self.eta, "fit": self.fit.state_dict(), "history": self.history,
                      "safety_grad": full_flat(self.safety_grad, self._params).detach().cpu(),
                      "last_step": self._last_step, "series": None if self.series is None else self.series.tolist(),
                      "measure_n": batch_size(self.measured),
                      "diagnostics": None if diag is None else (list(diag.numbers), diag.hvp)})  # fmt: skip
        return state

    def _restore_monitor(self, state: dict[str, Any]) -> None:
        count = batch_size(self.measured)
        if int(state.get("measure_n", count)) != count:
            raise ConfigError(f"the checkpoint's CurvatureMonitor measured Δu on {state['measure_n']} safety examples, "
                              f"this run on {count}: set measure_n as the checkpointed run did")
        self.u_star, self.eta = float(state["u_star"]), float(state["eta"])
        self.safety_grad = local_flat(state["safety_grad"].to(self.theta_star.device), self._params)
        self.fit.load_state_dict(state["fit"])
        self.history, self._last_step = list(state["history"]), int(state["last_step"])
        self.series = None if state["series"] is None else np.asarray(state["series"])
        if state["diagnostics"] is not None:
            numbers, how = state["diagnostics"]
            self.diagnostics = Diagnostics.measured(self.subspace, tuple(numbers), self.thresholds, how)
