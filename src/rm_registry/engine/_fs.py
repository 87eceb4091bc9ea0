"""Output paths: refuse an unusable ``--output`` before any work, and write files atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .._errors import ConfigError

__all__ = ["check_output_dir", "check_output_file", "atomic_write_text"]


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")  # pragma: no cover - "/" always exists


def _probe(ancestor: Path, option: str, path: Path) -> None:
    """Create and remove a temporary folder in ``ancestor``: proof that we can write there."""
    if not ancestor.is_dir():
        raise ConfigError(f"{option} {path}: {ancestor} is a file, so nothing can be created below it")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".rm-registry-probe-", dir=ancestor))
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write in {ancestor} ({exc.strerror or exc})") from None


def check_output_dir(path: Path, option: str = "--output") -> None:
    """Refuse ``path`` as a run folder if it is a file or cannot be created. Writes nothing in it.

    An existing folder is checked with ``os.access`` rather than probed, so that other ranks
    looking at it at the same moment never see a probe inside it.
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file; give a folder for the run")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {path}: the folder is not writable")
        return
    _probe(_existing_ancestor(path), option, path)


def check_output_file(path: Path, option: str = "--output") -> None:
    """Refuse ``path`` as an output file if it is a folder or its folder cannot be created. Writes nothing."""
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name, e.g. {path / 'scores.jsonl'}")
    _probe(_existing_ancestor(path.parent), option, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
