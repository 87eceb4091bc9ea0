"""Checkpoints are data, never code: every pickle of a checkpoint is checked against an allow-list.

Three files of our checkpoint format are pickles, because the libraries underneath write them so:

* ``weights/.metadata`` -- PyTorch distributed checkpoint (DCP) metadata, a plain pickle that
  ``FileSystemReader.read_metadata`` opens with ``pickle.load`` (no restriction at all);
* the items of ``weights/*.distcp`` -- one ``torch.save`` archive per tensor or object; DCP reads
  tensors with ``torch.load(weights_only=True)`` but *objects* (megatron's ``_extra_state``, and
  any key that ``.metadata`` declares as bytes) with ``torch.load(weights_only=False)``;
* ``weights/common.pt`` (megatron's non-sharded state, ``torch.load`` without ``weights_only``,
  so the environment variable ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` would make it a full unpickle)
  and ``state/rank_XXXXX.pt`` (the trainer state, ``torch.save``).

:func:`check_checkpoint` reads every one of them with a restricted :class:`pickle.Unpickler`
*before* megatron-core or torch opens them. Its ``find_class`` resolves only the globals of
:data:`DCP_METADATA_GLOBALS` / :data:`TORCH_SAVE_GLOBALS` (plus torch's dtypes, and its typed
storage classes in archives); any other global -- ``os.system``, ``builtins.eval``, a class of
some installed package -- raises :class:`~rm_registry.UnsafeCheckpointError` at the moment the pickle names it,
before anything is called or constructed. ``torch.save`` archives are checked without building
anything at all: allowed globals resolve to inert stand-ins and tensor storages are not read.
The archive is opened with torch's own zip reader (what ``torch.load`` uses), and only the
records ``torch.save`` writes are accepted (no TorchScript ``constants.pkl``/``code/``, no
legacy non-zip format). DCP's ``.metadata`` is additionally checked for data that would make
the reader leave the folder (a ``relative_path`` with ``/`` or ``..``).

The allow-lists are exactly what our saves write (``tests/engine/test_safe_pickle.py`` saves
real checkpoints, lists every global their pickles reference with :mod:`pickletools`, and fails
if this module lacks one), so a megatron-core or torch upgrade that writes a new class fails
that test instead of silently widening what a checkpoint may contain.

:func:`safe_torch_load` is the one way to ``torch.load`` a file from someone else (for example a
Hugging Face ``pytorch_model.bin``): checked as above, then loaded with ``weights_only=True``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import IO, Any, Iterator

from ..._errors import ConfigError, UnsafeCheckpointError

__all__ = [
    "DCP_METADATA_GLOBALS",
    "TORCH_SAVE_GLOBALS",
    "check_checkpoint",
    "check_contained",
    "check_dcp_metadata",
    "check_torch_file",
    "safe_torch_load",
]

_DCP = "torch.distributed.checkpoint"

#: Globals that a DCP ``.metadata`` pickle written by our saves references (besides torch dtypes).
DCP_METADATA_GLOBALS = frozenset({
    "torch.Size",
    "torch.serialization._get_layout",
    f"{_DCP}.filesystem._StorageInfo",
    f"{_DCP}.metadata.BytesStorageMetadata",
    f"{_DCP}.metadata.ChunkStorageMetadata",
    f"{_DCP}.metadata.Metadata",
    f"{_DCP}.metadata.MetadataIndex",
    f"{_DCP}.metadata.StorageMeta",
    f"{_DCP}.metadata.TensorProperties",
    f"{_DCP}.metadata.TensorStorageMetadata",
    f"{_DCP}.metadata._MEM_FORMAT_ENCODING",
    f"{_DCP}.planner.SavePlan",
    f"{_DCP}.planner.TensorWriteData",
    f"{_DCP}.planner.WriteItem",
    f"{_DCP}.planner.WriteItemType",
})

#: Globals that the ``data.pkl`` of a ``torch.save`` archive written by our saves references
#: (besides torch dtypes and typed storage classes such as ``torch.FloatStorage``).
TORCH_SAVE_GLOBALS = frozenset({
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
})

#: Records of a ``torch.save`` zip archive (names relative to its top folder).
_TORCH_RECORDS = re.compile(r"^(data\.pkl|byteorder|version|\.format_version|\.storage_alignment|"
                            r"\.data/serialization_id|\.data/version|data/\d+)$")
_ZIP_MAGIC = b"PK\x03\x04"


@lru_cache(maxsize=1)
def _torch_dtypes() -> frozenset[str]:
    """``torch.float32``, ``torch.bfloat16``...: allowed in every pickle (plain constants)."""
    import torch

    return frozenset(f"torch.{name}" for name, value in vars(torch).items() if isinstance(value, torch.dtype))


@lru_cache(maxsize=1)
def _torch_storages() -> frozenset[str]:
    """``torch.FloatStorage``...: allowed in ``torch.save`` archives, which are checked without building anything."""
    import torch

    return frozenset(f"torch.{name}" for name, value in vars(torch).items()
                     if isinstance(value, type) and issubclass(value, torch.storage.TypedStorage))


def _allowed(full_name: str, explicit: frozenset[str]) -> bool:
    if full_name in explicit or full_name in _torch_dtypes():
        return True
    return explicit is TORCH_SAVE_GLOBALS and full_name in _torch_storages()


def _refuse(path: str | Path, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(f"refusing to load {path}: {what}")


def _refuse_global(path: str | Path, full_name: str) -> UnsafeCheckpointError:
    return _refuse(path, f"it references {full_name}, which is not checkpoint data")


class _Inert:
    """Stands in for an allowed global while checking: accepts any construction, does nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; ``inert`` resolves them to :class:`_Inert` stand-ins."""

    def __init__(self, file: IO[bytes], *, path: str | Path, allowed: frozenset[str], inert: bool) -> None:
        super().__init__(file)
        self._path, self._allowed, self._inert = path, allowed, inert

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if not _allowed(full, self._allowed):
            raise _refuse_global(self._path, full)
        if self._inert:
            return _Inert
        value: Any = import_module(module)
        for part in name.split("."):
            value = getattr(value, part)
        return value

    def persistent_load(self, pid: Any) -> Any:
        # torch.save: ('storage', storage class, key, location, numel); the class went through
        # find_class already. Nothing is read: the check is about what gets built, not the bytes.
        if not self._inert or not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise _refuse(self._path, f"unexpected persistent id {str(pid)[:80]!r} in the pickle")
        return _Inert()


def _unpickle(file: IO[bytes], path: str | Path, allowed: frozenset[str], *, inert: bool) -> Any:
    try:
        return _RestrictedUnpickler(file, path=path, allowed=allowed, inert=inert).load()
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # truncated or garbage: name it, no traceback from pickle
        raise ConfigError(f"{path}: not a readable checkpoint file ({type(exc).__name__}: {exc})"[:400]) from None


class _Window(io.RawIOBase):
    """Read-only view of ``length`` bytes at ``offset`` of an open file (one item of a ``.distcp``)."""

    def __init__(self, fh: IO[bytes], offset: int, length: int) -> None:
        super().__init__()
        self._fh, self._offset, self._length, self._pos = fh, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        size = max(0, min(len(buffer), self._length - self._pos))
        self._fh.seek(self._offset + self._pos)
        data = self._fh.read(size)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _check_torch_archive(stream: IO[bytes], label: str) -> None:
    import torch

    start = stream.tell()
    if stream.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
        raise _refuse(label, "it is not a torch.save zip archive (the legacy pickle format is not accepted)")
    stream.seek(start)
    try:
        reader = torch._C.PyTorchFileReader(stream)  # the reader torch.load itself uses
        records = list(reader.get_all_records())
        data = reader.get_record("data.pkl") if "data.pkl" in records else None
    except Exception as exc:
        raise ConfigError(f"{label}: not a readable torch.save archive ({str(exc).splitlines()[0][:200]})") from None
    odd = sorted(r for r in records if not _TORCH_RECORDS.match(r))
    if odd:
        raise _refuse(label, f"it holds {odd[0]!r}, which torch.save does not write (TorchScript code?)")
    if data is None:
        raise ConfigError(f"{label}: not a torch.save archive (no data.pkl)")
    _unpickle(io.BytesIO(data), label, TORCH_SAVE_GLOBALS, inert=True)


def check_torch_file(path: str | Path, *, offset: int = 0, length: int | None = None) -> None:
    """Check a ``torch.save`` file (or the item at ``offset``/``length`` of a ``.distcp`` file).

    Nothing in it is constructed; tensor data is not read.

    Raises:
        UnsafeCheckpointError: it references a global outside the allow-list, or is not a plain
            ``torch.save`` zip archive.
        ConfigError: it is truncated or not a torch file.
    """
    path = Path(path)
    label = str(path) if length is None else f"{path} (bytes {offset}..{offset + length})"
    with open(path, "rb") as fh:
        if length is None:
            _check_torch_archive(fh, label)
        else:
            _check_torch_archive(io.BufferedReader(_Window(fh, offset, length)), label)  # type: ignore[arg-type]


def safe_torch_load(path: str | Path, *, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` a file from someone else: :func:`check_torch_file`, then ``weights_only=True``.

    Use this for every pickled torch file that did not come from this process, for example a
    Hugging Face ``pytorch_model.bin`` (prefer ``*.safetensors``, which holds no pickle at all).

    Raises:
        UnsafeCheckpointError: the file references a global that is not plain tensor data.
        ConfigError: the file is truncated or not a torch file.
    """
    import torch

    check_torch_file(path)
    return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def check_dcp_metadata(path: str | Path) -> Any:
    """Read a DCP ``.metadata`` pickle with the restricted unpickler and return its ``Metadata``.

    Only :data:`DCP_METADATA_GLOBALS` (and torch dtypes) are resolved; every storage entry must
    name a plain file of the same folder.

    Raises:
        UnsafeCheckpointError: a global outside the allow-list, or an entry pointing elsewhere.
        ConfigError: the file is truncated or not DCP metadata.
    """
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata

    path = Path(path)
    with open(path, "rb") as fh:
        metadata = _unpickle(fh, path, DCP_METADATA_GLOBALS, inert=False)
    storage = getattr(metadata, "storage_data", None)
    if not isinstance(metadata, Metadata) or not isinstance(storage, dict):
        raise ConfigError(f"{path}: not PyTorch distributed checkpoint metadata")
    for info in storage.values():
        if not isinstance(info, _StorageInfo) or not isinstance(info.relative_path, str):
            raise ConfigError(f"{path}: malformed storage entry {str(info)[:120]}")
        name = info.relative_path
        if not name or name in (".", "..") or "/" in name or "\\" in name or os.path.isabs(name):
            raise _refuse(path, f"it points the reader at {name!r}, outside the checkpoint's weights folder")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (info.offset, info.length)):
            raise ConfigError(f"{path}: malformed storage entry for {name!r} (offset {info.offset!r}, "
                              f"length {info.length!r})")
    return metadata


