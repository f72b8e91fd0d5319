"""The study's matched-null directions: for one seed, the null of ``testbed.nulls`` from the other seeds'
witness/reference checkpoints, read through one model built from the seed's reference-phase config (the seed's own
pair gives only the metadata the null file shares with its v_rev file)."""

from __future__ import annotations

from pathlib import Path

from testbed.directions import Extraction, direction_from_representations
from testbed.nulls import matched_null
from testbed.probes import ProbeSet
from testbed.study.plan import DirectionRun
from testbed.weights import load_weights

__all__ = ["compute_matched_null"]


def compute_matched_null(item: DirectionRun) -> Path:
    """Write the matched-null file of ``item`` (a ``matched_null`` direction of one seed) and return its path."""
    from testbed.commands import build_from_config

    spec = item.spec
    module, datamodule = build_from_config(item.reference.config_file, item.seed)
    probe = ProbeSet.from_datamodule(datamodule)
    layers = module.check_layers(list(spec.layers))

    def pair(witness: Path, reference: Path) -> tuple[dict, dict]:
        load_weights(module, str(witness), what="witness checkpoint")
        rep_w = probe.read(module, layers, spec.pooling)
        load_weights(module, str(reference), what="reference checkpoint")
        return rep_w, probe.read(module, layers, spec.pooling)

    how = Extraction(spec.method, spec.pooling, "vrev", str(item.witness.checkpoint), str(item.reference.checkpoint))
    mine = direction_from_representations(module, probe, *pair(item.witness.checkpoint, item.reference.checkpoint), how)
    histories = [pair(w.checkpoint, r.checkpoint) for w, r in item.others]
    return matched_null(mine, histories, spec.null_samples, item.seed).save(item.out)
