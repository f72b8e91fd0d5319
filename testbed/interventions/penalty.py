"""The representation penalty: the reversion objective at a fixed absolute weight, on the mean representation.

P(θ) = strength · Σ_l relu(<v_l, m_l(θ) − m_l^ref>)^power, with m_l the mean probe representation. It is
``ReversionObjective`` with ``scale: absolute``, ``per_example: false`` and a positive strength (the original blocker
of this testbed, kept under its name); its gradient is added right before each optimizer step and the logged task
loss excludes it. Logged as ``intervention/penalty`` (with ``_active`` and ``_grad_ratio``).
"""

from __future__ import annotations

from typing import ClassVar

from testbed.errors import positive_number
from testbed.interventions.base import DirectionSource
from testbed.interventions.objective import ObjectiveSettings, ReversionObjective

__all__ = ["RepresentationPenalty"]


class RepresentationPenalty(ReversionObjective):
    """Penalise positive drift of the mean probe representation along v_rev: strength·Σ_l relu(<v_l, m_l − m_ref>)^p.

    Args:
        direction: the direction (``random: true`` for the random-direction control).
        strength: weight of the penalty (> 0).
        power: 1 (hinge) or 2 (squared hinge).
    """

    metric: ClassVar[str] = "penalty"

    def __init__(self, direction: DirectionSource, strength: float = 1.0, power: int = 2) -> None:
        positive_number("strength", strength)
        settings = ObjectiveSettings(strength=strength, scale="absolute", per_example=False, power=power)
        super().__init__(direction, settings)
        self.strength, self.power = settings.strength, settings.power
