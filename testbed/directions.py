"""History-defined directions in activation space: v_rev and its controls, extracted, saved and loaded safely.

For a layer with pooled probe representations ``r_w(x)`` under the witness checkpoint (the dominant phase,
e.g. pre-alignment) and ``r_a(x)`` under the reference (aligned) checkpoint, on the same probe inputs x:

- ``diff_means``: v_rev = (mean_x r_w - mean_x r_a) / ||.||, pointing from the aligned model back to the witness;
- ``pca``: the top right-singular vector of the paired differences D = [r_w(x_i) - r_a(x_i)]_i (the principal
  direction of their second moment, so a constant shift counts), sign-aligned with the mean difference.

A ``DirectionSet`` holds unit vectors per layer, the two mean representations, and metadata (layers, widths,
pooling, probe fingerprint, source checkpoints, method, kind, model class). Controls use the same format:
``kind="random"`` (seeded Gaussian directions) and ``kind="shuffled_history"`` (a direction from an unrelated pair
of checkpoints). Loading checks the metadata against the model and probe set in hand and refuses a mismatch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from testbed.errors import CheckpointError, ConfigError
from testbed.io import atomic_torch_save, load_torch_file
from testbed.probes import ProbeSet, check_pooling, map_batch
from testbed.protocol import Pooling, TestbedModule

FORMAT = "testbed.direction/1"
METHODS = ("diff_means", "pca")


def model_class_name(module: Any) -> str:
    """Qualified class name recorded in direction files."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


@dataclass
class DirectionSet:
    """Unit directions per layer plus the mean representations and metadata they came from."""

    vectors: dict[str, Tensor]
    metadata: dict[str, Any]
    witness_mean: dict[str, Tensor] = field(default_factory=dict)
    reference_mean: dict[str, Tensor] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        return list(self.vectors)

    @property
    def pooling(self) -> Pooling:
        return self.metadata["pooling"]

    def width(self, layer: str) -> int:
        return int(self.vectors[layer].numel())

    def select(self, layers: Sequence[str] | None) -> DirectionSet:
        """The subset for ``layers`` (all when None); a layer not in the file is a ``ConfigError``."""
        if layers is None:
            return self
        missing = [name for name in layers if name not in self.vectors]
        if missing:
            raise ConfigError(f"direction file has no layer(s) {missing}; it holds: {', '.join(self.layers)}")
        keep = list(layers)
        meta = dict(self.metadata, layers=keep, widths={k: self.metadata["widths"][k] for k in keep})
        pick = lambda d: {k: d[k] for k in keep if k in d}  # noqa: E731
        return DirectionSet(pick(self.vectors), meta, pick(self.witness_mean), pick(self.reference_mean))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "vectors": {k: v.detach().cpu().float() for k, v in self.vectors.items()},
            "witness_mean": {k: v.detach().cpu().float() for k, v in self.witness_mean.items()},
            "reference_mean": {k: v.detach().cpu().float() for k, v in self.reference_mean.items()},
            "metadata": self.metadata,
        }

    def save(self, path: str | Path) -> Path:
        """Write atomically (a partial file never replaces a valid one)."""
        return atomic_torch_save(self.to_dict(), path)


def direction_from_reps(rep_witness: Tensor, rep_reference: Tensor, method: str, layer: str = "") -> Tensor:
    """Unit direction from paired pooled representations ``[B, W]`` (see module docstring)."""
    if method not in METHODS:
        raise ConfigError(f"unknown direction method {method!r}; valid methods are: {', '.join(METHODS)}")
    if rep_witness.shape != rep_reference.shape:
        raise ConfigError(
            f"witness and reference representations differ in shape at {layer}: "
            f"{tuple(rep_witness.shape)} vs {tuple(rep_reference.shape)}"
        )
    diffs = (rep_witness - rep_reference).double()  # [B, W]
    mean_diff = diffs.mean(dim=0)
    if method == "diff_means":
        vec = mean_diff
    else:
        _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
        vec = vh[0]
        if torch.dot(vec, mean_diff) < 0:
            vec = -vec
    norm = vec.norm()
    if not torch.isfinite(norm) or norm < 1e-12:
        raise ConfigError(
            f"witness and reference give the same representations at layer {layer or '?'}: "
            "no direction can be extracted (are the two checkpoints the same?)"
        )
    return (vec / norm).float()


def _as_probe(probe_batch: Any) -> ProbeSet:
    return probe_batch if isinstance(probe_batch, ProbeSet) else ProbeSet(probe_batch)


def _metadata(
    module: TestbedModule,
    probe: ProbeSet,
    vectors: Mapping[str, Tensor],
    pooling: str,
    method: str,
    kind: str,
    witness: str | None = None,
    reference: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "layers": list(vectors),
        "widths": {k: int(v.numel()) for k, v in vectors.items()},
        "pooling": pooling,
        "probe_fingerprint": probe.fingerprint,
        "probe_size": probe.size,
        "method": method,
        "kind": kind,
        "model_class": model_class_name(module),
        "witness": witness,
        "reference": reference,
        **extra,
    }


