"""Commands beside ``fit`` that need the CLI's config parsing: build a model and its data from a fit config,
and compute v_rev between two checkpoints of one history (the ``vrev`` verb, also used by the study runner).

The library (``testbed.directions`` and below) never parses configs; this module joins the two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from testbed.directions import Extraction, direction_from_representations
from testbed.errors import ConfigError
from testbed.io import check_output_file
from testbed.probes import ProbeSet
from testbed.protocol import TestbedModule
from testbed.weights import load_weights

__all__ = ["build_from_config", "compute_vrev_from_checkpoints", "vrev_command"]


def build_from_config(config_path: str | Path, seed: int = 0) -> tuple[TestbedModule, Any]:
    """Instantiate the model and datamodule of a fit config, ready to read (no trainer run, logger or callbacks).

    Args:
        config_path: a ``fit`` config file.
        seed: ``seed_everything`` for building them.

    Returns:
        The model (``configure_model`` called) and the datamodule (set up for ``fit``).
    """
    from testbed.cli import TestbedCLI

    if not Path(config_path).is_file():
        raise ConfigError(f"config not found: {config_path}")
    args = [
        "--config",
        str(config_path),
        f"--seed_everything={int(seed)}",
        "--trainer.logger=false",
        "--trainer.callbacks=null",
        "--trainer.enable_checkpointing=false",
    ]
    cli = TestbedCLI(args=args, run=False)
    module, datamodule = cli.model, cli.datamodule
    module.configure_model()
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    datamodule.setup("fit")
    return module, datamodule


def compute_vrev_from_checkpoints(
    config_path: str,
    witness_ckpt: str,
    reference_ckpt: str,
    layers: list[str],
    out: str,
    method: str = "diff_means",
    pooling: str = "mean",
    seed: int = 0,
    kind: str = "vrev",
) -> Path:
    """Build the model and probe set from ``config_path``, read both checkpoints, save the direction atomically.

    One model instance is used: the witness weights are loaded, read, then replaced by the reference weights.

    Args:
        config_path: a fit config of the history (its model and data define the model class and the probe set).
        witness_ckpt: checkpoint of the dominant phase (e.g. before alignment).
        reference_ckpt: checkpoint of the aligned model.
        layers: layer names.
        out: the direction file to write.
        method: ``diff_means`` or ``pca``.
        pooling: ``mean`` or ``last``.
        seed: seed for building the model and data.
        kind: ``vrev``, or ``shuffled_history`` for an unrelated pair of checkpoints.

    Returns:
        The path written.
    """
    Extraction(method, pooling, kind)  # refuse bad settings before building anything
    check_output_file(out, "--out")
    module, datamodule = build_from_config(config_path, seed)
    probe = ProbeSet.from_datamodule(datamodule)
    layers = module.check_layers(layers)
    load_weights(module, witness_ckpt, what="witness_ckpt")
    rep_w = probe.read(module, layers, pooling)
    load_weights(module, reference_ckpt, what="reference_ckpt")
    rep_r = probe.read(module, layers, pooling)
    sources = {"witness": str(Path(witness_ckpt).resolve()), "reference": str(Path(reference_ckpt).resolve())}
    ds = direction_from_representations(module, probe, rep_w, rep_r, Extraction(method, pooling, kind, **sources))
    return ds.save(out)


def vrev_command(
    *,
    config_path: str,
    witness_ckpt: str,
    reference_ckpt: str,
    layers: list[str],
    out: str,
    method: Literal["diff_means", "pca"] = "diff_means",
    pooling: Literal["mean", "last"] = "mean",
    seed: int = 0,
    kind: Literal["vrev", "shuffled_history"] = "vrev",
) -> str:
    """Compute v_rev between two checkpoints of one history and save it with metadata (written atomically).

    Example: ``python -m testbed vrev --config_path align.yaml --witness_ckpt pre.ckpt --reference_ckpt aligned.ckpt
    --layers '[blocks.1.hidden]' --out vrev.pt`` (``--config`` takes a YAML file of these same arguments).

    Args:
        config_path: a fit config of the history (its model and data define the model class and the probe set).
        witness_ckpt: checkpoint of the dominant phase (e.g. the pre-alignment checkpoint).
        reference_ckpt: checkpoint of the aligned model.
        layers: layer names, e.g. blocks.1.hidden.
        out: output file.
        method: diff_means (normalised difference of means) or pca (top principal direction of paired differences).
        pooling: mean over tokens or last token.
        seed: seed for building the model and data.
        kind: vrev, or shuffled_history when the two checkpoints are an unrelated pair (a control).
    """
    path = compute_vrev_from_checkpoints(
        config_path, witness_ckpt, reference_ckpt, list(layers), out, method, pooling, seed, kind
    )
    print(f"wrote {path}")
    return str(path)
