"""Error classes of rm-registry. Every error we raise derives from :class:`RMRegistryError`."""

from __future__ import annotations

from pathlib import Path


class RMRegistryError(Exception):
    """Base class of every error raised by rm-registry."""


class PluginNotFoundError(RMRegistryError, LookupError):
    """No installed or registered reward model has the requested name."""


class PluginLoadError(RMRegistryError):
    """A plugin's entry point failed to import or raised while loading.

    The original exception is chained as ``__cause__``.
    """


class PluginValidationError(RMRegistryError, TypeError):
    """A loaded plugin object does not satisfy the :class:`RewardModelPlugin` protocol."""


class PluginConflictError(RMRegistryError):
    """Two distributions register the same reward-model name."""


class PluginDisabledError(RMRegistryError):
    """The plugin is disabled (``RM_REGISTRY_DISABLE`` or a policy hook)."""


class ConfigError(RMRegistryError, ValueError):
    """A configuration key or value is invalid. The message names the key."""


class TrainingError(RMRegistryError, RuntimeError):
    """Training cannot go on (for example the loss became NaN or infinite). The message says what to change."""


class StorageError(RMRegistryError, OSError):
    """A file or folder could not be written or read (disk full, no permission, read-only file system...).

    The message names the path and the operating system's reason (``No space left on device``);
    ``errno`` and ``filename`` are those of the original :class:`OSError`, chained as ``__cause__``.
    The command line prints it as one line and exits 1.
    """

    def __str__(self) -> str:  # the message, not OSError's "[Errno 28] ...: 'file'" rendering
        return str(self.args[0]) if self.args else ""


class DataError(RMRegistryError, ValueError):
    """An input data file is invalid.

    Args:
        path: The offending file.
        line: 1-based line number, or ``None`` when the problem is the whole file.
        problem: What is wrong and, where useful, what to do.
    """

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class UnsafeCheckpointError(ConfigError):
    """A checkpoint or model folder holds something that is not data: a pickle referencing a
    global outside the allow-list (code it would run), or a path leading outside the folder.

    Nothing of it was executed or constructed. Exits 2 on the command line.
    """