@dataclass(frozen=True)
class Extraction:
    """How a direction is extracted, and the sources recorded with it.

    Args:
        method: ``diff_means`` (normalised difference of means) or ``pca`` (top principal direction).
        pooling: ``mean`` over tokens or ``last`` token.
        kind: ``vrev`` (the history's witness and reference) or ``shuffled_history`` (an unrelated pair, a control).
        witness: the witness checkpoint's path, recorded in the metadata.
        reference: the reference checkpoint's path, recorded in the metadata.
    """

    method: Literal["diff_means", "pca"] = "diff_means"
    pooling: Literal["mean", "last"] = "mean"
    kind: Literal["vrev", "shuffled_history"] = "vrev"
    witness: str | None = None
    reference: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown direction method {self.method!r}; valid methods are: {', '.join(METHODS)}")
        check_pooling(self.pooling)
        if self.kind not in ("vrev", "shuffled_history"):
            raise ConfigError(f"kind {self.kind!r} cannot be extracted from checkpoints; use vrev or shuffled_history")


def extract_direction(
    module_witness: TestbedModule,
    module_reference: TestbedModule,
    probe_batch: Any,
    layers: Sequence[str],
    how: Extraction | None = None,
) -> DirectionSet:
    """v_rev per layer from a witness model and a reference (aligned) model of one history.

    Args:
        module_witness: the model at the witness checkpoint (e.g. before alignment).
        module_reference: the model at the reference checkpoint (aligned).
        probe_batch: the probe inputs (a batch or a ``ProbeSet``).
        layers: layer names.
        how: method, pooling, kind and the recorded sources (default: difference of means, mean pooling).
    """
    how = how or Extraction()
    if type(module_witness) is not type(module_reference):
        raise ConfigError(
            f"witness and reference are different model classes: {model_class_name(module_witness)} "
            f"vs {model_class_name(module_reference)}"
        )
    probe = _as_probe(probe_batch)
    rep_w = probe.read(module_witness, layers, how.pooling)
    rep_r = probe.read(module_reference, layers, how.pooling)
    return direction_from_representations(module_reference, probe, rep_w, rep_r, how)


def direction_from_representations(
    module: TestbedModule,
    probe: ProbeSet | Any,
    rep_witness: dict[str, Tensor],
    rep_reference: dict[str, Tensor],
    how: Extraction | None = None,
) -> DirectionSet:
    """A ``DirectionSet`` from pooled probe representations already read under the witness and reference weights
    (for callers that swap two checkpoints into one model instance instead of holding two models).

    Args:
        module: the model the representations came from (its class is recorded).
        probe: the probe inputs they were read on (a batch or a ``ProbeSet``).
        rep_witness: layer -> ``[B, W]`` pooled representations under the witness weights.
        rep_reference: layer -> ``[B, W]`` pooled representations under the reference weights.
        how: method, pooling (the one used to read them), kind and the recorded sources.
    """
    how = how or Extraction()
    vectors = {k: direction_from_reps(rep_witness[k].cpu(), rep_reference[k].cpu(), how.method, k) for k in rep_witness}
    meta = _metadata(module, _as_probe(probe), vectors, how.pooling, how.method, how.kind, how.witness, how.reference)
    means = {k: v.mean(0).cpu() for k, v in rep_witness.items()}, {k: v.mean(0).cpu() for k, v in rep_reference.items()}
    return DirectionSet(vectors, meta, *means)


def random_unit_vectors(widths: Mapping[str, int], seed: int) -> dict[str, Tensor]:
    """Seeded Gaussian unit vectors per layer, independent of the global RNG.

    Each layer draws from its own generator, seeded from ``seed`` and the layer's name (not its position), so a
    random direction file and a blocker's ``random: true`` give the same vector for the same seed and layer.
    """
    out = {}
    for layer, width in widths.items():
        key = hashlib.sha256(f"{int(seed)}:{layer}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little") % 2**63)
        vec = torch.randn(int(width), generator=gen, dtype=torch.float64)
        out[layer] = (vec / vec.norm()).float()
    return out


def random_directions(
    module: TestbedModule, probe_batch: Any, layers: Sequence[str], pooling: Pooling = "mean", seed: int = 0
) -> DirectionSet:
    """Seeded random unit directions of the right width per layer (the random-direction control, as a file)."""
    probe = _as_probe(probe_batch)
    means = {k: v.mean(0).cpu() for k, v in probe.read(module, layers, pooling).items()}
    vectors = random_unit_vectors({name: means[name].numel() for name in layers}, seed)
    meta = _metadata(module, probe, vectors, pooling, "random", "random", seed=int(seed))
    return DirectionSet(vectors, meta, {}, means)


