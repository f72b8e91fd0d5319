"""Plain gradient descent on a toy's fine-tune loss outside Lightning, measured after every step like the toy's hook."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from toy_models.geometry import MonitoredToy, QuarticMonitor, split_displacement


def descend(model: MonitoredToy, steps: int, parameters: Iterable[torch.nn.Parameter]) -> QuarticMonitor:
    """Run ``steps`` SGD steps at the toy's ``lr`` on ``parameters``; return the filled monitor."""
    monitor = QuarticMonitor(model.fit_window, model.predicted_alignment_loss(np.arange(steps + 1, dtype=float)))
    opt = torch.optim.SGD(parameters, lr=model.lr)
    for n in range(1, steps + 1):
        opt.zero_grad()
        model.finetune_loss().backward()
        opt.step()
        with torch.no_grad():
            loss, delta = model.measure()
            monitor.update(n, loss, *split_displacement(delta, model.subspace_basis()))
    return monitor
