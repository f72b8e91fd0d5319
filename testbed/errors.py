"""User-facing errors: the CLI prints their message on one line and exits with status 2."""


class TestbedError(Exception):
    """A problem with the user's input (config, file, checkpoint, layer name, dimensions)."""


class ConfigError(TestbedError, ValueError):
    """A configuration value is invalid or inconsistent."""


class CheckpointError(TestbedError):
    """A file is missing, unreadable, unsafe, or not the kind of checkpoint expected."""


def positive_int(name: str, value: object, allow_none: bool = False) -> int | None:
    """``value`` as an int if it is a positive integer (or ``None`` when allowed), else a ``ConfigError``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or int(value) < 1:  # type: ignore[call-overload]
        suffix = " or null" if allow_none else ""
        raise ConfigError(f"{name} must be a positive integer{suffix}, got {value!r}")
    return int(value)