def _walk(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):  # does not follow symlinked folders
        for name in (*dirs, *files):
            yield Path(folder) / name


def check_contained(root: str | Path) -> None:
    """Refuse a checkpoint or model folder holding a symlink that leads outside of it.

    The folder itself may be a symlink (``latest -> step_0000300``); what is inside it must
    stay inside it, so that loading never reads another file of the machine. Named pipes and
    devices (a read that never ends) are refused too.

    Raises:
        UnsafeCheckpointError: naming the link and where it leads, or the odd file.
    """
    root = Path(root)
    real_root = root.resolve()
    for path in _walk(root):
        if path.is_symlink():
            target = path.resolve()
            if target != real_root and real_root not in target.parents:
                raise _refuse(root, f"{path.relative_to(root)} is a symlink to {target}, outside the folder")
        elif not (path.is_file() or path.is_dir()):
            raise _refuse(root, f"{path.relative_to(root)} is neither a file nor a folder (a named pipe or device?)")


#: megatron-core's ``weights/metadata.json`` names the loader it picks; the only one checked here.
_BACKENDS = {"sharded_backend": "torch_dist", "common_backend": "torch"}


def _check_backends(path: Path) -> None:
    if not path.is_file():
        return  # megatron-core refuses the folder itself
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None
    for key, expected in _BACKENDS.items():
        if not isinstance(config, dict) or config.get(key) != expected:
            got = config.get(key) if isinstance(config, dict) else config
            raise _refuse(path, f"{key}={got!r}; only {expected!r} checkpoints are checked, so only those are loaded")


