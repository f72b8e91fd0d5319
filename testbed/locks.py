"""What this process owns on disk: folder locks, and the folders it created itself.

**Locks.** A study holds its study folder, and a ``fit`` its run folder, for its whole lifetime: the lock is the
file ``<folder>/.testbed.lock`` held with ``fcntl.flock``. The kernel drops a flock when its holder exits, however it
exits, so a lock file left behind by a dead process is stale by construction: the next process simply locks it (an
atomic kernel operation; two newcomers cannot both win) and says that it took it over. Liveness is never judged from
a pid, so pid reuse cannot make a dead holder look alive or a live one look dead. The file records the holder's pid,
host, start time and command, which a refused process prints. Release unlinks the file while still holding it; an
acquirer that locked a file unlinked meanwhile notices (the path no longer names the inode it locked) and retries.
Locks are re-entrant within a process (the study runner holds a run's folder while that run's ``fit`` takes it again).
Where ``fcntl`` is missing (Windows) locking is off. flock is reliable on local file systems; over NFS it depends on
the mount.

**Created folders.** ``make_folders`` creates the missing folders on the way to a path one ``mkdir`` at a time and
returns those this process created (a folder another process made first is not in the list), so clean-up after a
refused run removes only folders it made, and only when they are empty (``remove_created``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "FolderBusy", "folder_lock", "holder_of", "make_folders", "remove_created"]

LOCK_FILE = ".testbed.lock"
_HELD: dict[str, list[Any]] = {}  # real path of the lock file -> [fd, depth]


class FolderBusy(ConfigError):
    """Another live process holds the folder's lock."""


def _process_start() -> float:
    """When this process started (Linux ``/proc``; elsewhere: now)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _me(what: str) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(_process_start())),
            "locked": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}


def holder_of(folder: str | os.PathLike) -> dict[str, Any] | None:
    """What the lock file of ``folder`` says about its (last) holder, or ``None``."""
    try:
        data = json.loads((Path(folder) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "a process that has not yet written its details"
    host = f" on {info.get('host')}" if info.get("host") != socket.gethostname() else ""
    return f"pid {info.get('pid')}{host}, started {info.get('started')} ({info.get('what', 'testbed')})"


def _try_lock(path: Path) -> int | None:
    """An fd holding the flock on ``path`` (created if missing), or ``None`` if a live process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder unlinked the file between our open and our lock: start again


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``folder``'s lock (the folder must exist) for the block, or refuse with a ``FolderBusy`` naming the holder.

    Args:
        folder: the study or run folder.
        what: what holds it, for the record (``"study 'gravity_toy'"``, ``"fit"``).
    """
    if fcntl is None:
        yield
        return
    path = Path(folder) / LOCK_FILE
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    previous = holder_of(folder)
    try:
        fd = _try_lock(path)
    except OSError as exc:
        raise ConfigError(f"cannot lock {folder}: {exc.strerror or exc}") from None
    if fd is None:
        raise FolderBusy(f"{folder} is in use by another testbed process: {_describe(holder_of(folder))}; "
                         "wait for it to finish (or stop it) and try again")
    if previous and previous.get("pid") != os.getpid():
        print(f"testbed: took over the stale lock of {folder} left by {_describe(previous)}, which has exited",
              file=sys.stderr)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(_me(what)).encode())
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        try:
            os.unlink(path)  # while still holding it: a waiting process then sees a fresh file
        except OSError:
            pass
        os.close(fd)


def make_folders(folder: str | os.PathLike) -> list[Path]:
    """Create ``folder`` and its missing parents one ``mkdir`` at a time; return the ones this call created
    (outermost first). A folder that another process creates meanwhile is used, not claimed."""
    folder = Path(folder).absolute()
    missing = []
    for path in [folder, *folder.parents]:
        if path.is_dir():
            break
        missing.append(path)
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise ConfigError(f"{path} is a file, not a folder") from None
            continue
        except OSError as exc:
            raise ConfigError(f"cannot create folder {path}: {exc.strerror or exc}") from None
        created.append(path)
    return created


def remove_created(created: list[Path]) -> None:
    """Remove the folders ``make_folders`` created, innermost first, each only if it is empty (anything another
    process put there meanwhile stays, and so does every folder above it)."""
    for path in reversed(created):
        try:
            path.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return
