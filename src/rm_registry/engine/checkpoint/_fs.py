"""Output paths: refuse an unusable ``--output`` before any work, and write files atomically.

Every write error (disk full, no permission, read-only file system) becomes a
:class:`~rm_registry.StorageError` naming the path and the operating system's reason, and
files follow the process umask like any file created with ``open``.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..._errors import ConfigError, StorageError

__all__ = ["check_output_dir", "check_output_file", "atomic_write_text", "atomic_write_bytes",
           "storage_error", "writing", "write_failure", "temp_dir_beside", "publish_folder"]


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


def storage_error(path: str | Path, exc: OSError, doing: str = "write") -> StorageError:
    """``exc`` as a one-line :class:`StorageError`: ``cannot write PATH: No space left on device``."""
    err = StorageError(f"cannot {doing} {path}: {exc.strerror or exc}")
    err.errno, err.strerror, err.filename = exc.errno, exc.strerror, str(path)
    err.__cause__ = exc
    return err


@contextmanager
def writing(path: str | Path, doing: str = "write") -> Iterator[None]:
    """Turn an :class:`OSError` raised inside the block into a :class:`StorageError` naming ``path``.

    Buffered writes fail with an ``OSError`` that names no file (``[Errno 28] No space left on
    device``); this names the one being written.
    """
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error(path, exc, doing) from exc


def write_failure(exc: BaseException, what: str | Path, where: Path) -> StorageError | None:
    """The write error behind ``exc``, as a :class:`StorageError` naming ``what``; ``None`` if there is none.

    Finds an :class:`OSError` however the library that failed wrapped it: chained, inside PyTorch
    DCP's per-rank ``CheckpointException.failures``, as text (``os error 28`` from safetensors'
    Rust code), or as ``torch.save``'s short-write ``RuntimeError`` (no errno: the disk holding
    ``where`` is then checked for free space). A stop signal or a bug gives ``None``.
    """
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return None
    todo: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            return storage_error(what, err)
        code = re.search(r"\(os error (\d+)\)", str(err))
        if code:
            number = int(code.group(1))
            return storage_error(what, OSError(number, os.strerror(number)))
        failures = getattr(err, "failures", None)  # DCP's CheckpointException: {rank: (exception, traceback)}
        if isinstance(failures, dict):
            todo.extend(f[0] if isinstance(f, tuple) else f for f in failures.values())
        todo.extend((err.__cause__, err.__context__))
    text = str(exc)
    if "PytorchStreamWriter" in text or "unexpected pos" in text:
        try:
            free = shutil.disk_usage(_existing_ancestor(where)).free
        except OSError:
            free = -1
        if 0 <= free < 1 << 20:
            return storage_error(what, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return storage_error(what, OSError(errno.EIO, f"write failed ({text.strip().splitlines()[0][:200]})"))
    return None


def temp_dir_beside(path: Path) -> Path:
    """A new hidden folder ``.NAME.XXXX.tmp`` beside ``path``, with the umask's permissions (not
    ``tempfile``'s private ``0o700``), to be filled and renamed to ``path``.

    Raises:
        StorageError: the folder cannot be created.
    """
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def publish_folder(path: Path, fill: Callable[[Path], None]) -> None:
    """``fill(tmp)`` a hidden temporary folder beside ``path``, then rename it to ``path`` (an empty
    folder already there is replaced): all or nothing. On any error the temporary folder is removed;
    a write error (full disk, no permission) becomes one :class:`StorageError` naming ``path``.
    """
    tmp = temp_dir_beside(path)
    try:
        fill(tmp)
        if path.exists():
            path.rmdir()  # empty (the callers refuse a folder that is not, before any work)
        os.rename(tmp, path)
    except BaseException as exc:  # a full disk is one line naming the folder, not a library's traceback
        failure = write_failure(exc, path, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if failure is None:
            raise
        raise failure from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    The file gets the permissions ``open`` would give (``0o666`` minus the umask), not
    ``tempfile``'s private ``0o600``. On any error the temporary file is removed and ``path`` is
    unchanged.

    Raises:
        StorageError: the folder or file cannot be written (names ``path`` and the reason).
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o666 & ~_umask())
                fh.write(data)
                fh.flush()
                if fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))
