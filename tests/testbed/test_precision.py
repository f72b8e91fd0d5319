"""Every direction callback under ``precision: 64-true`` on the toys: probe batches are read in the model's dtype."""

from __future__ import annotations

import pytest
import torch

from testbed.probes import ProbeSet, as_model_dtype
from testbed.testing import TinyData, TinyRegressor
from tests.helpers.gravity_runs import finetune_config, write_direction


@pytest.mark.parametrize(
    "blocker", ["UpdateProjectionBlocker", "GradientProjectionBlocker", "RepresentationPenalty", "ActivationClamp"]
)
def test_direction_callbacks_run_in_float64(tmp_path, run_cli, capsys, blocker):
    direction = write_direction(tmp_path / "vrev.pt")
    config = finetune_config(tmp_path / "f.yaml", direction, blocker=blocker, max_steps=3,
                             trainer={"precision": "64-true"})
    assert run_cli(["fit", "--config", str(config)]) == 0, capsys.readouterr().err[-2000:]


def test_probe_reads_cast_float_inputs_to_the_weights_dtype_and_keep_the_fingerprint():
    model, data = TinyRegressor().double(), TinyData()
    probe = ProbeSet(data.probe_batch())
    reps = probe.read(model, ["blocks.0.hidden"])
    assert reps["blocks.0.hidden"].dtype == torch.float64
    assert probe.fingerprint == ProbeSet(data.probe_batch()).fingerprint
    ids = {"input_ids": torch.ones(2, 3, dtype=torch.long), "mask": torch.ones(2, 3)}
    cast = as_model_dtype(ids, model)
    assert cast["input_ids"].dtype == torch.long and cast["mask"].dtype == torch.float64
