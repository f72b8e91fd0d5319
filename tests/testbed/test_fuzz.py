"""Fuzzing the CLI with hypothesis: hostile fit configs and overrides made from the CLI's own schema
(``tests.helpers.fuzzing``) must exit 0, or 2 with exactly one error line and nothing left behind; never a traceback.

The default run tries a fixed, small set of cases (about half a minute); ``-m slow`` tries
``TESTBED_FUZZ_EXAMPLES`` (default 2000) random ones and, with ``TESTBED_FUZZ_LOG=<file>``, writes every outcome
there as JSON lines.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.helpers.fuzzing import Case, Outcome, case_strategy, fixtures, memory_cap, print_config, run_case


def _fuzz(tmp_path: Path, examples: int, derandomize: bool, seconds: float) -> list[Outcome]:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    paths = fixtures(inputs)
    bases = {name: print_config(path) for name, path in paths.items()}
    outcomes: list[Outcome] = []
    log = os.environ.get("TESTBED_FUZZ_LOG")

    def record(entry: dict) -> None:  # as it goes: a case that kills the process is still on record
        if log:
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, ensure_ascii=False) + "\n")

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=case_strategy(bases, inputs, paths))
    def one(case: Case) -> None:
        sandbox = tmp_path / f"sandbox{len(outcomes)}"
        record({"verdict": "start", "changes": case[1], "args": case[0]})
        outcomes.append(run_case(case, sandbox, seconds))
        record(dataclasses.asdict(outcomes[-1]))
        shutil.rmtree(sandbox, ignore_errors=True)

    with memory_cap():
        one()
    return outcomes


def _check(outcomes: list[Outcome]) -> None:
    counts = Counter(o.verdict if o.verdict != "ok" else f"exit {o.code}" for o in outcomes)
    print(f"fuzz: {len(outcomes)} cases: {dict(counts)}")
    failed = [o for o in outcomes if o.verdict == "failed"]
    assert not failed, "\n".join(f"{o.code}: {o.why}\n    {o.changes}" for o in failed[:20])


def test_fuzzed_configs_keep_the_cli_contract(tmp_path: Path) -> None:
    outcomes = _fuzz(tmp_path, examples=12, derandomize=True, seconds=60)
    _check(outcomes)
    assert sum(o.code == 2 for o in outcomes) >= 3  # the cases do reach the refusals


@pytest.mark.slow
def test_many_fuzzed_configs_keep_the_cli_contract(tmp_path: Path) -> None:
    _check(_fuzz(tmp_path, int(os.environ.get("TESTBED_FUZZ_EXAMPLES", "2000")), derandomize=False, seconds=60))
