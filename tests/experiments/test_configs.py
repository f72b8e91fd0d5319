"""Every YAML under experiments/ is used as shipped: fit configs and overlays (composed with the base their header
names) round-trip through ``--print_config`` and instantiate; study files (and study variants) resolve every run in a
dry run; report specs load. A YAML that fits none of these kinds fails the suite, so nothing is skipped silently."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.helpers.paths import REPO_ROOT

REPO = REPO_ROOT
EXPERIMENTS = REPO / "experiments"
OVERLAY_HEADER = re.compile(r"^# (?:Debug )?[Oo]verlay on (?:any fit config \(e\.g\. )?(\S+?\.yaml)")
VARIANT_HEADER = re.compile(r"^# Variant of (\S+?\.yaml)")


def kind_of(path: Path) -> tuple[str, list[Path]]:
    """(kind, the configs to compose in order) of one YAML file under experiments/."""
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0] if text else ""
    data = yaml.safe_load(text)
    if "recipes" in path.relative_to(EXPERIMENTS).parts:  # real-checkpoint paths: run on tiny checkpoints by
        # tests/testbed/llm/test_recipes.py and test_your_model.py
        return "recipe", [path]
    if match := OVERLAY_HEADER.match(first):
        return "overlay", [(path.parent / match.group(1)).resolve(), path]
    if match := VARIANT_HEADER.match(first):
        return "study", [(path.parent / match.group(1)).resolve(), path]
    if isinstance(data, dict) and "final" in data:
        return "study", [path]
    if isinstance(data, dict) and "columns" in data:
        return "report", [path]
    if isinstance(data, dict) and isinstance(data.get("model"), dict) and "class_path" in data["model"]:
        return "fit", [path]
    return "unknown", [path]


ALL_YAML = sorted(EXPERIMENTS.rglob("*.yaml"))
KINDS = {path: kind_of(path) for path in ALL_YAML}
FIT_LIKE = [p for p in ALL_YAML if KINDS[p][0] in ("fit", "overlay")]
STUDIES = [p for p in ALL_YAML if KINDS[p][0] == "study"]
REPORTS = [p for p in ALL_YAML if KINDS[p][0] == "report"]


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def config_args(configs: list[Path]) -> list[str]:
    return [arg for config in configs for arg in ("--config", str(config))]


def survives(explicit: object, printed_value: object) -> bool:
    """Whether every explicitly set value (nested mappings included) is in the printed config unchanged."""
    if isinstance(explicit, dict):
        return isinstance(printed_value, dict) and all(
            k in printed_value and survives(v, printed_value[k]) for k, v in explicit.items()
        )
    if isinstance(explicit, list):
        return isinstance(printed_value, (list, tuple)) and list(printed_value) == explicit
    return explicit == printed_value


def printed(run_cli, capsys, args: list[str]) -> dict:
    capsys.readouterr()
    assert run_cli(["fit", *args, "--print_config"]) == 0, capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)


def test_every_yaml_is_of_a_known_kind():
    unknown = [rel(p) for p in ALL_YAML if KINDS[p][0] == "unknown"]
    assert not unknown, f"YAML files that are no fit config, overlay, study or report spec: {unknown}"
    assert {"experiments/toy_regimes/quartic.yaml", "experiments/neural_toy/neural.yaml"} <= {rel(p) for p in FIT_LIKE}
    assert {p.parent.name for p in STUDIES} == {"toy_regimes", "neural_toy", "gravity_toy", "llm_safety"}
    for study in STUDIES:  # one folder per study, each with its report spec
        assert (study.parent / "report.yaml").is_file(), rel(study)


@pytest.mark.parametrize("config", FIT_LIKE, ids=rel)
def test_fit_configs_round_trip_and_instantiate(run_cli, capsys, tmp_path, config):
    from testbed.cli import TestbedCLI

    configs = KINDS[config][1]
    first = printed(run_cli, capsys, config_args(configs))
    for source in configs:  # explicit values of the base and of the overlay survive the print
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        if "class_path" in data.get("model", {}):
            assert first["model"]["class_path"] == data["model"]["class_path"]
    assert survives((yaml.safe_load(configs[-1].read_text(encoding="utf-8")) or {}).get("model", {}).get(
        "init_args", {}), first["model"]["init_args"])  # fmt: skip
    again = tmp_path / "printed.yaml"
    again.write_text(yaml.safe_dump(first), encoding="utf-8")
    assert printed(run_cli, capsys, ["--config", str(again)]) == first
    cli = TestbedCLI(args=[*config_args(configs), "--trainer.logger=false"], run=False)
    assert cli.model is not None and cli.datamodule is not None and cli.trainer is not None


@pytest.mark.parametrize("study", STUDIES, ids=rel)
def test_studies_resolve_every_run(run_cli, capsys, tmp_path, study):
    args = ["study", *config_args(KINDS[study][1]), "--runs_dir", str(tmp_path), "--dry_run", "true", "--quiet", "true"]
    assert run_cli(args) == 0, capsys.readouterr().err
    assert list(tmp_path.rglob("run_config.yaml"))


@pytest.mark.parametrize("spec", REPORTS, ids=rel)
def test_report_specs_load(spec):
    from testbed.report.spec import load_spec

    loaded = load_spec(spec)
    assert loaded.tables and loaded.tables[0].columns
