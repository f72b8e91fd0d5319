"""Concurrency with real processes: a study holds its folder and a ``fit`` its run folder for their lifetime; a second
process is refused with one line naming the holder; a lock left by a killed process is taken over; takeover is
atomic when several processes race for it; a pid recorded in a lock file is never what decides."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from testbed.errors import ConfigError
from testbed.locks import LOCK_FILE, FolderBusy, folder_lock, holder_of, make_folders, remove_created
from tests.helpers.hostile import quadratic_fit
from tests.helpers.paths import REPO_ROOT

TOY = quadratic_fit(3)


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", PYTHONHASHSEED="0")


def _testbed(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "testbed", *args], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, "the first process never got going"
        time.sleep(0.1)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("testbed: error:")]


def _study(folder: Path, callbacks: list[dict]) -> Path:
    (folder / "toy.yaml").write_text(yaml.safe_dump(TOY))
    study = {"name": "locked", "runs_dir": str(folder / "runs"), "seeds": [0],
             "final": {"name": "finetune", "config": "toy.yaml", "callbacks": callbacks}}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_a_second_study_and_a_fit_on_a_busy_folder_are_refused_naming_the_holder(tmp_path: Path) -> None:
    signal = tmp_path / "holding"
    hold = {"class_path": "tests.helpers.hostile.HoldAtStart", "init_args": {"signal": str(signal)}}
    study = _study(tmp_path, [hold])
    first = _testbed(["study", "--config", str(study), "--quiet", "true"], tmp_path)
    _wait_for(signal, first)
    root = tmp_path / "runs" / "locked"
    holder = holder_of(root)
    assert holder is not None and holder["pid"] == first.pid

    code, err = _finish(_testbed(["study", "--config", str(study), "--quiet", "true"], tmp_path))
    assert code == 2 and len(_errors(err)) == 1, err[-2000:]
    assert f"pid {first.pid}" in _errors(err)[0] and "started" in _errors(err)[0] and "Traceback" not in err

    run_config = root / "finetune" / "seed=0" / "run_config.yaml"
    code, err = _finish(_testbed(["fit", "--config", str(run_config)], tmp_path))
    assert code == 2 and len(_errors(err)) == 1 and f"pid {first.pid}" in err, err[-2000:]

    signal.unlink()
    code, err = _finish(first)
    assert code == 0, err[-2000:]
    done = json.loads((root / "finetune" / "seed=0" / "DONE.json").read_text())
    assert done["global_step"] == 3
    assert not (root / LOCK_FILE).exists() and not (root / "finetune" / "seed=0" / LOCK_FILE).exists()
    events = list((root / "finetune" / "seed=0").glob("events.out.tfevents.*"))
    assert len(events) == 1  # the refused processes wrote nothing into the run


def test_a_lock_left_by_a_killed_study_is_taken_over(tmp_path: Path) -> None:
    study = _study(tmp_path, [{"class_path": "tests.helpers.callbacks.KillAtStep", "init_args": {"step": 1}}])
    code, _ = _finish(_testbed(["study", "--config", str(study), "--quiet", "true"], tmp_path))
    assert code == -9  # SIGKILL while holding the study folder and the run folder
    root = tmp_path / "runs" / "locked"
    dead = holder_of(root)
    assert dead is not None and (root / "finetune" / "seed=0" / LOCK_FILE).exists()

    calm = _study(tmp_path, [])
    code, err = _finish(_testbed(["study", "--config", str(calm), "--quiet", "true"], tmp_path))
    assert code == 0, err[-2000:]
    assert f"took over the stale lock of {root} left by pid {dead['pid']}" in err
    assert json.loads((root / "finetune" / "seed=0" / "DONE.json").read_text())["global_step"] == 3


def test_a_recorded_pid_that_is_alive_does_not_keep_a_free_lock(tmp_path: Path, capsys) -> None:
    """pid reuse: the lock file names a live process that does not hold the lock; liveness comes from the kernel."""
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "started": "long ago", "what": "study"}))
    with folder_lock(tmp_path, "test"):
        assert holder_of(tmp_path)["pid"] == os.getpid()
        with folder_lock(tmp_path, "nested"):  # re-entrant within one process
            pass
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()
    assert f"left by pid {os.getppid()}" in capsys.readouterr().err


def _contend(folder: str, log: str, barrier) -> None:
    barrier.wait()
    for _ in range(20):
        try:
            with folder_lock(folder, "contender"):
                with open(log, "a") as fh:
                    fh.write(f"in {os.getpid()}\n")
                    fh.flush()
                    time.sleep(0.002)
                    fh.write(f"out {os.getpid()}\n")
            return
        except FolderBusy:
            time.sleep(0.001)


def test_racing_processes_never_hold_a_lock_together(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999999, "started": "stale"}))  # a stale lock to take over
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(6)
    log = tmp_path / "log"
    procs = [ctx.Process(target=_contend, args=(str(tmp_path), str(log), barrier)) for _ in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    lines = log.read_text().splitlines()
    assert lines, "nobody got the lock"
    for enter, leave in zip(lines[::2], lines[1::2], strict=True):  # strictly alternating: never two holders
        assert enter.startswith("in ") and leave == "out " + enter[3:]


def test_clean_up_removes_only_folders_this_process_created(tmp_path: Path) -> None:
    created = make_folders(tmp_path / "a" / "b" / "c")
    assert created == [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    (tmp_path / "a" / "other").mkdir()  # another process writes beside us meanwhile
    remove_created(created)
    assert (tmp_path / "a" / "other").is_dir() and not (tmp_path / "a" / "b").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        make_folders(tmp_path / "file" / "sub")
