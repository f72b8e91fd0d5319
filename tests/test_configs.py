"""Every fit config under experiments/ parses, and ``--print_config`` round-trips (print → re-read → same config)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def is_fit_config(path: Path) -> bool:
    """A plain fit config: a mapping whose ``model`` names a class; study files (``phases:``) and overlays are not."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "phases" in data:
        return False
    model = data.get("model")
    return isinstance(model, dict) and "class_path" in model


FIT_CONFIGS = sorted(p for p in (REPO / "experiments").rglob("*.yaml") if is_fit_config(p))


def survives(explicit: object, printed_value: object) -> bool:
    """Whether every explicitly set value (nested mappings included) is in the printed config unchanged."""
    if isinstance(explicit, dict):
        return isinstance(printed_value, dict) and all(
            k in printed_value and survives(v, printed_value[k]) for k, v in explicit.items()
        )
    if isinstance(explicit, list):
        return isinstance(printed_value, (list, tuple)) and list(printed_value) == explicit
    return explicit == printed_value


def printed(run_cli, capsys, config: str) -> dict:
    capsys.readouterr()
    assert run_cli(["fit", "--config", config, "--print_config"]) == 0, capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


def test_the_toy_configs_are_found():
    names = {p.relative_to(REPO).as_posix() for p in FIT_CONFIGS}
    toys = {"experiments/toy/quartic.yaml", "experiments/toy/neural.yaml", "experiments/toy/regime_uncoupled.yaml"}
    assert toys <= names


@pytest.mark.parametrize("config", FIT_CONFIGS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_print_config_round_trips(run_cli, capsys, tmp_path, config):
    first = printed(run_cli, capsys, str(config))
    source = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert first["model"]["class_path"] == source["model"]["class_path"]
    assert survives(source["model"].get("init_args", {}), first["model"]["init_args"])  # explicit values kept
    again = tmp_path / "printed.yaml"
    again.write_text(yaml.safe_dump(first), encoding="utf-8")
    assert printed(run_cli, capsys, str(again)) == first
