"""v_rev extraction: planted-direction recovery, controls, the file format and refusal of mismatches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from testbed import protocol
from testbed.commands import compute_vrev_from_checkpoints
from testbed.directions import (
    DirectionSet,
    Extraction,
    direction_from_reps,
    extract_direction,
    load_direction,
    random_directions,
)
from testbed.errors import CheckpointError, ConfigError
from testbed.probes import ProbeSet
from tests.helpers.paths import REPO_ROOT
from toy_models.gravity import GravityData, GravityMLP

GRAVITY_PRETRAIN = "experiments/gravity_toy/pretrain.yaml"
REPO = REPO_ROOT


class Planted(protocol.TestbedModule):
    """One linear layer ``blocks.0.out`` (a stream of width ``width``) followed by a tanh layer ``blocks.1.out``."""

    def __init__(self, width: int = 24, in_dim: int = 10) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(in_dim, width), nn.Sequential(nn.Linear(width, width), nn.Tanh())])

    def layer_names(self) -> list[str]:
        return ["blocks.0.out", "blocks.1.out"]

    def layer_module(self, name: str) -> nn.Module:
        return self.blocks[int(name.split(".")[1])]

    def forward_probe(self, batch: torch.Tensor) -> None:
        self.blocks[1](self.blocks[0](batch))


def planted_pair(shift: float = 2.0, noise: float = 0.05, seed: int = 0) -> tuple[Planted, Planted, torch.Tensor]:
    """A witness and a reference whose layer-0 streams differ by ``shift * v`` plus small weight noise."""
    torch.manual_seed(seed)
    witness = Planted()
    reference = Planted()
    reference.load_state_dict(witness.state_dict())
    v = torch.randn(24)
    v = v / v.norm()
    with torch.no_grad():
        reference.blocks[0].bias -= shift * v
        reference.blocks[0].weight += noise * torch.randn_like(reference.blocks[0].weight)
    return witness, reference, v


@pytest.mark.parametrize("method", ["diff_means", "pca"])
def test_planted_direction_is_recovered(method: str) -> None:
    witness, reference, v = planted_pair()
    probe = ProbeSet(torch.randn(64, 10, generator=torch.Generator().manual_seed(1)))
    ds = extract_direction(witness, reference, probe, ["blocks.0.out"], Extraction(method=method))
    cos = torch.dot(ds.vectors["blocks.0.out"], v).item()
    assert cos > 0.99, cos  # sign included: v_rev points from the reference back to the witness
    assert ds.vectors["blocks.0.out"].norm().item() == pytest.approx(1.0, abs=1e-6)
    assert ds.metadata["widths"] == {"blocks.0.out": 24}
    assert ds.metadata["probe_fingerprint"] == probe.fingerprint and ds.metadata["method"] == method


def test_pca_is_sign_aligned_with_mean_difference() -> None:
    gen = torch.Generator().manual_seed(0)
    v = torch.zeros(6)
    v[2] = 1.0
    coeffs = 1.0 + 0.3 * torch.randn(50, 1, generator=gen)
    rep_r = torch.randn(50, 6, generator=gen)
    rep_w = rep_r + coeffs * v + 0.01 * torch.randn(50, 6, generator=gen)
    vec = direction_from_reps(rep_w, rep_r, "pca")
    assert torch.dot(vec, v).item() > 0.999
    with pytest.raises(ConfigError, match="same representations"):
        direction_from_reps(rep_r, rep_r, "diff_means", "blocks.0.out")
    with pytest.raises(ConfigError, match="unknown direction method 'svd'"):
        direction_from_reps(rep_w, rep_r, "svd")


def test_save_load_round_trip_and_metadata_checks(tmp_path: Path) -> None:
    witness, reference, _ = planted_pair()
    probe = ProbeSet(torch.randn(16, 10, generator=torch.Generator().manual_seed(2)))
    ds = extract_direction(
        witness, reference, probe, ["blocks.0.out", "blocks.1.out"], Extraction(witness="w.ckpt", reference="r.ckpt")
    )
    path = ds.save(tmp_path / "vrev.pt")
    loaded = load_direction(path, module=reference, probe=probe)
    for layer in ds.layers:
        assert torch.equal(loaded.vectors[layer], ds.vectors[layer])
        assert torch.equal(loaded.reference_mean[layer], ds.reference_mean[layer])
    assert loaded.metadata["witness"] == "w.ckpt" and loaded.metadata["pooling"] == "mean"
    assert loaded.metadata["model_class"].endswith("Planted")
    assert load_direction(path, layers=["blocks.1.out"]).layers == ["blocks.1.out"]

    with pytest.raises(ConfigError, match=r"width 24 at blocks.0.out.*width 12"):
        load_direction(path, module=Planted(width=12), probe=probe)
    with pytest.raises(ConfigError, match="model class .*Planted, not .*GravityMLP"):
        load_direction(path, module=GravityMLP())
    with pytest.raises(ConfigError, match="different probe set"):
        load_direction(path, module=reference, probe=ProbeSet(torch.randn(16, 10)))
    with pytest.raises(ConfigError, match=r"no layer\(s\) \['blocks.5.out'\]"):
        load_direction(path, layers=["blocks.5.out"])

    renamed = DirectionSet(
        {"blocks.9.out": ds.vectors["blocks.0.out"]},
        dict(ds.metadata, layers=["blocks.9.out"], widths={"blocks.9.out": 24}),
    )
    renamed.save(tmp_path / "renamed.pt")
    with pytest.raises(ConfigError, match=r"layer\(s\) \['blocks.9.out'\] that this model does not have"):
        load_direction(tmp_path / "renamed.pt", module=reference)

    torch.save({"weights": torch.ones(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a testbed direction file"):
        load_direction(tmp_path / "other.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="direction file"):
        load_direction(tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_direction(tmp_path / "missing.pt")


def test_random_directions_are_seeded_unit_vectors(tmp_path: Path) -> None:
    model = Planted()
    probe = ProbeSet(torch.randn(8, 10))
    a = random_directions(model, probe, ["blocks.0.out", "blocks.1.out"], seed=3)
    b = random_directions(model, probe, ["blocks.0.out", "blocks.1.out"], seed=3)
    c = random_directions(model, probe, ["blocks.0.out", "blocks.1.out"], seed=4)
    assert torch.equal(a.vectors["blocks.0.out"], b.vectors["blocks.0.out"])
    assert not torch.equal(a.vectors["blocks.0.out"], c.vectors["blocks.0.out"])
    assert a.metadata["kind"] == "random" and a.width("blocks.1.out") == 24
    assert load_direction(a.save(tmp_path / "random.pt"), module=model, probe=probe).metadata["seed"] == 3


def _state_files(tmp_path: Path) -> tuple[Path, Path]:
    from testbed.commands import build_from_config

    module, _ = build_from_config(REPO / GRAVITY_PRETRAIN, seed=0)
    witness = tmp_path / "witness.pt"
    torch.save(module.state_dict(), witness)
    with torch.no_grad():
        module.blocks[0][0].bias += 0.5
    reference = tmp_path / "reference.pt"
    torch.save(module.state_dict(), reference)
    return witness, reference


def _vrev_args(config: str, witness: Path, reference: Path, layers: str, out: Path) -> list[str]:
    """Arguments of the ``vrev`` verb."""
    return [
        "vrev",
        "--config_path",
        config,
        "--witness_ckpt",
        str(witness),
        "--reference_ckpt",
        str(reference),
        "--layers",
        layers,
        "--out",
        str(out),
    ]


def test_compute_from_checkpoints_and_the_vrev_verb(tmp_path: Path, run_cli) -> None:
    config = str(REPO / GRAVITY_PRETRAIN)
    witness, reference = _state_files(tmp_path)
    out = compute_vrev_from_checkpoints(
        config, str(witness), str(reference), ["blocks.1.hidden"], str(tmp_path / "v.pt"), method="pca"
    )
    ds = load_direction(out, module=GravityMLP(), probe=ProbeSet(GravityData().probe_batch()))
    assert ds.metadata["kind"] == "vrev" and ds.metadata["method"] == "pca"
    assert ds.metadata["witness"] == str(witness.resolve())
    assert ds.metadata["model_class"] == "toy_models.gravity.GravityMLP"

    code = run_cli(
        _vrev_args(config, witness, reference, "[blocks.0.hidden, blocks.1.hidden]", tmp_path / "cli.pt")
        + ["--kind", "shuffled_history"]
    )
    assert code == 0
    assert load_direction(tmp_path / "cli.pt").metadata["kind"] == "shuffled_history"

    bad = tmp_path / "bad.pt"
    assert run_cli(_vrev_args(config, witness, reference, "[blocks.4.hidden]", bad)) == 2
    assert run_cli(_vrev_args(config, tmp_path / "nope.ckpt", reference, "[blocks.1.hidden]", bad)) == 2
    assert not bad.exists()
    assert not list(tmp_path.glob("*.partial"))
