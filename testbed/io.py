"""Safe file I/O: atomic writes, ``weights_only`` tensor loading, UTF-8 text and the one YAML loader.

Outputs are written to a temporary sibling and renamed into place, so an interrupted write never leaves a file that
later loads as valid; a target that names an existing folder (or lies below a file) is refused first. Tensors load
with ``weights_only=True``. Text input must be UTF-8. Every YAML file the testbed reads (fit configs, study files,
overlays, report specs) goes through ``load_yaml``, which refuses a key given twice in one mapping (plain YAML keeps
the last one silently); ``install_yaml_loader`` gives jsonargparse, which reads fit configs and study files itself,
the same refusal.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from testbed.errors import CheckpointError, ConfigError


def _default_file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (``mkstemp`` uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_output_path(path: str | os.PathLike, what: str = "output", folder: bool = False) -> Path:
    """``path`` as a ``Path`` if a file (or, with ``folder``, a folder) can be written there, else a ``ConfigError``
    naming ``what``: no NUL byte or name over 255 bytes, no file on the way to it, and not an existing folder (a
    file) or an existing file (a folder)."""
    text = os.fspath(path)
    if not text or "\0" in text:
        raise ConfigError(f"{what} path {text!r} is empty or holds a NUL byte")
    path = Path(text)
    if any(len(os.fsencode(part)) > 255 for part in path.parts):
        raise ConfigError(f"{what} path {text!r} has a name longer than 255 bytes")
    if path.exists() and path.is_dir() != folder:
        raise ConfigError(f"{what} {path} names an existing {'file' if folder else 'folder'}; give a "
                          f"{'folder' if folder else 'file name'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {path}: {parent} is a file, not a folder")
            break
    return path


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """``check_output_path`` for a file."""
    return check_output_path(path, what)


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, fsync it, then rename it over ``path``."""
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write_bytes(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically."""
    return atomic_write_bytes(path, lambda fh: torch.save(obj, fh))


def looks_like_torch_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a ``torch.save`` file: a zip archive, or a pickle (the legacy format)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80"


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Load a torch file with ``weights_only=True``; a missing, corrupt or unsafe file raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    if not looks_like_torch_file(path):
        raise CheckpointError(f"{path} is not a loadable {what} (not a torch.save archive)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a loadable {what} (weights_only=True refused it: {first_line})") from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of ``path``; a missing, unreadable or non-UTF-8 file is a ``ConfigError`` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start}, line {line})") from None


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping gives the same key twice."""


def _key_text(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else yaml.serialize(node).strip()


def duplicate_key(text: str) -> str | None:
    """``"duplicate key(s) ['k'] (lines 2 and 5)"`` for the first mapping in ``text`` that repeats a key, else ``None``.

    Raises ``yaml.YAMLError`` for text that is not YAML (as loading it would).
    """
    stack = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    seen_nodes: set[int] = set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                ident = (key.tag, _key_text(key))
                if ident in first and ident[1] != "<<":
                    return f"duplicate key(s) {[ident[1]]} (lines {first[ident] + 1} and {key.start_mark.line + 1})"
                first.setdefault(ident, key.start_mark.line)
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    return None


def load_yaml(path: str | os.PathLike, what: str = "config") -> Any:
    """Parse the YAML file ``path`` safely: UTF-8, valid YAML, no key given twice in a mapping.

    Args:
        path: the file.
        what: how the file is named in errors (e.g. ``report spec``).

    Raises:
        ConfigError: naming the file and, for a syntax error or a repeated key, the line.
    """
    text = read_text(path, what)
    try:
        twice = duplicate_key(text)
        if twice is None:
            return yaml.safe_load(text)
    except yaml.YAMLError as exc:  # the problem and where, without the echoed source lines
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or ["unreadable"])[0]
        raise ConfigError(f"{what} {path} is not valid YAML{where}: {problem}") from None
    raise ConfigError(f"{what} {path}: {twice}; give each key once")


def install_yaml_loader() -> None:
    """Make jsonargparse's YAML loader refuse a key given twice (idempotent; its loading is otherwise unchanged)."""
    from jsonargparse import get_loader, set_loader

    base = get_loader("yaml")
    if getattr(base, "refuses_duplicate_keys", False):
        return

    def load(value: str, path: str = "") -> Any:
        twice = duplicate_key(value) if isinstance(value, str) and ":" in value else None
        if twice is not None:
            raise DuplicateKeyError(f"{path or 'YAML value'}: {twice}; give each key once")
        return base(value)

    load.refuses_duplicate_keys = True  # type: ignore[attr-defined]
    set_loader("yaml", load, exceptions=(yaml.YAMLError,))


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read model weights from a Lightning ``.ckpt``, a plain ``state_dict`` ``.pt`` or a ``.safetensors`` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from None
    obj = load_torch_file(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold model weights (expected a Lightning checkpoint or a state_dict)")
    return obj


__all__ = [
    "check_output_path",
    "check_output_file",
    "read_text",
    "DuplicateKeyError",
    "duplicate_key",
    "load_yaml",
    "install_yaml_loader",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "looks_like_torch_file",
    "load_torch_file",
    "load_state_dict",
]
