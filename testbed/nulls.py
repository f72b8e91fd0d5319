"""A matched empirical null for cos(drift, v_rev): directions built the way v_rev is, from unrelated history pairs.

v_rev is extracted from paired probe representations r_w(x_i), r_r(x_i) of a history's witness and reference
checkpoints (``testbed.directions``). The isotropic null (``theory.null``) asks how large cos(drift, u) is for u
uniform on the sphere; the matched null instead builds u with the same extraction (method, pooling, layer, probe
inputs) from checkpoint pairs that are *not* the run's witness → reference pair, taken from the other seeds'
histories h ≠ the run's own:

- **other histories**: (witness of h, reference of h): the v_rev of another history;
- **shuffled roles**: (witness of h, reference of h′) for h′ ≠ h, and every pair with the roles swapped (reference
  phase as the witness, witness phase as the reference).

Each pair gives its direction on all probe inputs and, to fill out the distribution, on bootstrap resamples of the
probe inputs (``samples`` in all, drawn round-robin over the pairs, seeded). A ``NullDirections`` file holds, per
layer, unit rows U_l ``[K, W]`` and the kind of each row. At a measured step the monitor compares cos(drift, v_rev)
with the empirical 0.99 (and 0.999) quantile of cos(drift, u_k) over the rows
(``testbed.metrics.EmpiricalNullExceedance``). A pair seen through the run's own model needs a model of the same
class and widths, which another seed of the same study has; only the probe inputs are shared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from testbed.directions import DirectionSet, check_direction, direction_from_reps
from testbed.errors import CheckpointError, ConfigError, positive_int
from testbed.io import atomic_torch_save, load_torch_file
from testbed.probes import ProbeSet

__all__ = ["FORMAT", "Reps", "NullDirections", "null_pairs", "matched_null", "load_null_directions"]

FORMAT = "testbed.null_directions/1"
Reps = Mapping[str, Tensor]  # layer -> pooled probe representations [B, W]


def null_pairs(histories: Sequence[tuple[Reps, Reps]]) -> list[tuple[str, Reps, Reps]]:
    """(kind, witness-role reps, reference-role reps) for every unrelated pair of the other ``histories`` (each a
    (witness, reference) pair of representations)."""
    pairs = []
    for a, (wit_a, ref_a) in enumerate(histories):
        for b, (wit_b, ref_b) in enumerate(histories):
            pairs.append(("other_history" if a == b else "shuffled_roles", wit_a, ref_b))
            pairs.append(("shuffled_roles", ref_a, wit_b))
    return pairs


@dataclass
class NullDirections:
    """Unit null directions per layer ``{layer: [K, W]}``, the kind of each row, and the metadata of ``v_rev`` files
    (layers, widths, pooling, probe fingerprint, model class)."""

    vectors: dict[str, Tensor]
    kinds: list[str]
    metadata: dict[str, Any]

    @property
    def layers(self) -> list[str]:
        return list(self.vectors)

    def save(self, path: str | Path) -> Path:
        """Write atomically."""
        payload = {"format": FORMAT, "vectors": {k: v.detach().cpu().float() for k, v in self.vectors.items()},
                   "kinds": list(self.kinds), "metadata": dict(self.metadata)}
        return atomic_torch_save(payload, path)

    def as_direction_set(self) -> DirectionSet:
        """The first row per layer with this file's metadata (for the checks ``v_rev`` files go through)."""
        return DirectionSet({k: v[0] for k, v in self.vectors.items()}, dict(self.metadata))


def matched_null(reference: DirectionSet, histories: Sequence[tuple[Reps, Reps]], samples: int, seed: int
                 ) -> NullDirections:
    """The matched null of one history (see the module docstring).

    Args:
        reference: the run's own ``v_rev`` (its metadata is copied: layers, pooling, method, probe, model class).
        histories: (witness, reference) pooled probe representations ``{layer: [B, W]}`` of the *other* histories.
        samples: bootstrap directions in all, beside one direction per pair on all probe inputs.
        seed: seed of the bootstrap resamples.
    """
    if not histories:
        raise ConfigError("a matched null needs other histories: run the study with at least two seeds")
    positive_int("null_samples", samples)
    method, layers = reference.metadata["method"], reference.layers
    pairs = null_pairs(histories)
    n = next(iter(histories[0][0].values())).shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    draws = [torch.arange(n)] * len(pairs) + [torch.randint(n, (n,), generator=gen) for _ in range(samples)]
    kinds = [pairs[i % len(pairs)][0] for i in range(len(draws))]
    vectors = {}
    for layer in layers:
        rows = []
        for i, index in enumerate(draws):
            _, wit, ref = pairs[i % len(pairs)]
            rows.append(direction_from_reps(wit[layer][index].cpu(), ref[layer][index].cpu(), method, layer))
        vectors[layer] = torch.stack(rows)
    meta = {key: reference.metadata.get(key) for key in ("layers", "widths", "pooling", "probe_fingerprint",
                                                         "probe_size", "method", "model_class")}  # fmt: skip
    meta.update(kind="matched_null", seed=int(seed), histories=len(histories), pairs=len(pairs))
    return NullDirections(vectors, kinds, meta)


def load_null_directions(path: str | Path, module: Any = None, probe: ProbeSet | None = None,
                         layers: Sequence[str] | None = None) -> NullDirections:
    """Load a null-direction file, keep ``layers`` and check it against the model and probe set in hand.

    Raises:
        CheckpointError: not a null-direction file (or damaged).
        ConfigError: a layer it lacks, or a file computed for another model class, probe set or width.
    """
    raw = load_torch_file(path, what="null-direction file")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a testbed null-direction file (expected format {FORMAT!r})")
    try:
        null = NullDirections(dict(raw["vectors"]), list(raw["kinds"]), dict(raw["metadata"]))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is a damaged null-direction file (missing {exc})") from None
    bad = [k for k, v in null.vectors.items() if v.dim() != 2 or v.shape[0] < 1 or not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: null directions at {bad} are not finite [K, W] matrices")
    if layers is not None:
        missing = [k for k in layers if k not in null.vectors]
        if missing:
            raise ConfigError(f"{path} has no null directions at {missing}; it holds: {', '.join(null.layers)}")
        null = NullDirections({k: null.vectors[k] for k in layers}, null.kinds, null.metadata)
    if module is not None:
        check_direction(null.as_direction_set(), module, probe, source=str(path))
    return null
