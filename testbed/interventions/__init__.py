"""Lightning callbacks of the reversion layer: a monitor, v_rev blockers and their baselines, one file each.

All of them see the model only through the probe protocol (``testbed.protocol``) and the datamodule's
``probe_batch()``, so the same YAML serves toys, Hugging Face models and LoRA adapters. Select them under
``trainer.callbacks`` with ``class_path: testbed.interventions.<Name>``.

- ``monitor``: ``ReversionMonitor`` (drift alignment with v_rev against the isotropic null).
- ``projection``: ``UpdateProjectionBlocker`` (Adam-correct) and ``GradientProjectionBlocker`` (named variant).
- ``objective``: ``ReversionObjective`` (the one-sided hinge on motion toward the witness: block, or push with the
  opposite sign; strength absolute or relative to the task gradient, per probe input or on the mean).
- ``penalty``: ``RepresentationPenalty`` (the objective at a fixed absolute weight on the mean);
  ``clamp``: ``ActivationClamp``; ``anchor``: ``L2Anchor`` (baseline).
- ``base``: ``DirectionSource`` (which direction, or its seeded random control) and ``DirectionCallback``;
  ``flat``: the flat-vector algebra over trainable parameters.

The curvature account (``testbed.curvature`` estimates; these apply them):

- ``curvature_monitor``: ``CurvatureMonitor`` (AIC diagnostics at the start; Δu, ‖P_S δ‖, ‖F^{1/2}P_S δ‖, the early
  log-log fit and the quartic law beside it).
- ``subspace_blocker``: ``SubspaceBlocker`` (update projection out of span(S); ``method: random`` is its control).
- ``subspace_base``: ``SubspaceCallback`` (the safety batch, S and θ*, shared by callbacks with equal settings).

Every direction blocker takes ``direction: {path: ..., random: true, random_seed: ...}`` for its random-direction
control at the same strength. Blocker state is saved in checkpoints (``state_dict``).
"""

from testbed.interventions.anchor import L2Anchor
from testbed.interventions.base import DirectionCallback, DirectionSource
from testbed.interventions.clamp import ActivationClamp
from testbed.interventions.curvature_monitor import CurvatureMonitor
from testbed.interventions.monitor import ReversionMonitor
from testbed.interventions.objective import ObjectiveSettings, ReversionObjective
from testbed.interventions.penalty import RepresentationPenalty
from testbed.interventions.projection import GradientProjectionBlocker, ProjectionSettings, UpdateProjectionBlocker
from testbed.interventions.subspace_base import SubspaceCallback
from testbed.interventions.subspace_blocker import SubspaceBlocker

__all__ = [
    "ActivationClamp",
    "CurvatureMonitor",
    "DirectionCallback",
    "DirectionSource",
    "GradientProjectionBlocker",
    "L2Anchor",
    "ObjectiveSettings",
    "ProjectionSettings",
    "RepresentationPenalty",
    "ReversionMonitor",
    "ReversionObjective",
    "SubspaceBlocker",
    "SubspaceCallback",
    "UpdateProjectionBlocker",
]
