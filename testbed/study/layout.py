"""The one owner of run-folder names: where a study writes each run, and how a folder is read back.

::

    <runs_dir>/<study>/<arm>/seed=<s>/                 one arm (an arm name may hold "/", e.g. a sweep point)
    <runs_dir>/<study>/_shared/<phase>/seed=<s>/       a shared phase
    <runs_dir>/<study>/_shared/_directions/seed=<s>/   direction files (not a run)

Inside a run folder: ``run_config.yaml`` (the resolved fit config), ``checkpoints/last.ckpt`` (the final
weights) and ``DONE.json`` (written last, atomically: the run finished). Everything else in the testbed builds and
parses these paths through this module.

Containment: every part of an arm name is a plain folder name (``check_folder_names``), and every folder the study
derives must resolve (symbolic links followed) to a path inside the study folder (``check_inside``); the study
refuses anything else before it runs or deletes anything.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import ConfigError

__all__ = [
    "SHARED",
    "DIRECTIONS",
    "DONE",
    "RUN_CONFIG",
    "LAST_CHECKPOINT",
    "LAYOUT_SUFFIX",
    "REPORT_SPEC",
    "RunKey",
    "arm_version",
    "shared_version",
    "run_dir",
    "direction_file",
    "direction_done_file",
    "done_file",
    "report_spec_file",
    "run_config_file",
    "checkpoint_file",
    "parse_run",
    "is_finished",
    "check_folder_names",
    "check_inside",
]

SHARED = "_shared"
DIRECTIONS = "_directions"
DONE = "DONE.json"
REPORT_SPEC = "report.yaml"
RUN_CONFIG = "run_config.yaml"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
# Suffix of the study root's own event file (custom-scalars layout and HParams experiment): not a run.
LAYOUT_SUFFIX = ".study_layout"
_SEED = re.compile(r"^seed=(-?\d+)$")


@dataclass(frozen=True)
class RunKey:
    """What a run folder is: an arm (or a shared phase) and a seed.

    Attributes:
        arm: the arm name; for a shared phase ``_shared/<phase>``.
        seed: the seed (0 for a folder without a ``seed=<s>`` part).
        phase: the shared phase's name, or ``None`` for an arm.
    """

    arm: str
    seed: int
    phase: str | None = None

    @property
    def shared(self) -> bool:
        return self.phase is not None

    @property
    def version(self) -> str:
        """The logger version of this run (its folder below the study folder)."""
        return shared_version(self.phase, self.seed) if self.phase is not None else arm_version(self.arm, self.seed)

    @classmethod
    def of_shared(cls, phase: str, seed: int) -> RunKey:
        """The key of shared phase ``phase`` for ``seed`` (what ``parse_run`` gives back for its folder)."""
        return cls(f"{SHARED}/{phase}", int(seed), phase)


def arm_version(arm: str, seed: int) -> str:
    """The logger version (path below the study folder) of an arm's run."""
    return f"{arm}/seed={int(seed)}"


def shared_version(phase: str, seed: int) -> str:
    """The logger version of a shared phase's run."""
    return f"{SHARED}/{phase}/seed={int(seed)}"


def run_dir(study_root: Path, key: RunKey) -> Path:
    """The folder of the run ``key`` under the study folder."""
    return Path(study_root) / key.version


def direction_file(study_root: Path, name: str, seed: int) -> Path:
    """Where the study keeps direction ``name`` for ``seed``."""
    return Path(study_root) / SHARED / DIRECTIONS / f"seed={int(seed)}" / f"{name}.pt"


def direction_done_file(study_root: Path, name: str, seed: int) -> Path:
    """The marker written (atomically, last) once direction ``name`` for ``seed`` is complete."""
    return direction_file(study_root, name, seed).with_suffix(".done.json")


def report_spec_file(study_root: Path) -> Path:
    """The study's report spec, copied into the study folder (``python -m testbed report`` reads it there)."""
    return Path(study_root) / REPORT_SPEC


def done_file(folder: Path) -> Path:
    """The run's ``DONE.json``: written last, it records that the run finished and with which config."""
    return Path(folder) / DONE


def run_config_file(folder: Path) -> Path:
    """The run's fully resolved fit config (``python -m testbed fit --config`` reruns it)."""
    return Path(folder) / RUN_CONFIG


def checkpoint_file(folder: Path) -> Path:
    """The run's final weights, which the next phase starts from."""
    return Path(folder) / LAST_CHECKPOINT


def parse_run(study_root: Path, folder: Path) -> RunKey:
    """The ``RunKey`` of ``folder`` (a run folder below ``study_root``, or ``study_root`` itself).

    The last ``seed=<s>`` part is the seed; the other parts form the arm. A folder with no seed part is seed 0.
    """
    parts = Path(folder).resolve().relative_to(Path(study_root).resolve()).parts
    seeds = [i for i, part in enumerate(parts) if _SEED.match(part)]
    seed = int(_SEED.match(parts[seeds[-1]]).group(1)) if seeds else 0
    rest = [part for i, part in enumerate(parts) if not seeds or i != seeds[-1]]
    arm = "/".join(rest) or Path(study_root).name
    phase = rest[1] if len(rest) == 2 and rest[0] == SHARED else None
    return RunKey(arm, seed, phase)


def is_finished(folder: Path) -> bool:
    """Whether the run in ``folder`` finished (its ``DONE.json`` exists)."""
    return done_file(folder).is_file()


def check_folder_names(name: str, what: str) -> None:
    """Refuse a name whose ``/``-separated parts are not plain folder names: empty, ``.`` or ``..``, a control
    character, over 255 bytes, a ``seed=<s>`` part (it would be read back as the seed) or the reserved ``_shared``."""
    for part in name.split("/"):
        bad = (part in ("", ".", "..", SHARED) or _SEED.match(part) or len(os.fsencode(part)) > 255
               or any(ord(ch) < 32 or ord(ch) == 127 for ch in part))
        if bad:
            raise ConfigError(f"{what} {name!r} does not make a plain folder name (part {part!r}); its run folder "
                              "must lie inside the study folder: use values without '/', '..' or control characters")


def check_inside(study_root: Path, path: Path, what: str) -> Path:
    """``path`` if it resolves (symbolic links followed) to a path strictly inside ``study_root``, else a
    ``ConfigError`` naming ``what``."""
    root, resolved = Path(study_root).resolve(), Path(path).resolve()
    if resolved == root or root not in resolved.parents:
        raise ConfigError(f"{what}: its folder {path} resolves to {resolved}, outside the study folder {root}; refused")
    return path