def load_direction(
    path: str | Path,
    module: TestbedModule | None = None,
    probe: ProbeSet | Any = None,
    layers: Sequence[str] | None = None,
    allow_other_probe: bool = False,
) -> DirectionSet:
    """Load a direction file and check it against the model and probe set in hand.

    Args:
        path: file written by ``DirectionSet.save``.
        module: the model it will be used with: its class and layer names must match.
        probe: the probe set in use: its fingerprint must match, and the widths are checked on it.
        layers: keep only these layers (each must be in the file).
        allow_other_probe: accept a different probe fingerprint (e.g. a direction applied to new prompts).

    Raises:
        CheckpointError: not a direction file (or unreadable/unsafe).
        ConfigError: the file does not fit the model or probe set (class, layer, width, fingerprint).
    """
    raw = load_torch_file(path, what="direction file")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a testbed direction file (expected format {FORMAT!r})")
    try:
        ds = DirectionSet(
            dict(raw["vectors"]), dict(raw["metadata"]), dict(raw["witness_mean"]), dict(raw["reference_mean"])
        )
        ds.metadata["widths"], ds.metadata["pooling"]  # noqa: B018 - presence check
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is a damaged direction file (missing or malformed {exc})") from None
    _check_contents(ds, path)
    ds.metadata["path"] = str(path)
    ds = ds.select(layers)
    if module is not None:
        check_direction(ds, module, probe, allow_other_probe=allow_other_probe, source=str(path))
    return ds


def _check_contents(ds: DirectionSet, path: str | Path) -> None:
    """Refuse a direction file whose vectors are not usable directions (naming the file and the layer): each must
    be a non-empty 1-D floating-point tensor of the recorded width, finite and non-zero; the means must be finite."""
    widths = ds.metadata.get("widths")
    if not isinstance(widths, dict) or ds.metadata.get("pooling") not in ("last", "mean") or not ds.vectors:
        raise CheckpointError(f"{path} is a damaged direction file (no vectors, or malformed widths or pooling)")
    for layer, vec in ds.vectors.items():
        where = f"direction file {path}, layer {layer!r}"
        if not isinstance(vec, Tensor) or not vec.is_floating_point() or vec.dim() != 1 or vec.numel() == 0:
            raise CheckpointError(f"{where}: the vector is not a non-empty 1-D floating-point tensor")
        if widths.get(layer) != vec.numel():
            raise CheckpointError(f"{where}: the vector has {vec.numel()} entries but the file records width "
                                  f"{widths.get(layer)!r}")
        if not bool(torch.isfinite(vec).all()):
            raise ConfigError(f"{where}: the vector holds NaN or inf; recompute the direction")
        if not float(vec.double().norm()) > 1e-12:
            raise ConfigError(f"{where}: the vector is zero, so it names no direction (a blocker would remove "
                              "nothing); recompute it (are the witness and reference the same checkpoint?)")
    for which, means in (("witness", ds.witness_mean), ("reference", ds.reference_mean)):
        for layer, mean in means.items():
            if not isinstance(mean, Tensor) or not bool(torch.isfinite(mean).all()):
                raise ConfigError(f"direction file {path}, layer {layer!r}: the {which} mean is not a finite tensor")


def check_direction(
    ds: DirectionSet,
    module: TestbedModule,
    probe: ProbeSet | Any = None,
    allow_other_probe: bool = False,
    source: str = "direction",
) -> None:
    """Raise a ``ConfigError`` when ``ds`` does not fit ``module`` (and ``probe``, if given)."""
    want = ds.metadata.get("model_class")
    have = model_class_name(module)
    if want != have:
        raise ConfigError(f"{source} was computed for model class {want}, not {have}")
    valid = module.layer_names()
    unknown = [k for k in ds.layers if k not in valid]
    if unknown:
        raise ConfigError(
            f"{source} names layer(s) {unknown} that this model does not have; valid layers are: {', '.join(valid)}"
        )
    if probe is None:
        return
    probe = _as_probe(probe)
    if probe.fingerprint != ds.metadata.get("probe_fingerprint") and not allow_other_probe:
        raise ConfigError(
            f"{source} was computed on a different probe set (fingerprint "
            f"{str(ds.metadata.get('probe_fingerprint'))[:12]}…, this data gives {probe.fingerprint[:12]}…)"
        )
    reps = probe.read(module, ds.layers, ds.pooling, batch=_first_row(probe))
    for name, rep in reps.items():
        if rep.shape[-1] != ds.width(name):
            raise ConfigError(
                f"{source} has width {ds.width(name)} at {name}, but the model's representation "
                f"there has width {rep.shape[-1]}"
            )


def _first_row(probe: ProbeSet) -> Any:
    return map_batch(probe.batch, lambda t: t[:1] if t.dim() > 0 else t)


__all__ = [
    "DirectionSet",
    "Extraction",
    "extract_direction",
    "direction_from_reps",
    "direction_from_representations",
    "random_directions",
    "random_unit_vectors",
    "load_direction",
    "check_direction",
]