def check_checkpoint(directory: str | Path) -> None:
    """Check every pickle of an rm-registry checkpoint folder, and that nothing leads outside it.

    ``weights/*.metadata`` (DCP metadata), every item of ``weights/*.distcp`` that the metadata
    lists, ``weights/*.pt`` (megatron's ``common.pt``), the same in ``optimizer/`` (the Adam
    moments, when saved) and ``state/*.pt`` (trainer state).
    Call it before megatron-core or torch reads the folder.

    Raises:
        UnsafeCheckpointError: the first disallowed global or escaping path, naming the file.
        ConfigError: a truncated or malformed file.
    """
    directory = Path(directory)
    check_contained(directory)
    weights = directory / "weights"
    for saved in (weights, directory / "optimizer"):  # dist_checkpointing folders (the optimizer's is optional)
        if saved is weights or saved.is_dir():
            _check_backends(saved / "metadata.json")
        metadata_files = sorted(saved.glob("*.metadata")) if saved.is_dir() else []
        for meta_path in metadata_files:
            metadata = check_dcp_metadata(meta_path)
            for info in metadata.storage_data.values():
                item = saved / info.relative_path
                if not item.is_file():
                    raise ConfigError(f"{meta_path}: lists {info.relative_path}, which is missing")
                check_torch_file(item, offset=info.offset, length=info.length)
    for folder in (weights, directory / "optimizer", directory / "state"):
        if folder.is_dir():
            for pt in sorted(folder.glob("*.pt")):
                check_torch_file(pt)

