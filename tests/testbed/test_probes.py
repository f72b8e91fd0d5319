"""ProbeSet: fingerprints, side-effect-free reads, layer errors, sharding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from testbed.errors import ConfigError
from testbed.probes import ProbeSet, fingerprint
from toy_models.gravity import GravityData, GravityMLP


class DropoutMLP(GravityMLP):
    """GravityMLP with dropout in the first block, so an unisolated read would consume RNG and add noise."""

    def __init__(self) -> None:
        super().__init__(input_dim=32, hidden=16)
        self.blocks[0].append(nn.Dropout(0.5))


def test_fingerprint_depends_on_content_and_not_on_dict_order() -> None:
    a = {"input_ids": torch.arange(6).view(2, 3), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    b = {"attention_mask": a["attention_mask"].clone(), "input_ids": a["input_ids"].clone()}
    assert fingerprint(a) == fingerprint(b)
    b["input_ids"][1, 2] = 99
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(torch.zeros(2, 3)) != fingerprint(torch.zeros(2, 3, dtype=torch.float64))
    assert fingerprint(torch.zeros(2, 3)) != fingerprint(torch.zeros(3, 2))


def test_probe_batch_is_the_same_in_every_phase() -> None:
    prints = {
        ProbeSet.from_datamodule(GravityData(phase=p, probe_size=16)).fingerprint
        for p in ("pretrain", "align", "finetune")
    }
    assert len(prints) == 1


def test_read_is_side_effect_free_and_deterministic() -> None:
    torch.manual_seed(0)
    model = DropoutMLP().train()
    probe = ProbeSet(GravityData(probe_size=8).probe_batch())
    torch.manual_seed(123)
    first = probe.read(model, ["blocks.0.hidden", "blocks.1.hidden"])
    after_read = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_read)  # the read consumed no global randomness
    assert model.training and all(m.training for m in model.modules())  # modes restored
    second = probe.read(model, ["blocks.0.hidden", "blocks.1.hidden"])
    assert torch.equal(first["blocks.0.hidden"], second["blocks.0.hidden"])  # eval mode: no dropout noise
    assert first["blocks.1.hidden"].shape == (8, 16)
    assert not first["blocks.1.hidden"].requires_grad


def test_differentiable_read_on_request() -> None:
    model = GravityMLP(hidden=16)
    probe = ProbeSet(GravityData(probe_size=4).probe_batch())
    rep = probe.mean(model, ["blocks.1.hidden"], grad=True)["blocks.1.hidden"]
    rep.sum().backward()
    assert model.blocks[0][0].weight.grad is not None and model.blocks[0][0].weight.grad.abs().sum() > 0


def test_unknown_layer_and_pooling_are_clear_errors() -> None:
    model = GravityMLP(hidden=8)
    probe = ProbeSet(GravityData(probe_size=4).probe_batch())
    with pytest.raises(
        ConfigError, match=r"unknown layer name\(s\) \['blocks.7.hidden'\].*blocks.0.hidden, blocks.1.hidden"
    ):
        probe.read(model, ["blocks.7.hidden"])
    with pytest.raises(ConfigError, match="unknown pooling 'max'.*last, mean"):
        probe.read(model, ["blocks.0.hidden"], pooling="max")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="empty"):
        ProbeSet(torch.zeros(0, 3))


def test_shard_sums_reduce_to_the_full_mean() -> None:
    model = GravityMLP(hidden=8)
    probe = ProbeSet(GravityData(probe_size=10).probe_batch())
    layers = ["blocks.1.hidden"]
    full = probe.mean(model, layers)["blocks.1.hidden"]
    total, rows = torch.zeros(8), 0
    for rank in range(4):  # 10 rows over 4 ranks: shards of 3, 3, 2, 2 (what the monitor reads per process)
        reps = probe.read(model, layers, batch=probe.shard(rank, 4))["blocks.1.hidden"]
        total, rows = total + reps.sum(0), rows + reps.shape[0]
    assert rows == 10
    torch.testing.assert_close(total / rows, full)


def test_token_batches_with_masks_and_pooling(tiny_gpt2) -> None:
    from testbed.testing import tiny_probe_batch

    module, tokenizer = tiny_gpt2()
    batch = tiny_probe_batch(tokenizer, n=4)
    probe = ProbeSet(batch)
    last = probe.read(module, ["blocks.1.resid_post"], pooling="last")["blocks.1.resid_post"]
    mean = probe.read(module, ["blocks.1.resid_post"], pooling="mean")["blocks.1.resid_post"]
    assert last.shape == mean.shape == (4, 32)
    assert not torch.allclose(last, mean)
    # One prompt alone (no padding) gives the same pooled representation as inside the padded batch.
    row = 0
    keep = batch["attention_mask"][row].bool()
    alone = {k: v[row : row + 1, keep] for k, v in batch.items()}
    alone_last = ProbeSet(alone).read(module, ["blocks.1.resid_post"], pooling="last")["blocks.1.resid_post"]
    torch.testing.assert_close(alone_last[0], last[row], atol=1e-5, rtol=1e-4)
