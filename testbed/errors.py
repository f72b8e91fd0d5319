"""User-facing errors: the CLI prints their message on one line and exits with status 2."""


class TestbedError(Exception):
    """A problem with the user's input (config, file, checkpoint, layer name, dimensions)."""


class ConfigError(TestbedError, ValueError):
    """A configuration value is invalid or inconsistent."""


class CheckpointError(TestbedError):
    """A file is missing, unreadable, unsafe, or not the kind of checkpoint expected."""
