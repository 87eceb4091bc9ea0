"""Atomic, resharding checkpoints on megatron-core ``dist_checkpointing``.

In: the model (its ``sharded_state_dict``), the trainer state and the run's files.
Out: a checkpoint folder; loading it fills a model built under any tensor-parallel layout.

Modules: this one (save, verify, find, load); ``_dcp_save`` (the in-process DCP writer);
``_safe_pickle`` (the restricted unpickling of everything loaded); ``_fs`` (atomic files and
storage errors, used by every stage that writes); ``_provenance`` (``plugin.json``: which
distribution wrote the run); ``_run`` (the run folder: what a checkpoint carries, where a run
resumes); ``_topk`` (``save_top_k``).

A checkpoint is one folder::

    step_0000100/
      weights/              megatron dist_checkpointing (PyTorch DCP): .metadata, *.distcp, ...
      state/rank_00000.pt   trainer state of each rank (torch.save): step, optimizer, RNG, ...
      config.yaml, tokenizer/...   extra files (written by rank 0)
      checkpoint.json       completion marker, written last: layout, versions, and every file's
                            size and CRC-32 (checked on load: damage is reported as damage)

Atomicity: everything is written into a hidden sibling ``.step_0000100.tmp``; after a barrier,
rank 0 writes ``checkpoint.json`` and renames the folder into place. An interrupted save leaves
at most a hidden ``*.tmp`` folder, which :func:`is_complete` and :func:`find_latest` ignore; a
save that fails or is stopped (disk full, SIGTERM, Ctrl-C) removes its own, and the next save of
the same step removes one left by SIGKILL. The weights are written by the saving process itself
(:mod:`._dcp_save`): no helper process can outlive it.

Damage: :func:`verify_checkpoint` compares each file with the size and checksum recorded at save
time. :func:`find_latest` on a run folder skips a damaged checkpoint (with a warning) for the newest
intact one; a damaged checkpoint named directly raises :class:`CheckpointDamagedError`.
Checkpoints saved before the manifest existed load unchecked.

The weights are saved sharded by the tensor-parallel layout of the saving run and load under
any other layout (``dist_checkpointing`` reshards); see :func:`load_checkpoint` for the state.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from ..._errors import ConfigError, UnsafeCheckpointError
from ..parallel import _cpu_compat
from . import _safe_pickle
from .. import parallel
from ._fs import write_failure, writing

__all__ = [
    "MARKER",
    "CheckpointDamagedError",
    "CheckpointNotFoundError",
    "checkpoint_info",
    "find_latest",
    "is_complete",
    "load_checkpoint",
    "load_optimizer_tensors",
    "save_checkpoint",
    "verify_checkpoint",
]

#: Completion marker, written last, inside the folder before it is renamed into place.
MARKER = "checkpoint.json"
#: Folder of the optimizer tensors saved like the weights (``optimizer_tensors`` of :func:`save_checkpoint`).
OPTIMIZER = "optimizer"
FORMAT = "rm-registry-checkpoint"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointNotFoundError(ConfigError, FileNotFoundError):
    """No complete checkpoint at the given path (the message names it and what was found)."""


class CheckpointDamagedError(ConfigError):
    """A checkpoint's file differs from what was saved (truncated, emptied, altered or missing).

    The message names the file and what differs; :attr:`path` is that file.
    """

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _tmp_dir(directory: Path) -> Path:
    return directory.parent / f".{directory.name}.tmp"


def _is_tmp_name(directory: Path) -> bool:
    return directory.name.startswith(".") and directory.name.endswith(".tmp")


def _layout() -> dict[str, int]:
    from megatron.core import parallel_state

    rank, world = _rank_world()
    tp = parallel_state.get_tensor_model_parallel_world_size() if parallel_state.model_parallel_is_initialized() else 1
    pp = parallel_state.get_pipeline_model_parallel_world_size() if parallel_state.model_parallel_is_initialized() else 1
    return {"world_size": world, "tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
            "data_parallel_size": world // (tp * pp)}


def _fsync_write(path: Path, data: bytes) -> None:
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def _safe_relative(name: str) -> Path:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"extra_files key {name!r} must be a relative path inside the checkpoint")
    if rel.parts[0] in ("weights", "state", OPTIMIZER, MARKER):
        raise ValueError(f"extra_files key {name!r} clashes with the checkpoint's own files")
    return rel


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    *,
    extra_files: Mapping[str, bytes | str] | None = None,
    state: Mapping[str, Any] | None = None,
    optimizer_tensors: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` (its ``sharded_state_dict()``), per-rank ``state`` and extra files, atomically.

    Every rank must call this (collective). ``directory`` must be the same path on every rank
    (a shared file system for multi-node runs). An existing checkpoint at ``directory`` is
    replaced only once the new one is complete.

    Args:
        directory: The checkpoint folder to create, e.g. ``run/checkpoints/step_0000100``.
        model: A :class:`~rm_registry.engine.RewardModel` (anything with ``sharded_state_dict``).
        extra_files: ``{relative path: content}`` written by rank 0 (``config.yaml``,
            ``tokenizer/tokenizer.json``...); ``str`` is written as UTF-8.
        state: This rank's trainer state, saved with ``torch.save`` as ``state/rank_XXXXX.pt``.
        optimizer_tensors: megatron ``ShardedTensor`` s of the optimizer (the Adam moments, placed
            like their parameters), saved with ``dist_checkpointing`` in ``optimizer/``: they
            reshard to another layout as the weights do (:func:`load_optimizer_tensors`).

    Returns:
        The final checkpoint folder.
    """
    directory = Path(directory).absolute()
    tmp = _tmp_dir(directory)
    rank, world = _rank_world()
    rels = {_safe_relative(k): v for k, v in (extra_files or {}).items()}
    try:
        _write_checkpoint(tmp, directory, model, rels, state, rank, optimizer_tensors)
    except BaseException as exc:  # disk full, no permission, SIGTERM, Ctrl-C: no half-written folder left
        failure = write_failure(exc, f"checkpoint {directory}", tmp)  # before the removal frees the space
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            _undo_publish(directory)
        if failure is None:
            raise
        raise failure from None
    parallel.barrier()
    return directory


def _write_checkpoint(tmp: Path, directory: Path, model: torch.nn.Module, rels: Mapping[Path, bytes | str],
                      state: Mapping[str, Any] | None, rank: int, optimizer_tensors: Mapping[str, Any] | None) -> None:
    from megatron.core import dist_checkpointing

    from ._dcp_save import InProcessSaveStrategy

    if rank == 0:
        with writing(tmp):
            if tmp.exists():  # left over from a save killed with SIGKILL
                shutil.rmtree(tmp)
            (tmp / "weights").mkdir(parents=True)
            (tmp / "state").mkdir()
            if optimizer_tensors is not None:
                (tmp / OPTIMIZER).mkdir()
    parallel.barrier()

    with _cpu_compat.cuda_device_shims():
        dist_checkpointing.save(model.sharded_state_dict(), str(tmp / "weights"),
                                sharded_strategy=InProcessSaveStrategy())
        if optimizer_tensors is not None:
            dist_checkpointing.save(dict(optimizer_tensors), str(tmp / OPTIMIZER), sharded_strategy=InProcessSaveStrategy())
    if state is not None:
        buffer = io.BytesIO()  # written by us, so that a full disk is an OSError, not torch's "unexpected pos"
        torch.save(dict(state), buffer)
        _fsync_write(tmp / "state" / f"rank_{rank:05d}.pt", buffer.getvalue())
    if rank == 0:
        for rel, content in rels.items():
            _fsync_write(tmp / rel, content.encode("utf-8") if isinstance(content, str) else bytes(content))
    parallel.barrier()

    if rank == 0:
        from megatron.core import package_info

        marker = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "complete": True,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "megatron_core": str(package_info.__version__),
            "has_state": state is not None,
            **_layout(),
            "files": _manifest(tmp),
        }
        _fsync_write(tmp / MARKER, json.dumps(marker, indent=2).encode("utf-8"))
        with writing(directory):
            _publish(tmp, directory)  # the folder appears complete or not at all


def _crc32(path: Path) -> str:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size": bytes, "crc32": "8 hex digits"}}`` of every file in ``folder`` but the marker."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != MARKER:
            files[rel] = {"size": path.stat().st_size, "crc32": _crc32(path)}
    return files


#: Checkpoints verified by this process, with the size, mtime and inode of each file then: find_latest
#: and load_checkpoint read a checkpoint once, and a file changed since is checked again.
_VERIFIED: set[tuple[str, tuple[tuple[str, int, int, int], ...]]] = set()


def verify_checkpoint(directory: str | Path) -> None:
    """Check every file of a complete checkpoint against the sizes and CRC-32s recorded when it was saved.

    Checkpoints saved without this record (before it existed) are accepted unchecked.

    Raises:
        CheckpointNotFoundError: not a complete checkpoint.
        CheckpointDamagedError: a file is missing, has another size or other contents; the
            message names the file.
    """
    directory = Path(directory)
    files = checkpoint_info(directory).get("files")
    if files is None:
        return

    def damaged(path: Path, why: str) -> CheckpointDamagedError:
        return CheckpointDamagedError(f"{path}: damaged checkpoint file ({why})", path)

    if not isinstance(files, dict) or not all(isinstance(m, dict) for m in files.values()):
        raise damaged(directory / MARKER, "its list of files is not valid")
    stats = []
    for rel in files:  # sizes first: cheap, and what truncation changes
        rel_path = Path(rel)
        if rel_path.is_absolute() or ".." in rel_path.parts:
            raise damaged(directory / MARKER, f"lists {rel!r}, outside the checkpoint")
        path = directory / rel_path
        if not path.is_file():
            raise damaged(path, "missing")
        stat, saved = path.stat(), files[rel].get("size")
        if stat.st_size != saved:
            raise damaged(path, f"{stat.st_size} bytes, {saved} when saved"
                          + ("; truncated" if isinstance(saved, int) and stat.st_size < saved else ""))
        stats.append((rel, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    key = (str(directory.resolve()), tuple(stats))
    if key in _VERIFIED:  # checked by this process and unchanged since: no second read
        return
    for rel, meta in files.items():
        if _crc32(directory / rel) != meta.get("crc32"):
            raise damaged(directory / rel, "contents differ from when it was saved: checksum mismatch")
    _VERIFIED.add(key)


def checkpoint_info(directory: str | Path) -> dict[str, Any]:
    """The completion marker of a checkpoint (layout it was saved with, versions ...).

    Raises:
        CheckpointNotFoundError: the folder is not a complete checkpoint.
    """
    directory = Path(directory)
    if not is_complete(directory):
        raise CheckpointNotFoundError(
            f"{directory}: not a complete checkpoint (no valid {MARKER}; an interrupted save?)"
        )
    return json.loads((directory / MARKER).read_text(encoding="utf-8"))


def is_complete(directory: str | Path) -> bool:
    """True when ``directory`` is a finished checkpoint (marker present and valid, weights there)."""
    directory = Path(directory)
    if _is_tmp_name(directory) or not (directory / MARKER).is_file():
        return False
    try:
        marker = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("format") == FORMAT
        and marker.get("complete") is True
        and (directory / "weights" / "metadata.json").is_file()
    )


def find_latest(run_dir: str | Path) -> Path:
    """The checkpoint to use for ``run_dir``.

    Accepts a checkpoint folder itself, a run folder containing ``checkpoints/step_XXXXXXX/``, or
    the ``checkpoints`` folder. Incomplete checkpoints are skipped; so are damaged ones (see
    :func:`verify_checkpoint`), with a warning naming the damaged file.

    Raises:
        CheckpointNotFoundError: the path does not exist or holds no complete checkpoint; the
            message names the path and what was found.
        CheckpointDamagedError: ``run_dir`` is a damaged checkpoint, or every checkpoint of the run is.
    """
    path = Path(run_dir)
    if not path.exists():
        raise CheckpointNotFoundError(f"{path}: no such checkpoint or run folder")
    if is_complete(path):
        verify_checkpoint(path)
        return path
    if not path.is_dir():
        raise CheckpointNotFoundError(f"{path}: not a folder; expected a run or checkpoint folder")
    found: list[tuple[int, Path]] = []
    for parent in (path / "checkpoints", path):
        if parent.is_dir():
            for child in parent.iterdir():
                m = _STEP_RE.match(child.name)
                if m and child.is_dir():
                    found.append((int(m.group(1)), child))
    complete = sorted(((step, p) for step, p in found if is_complete(p)), key=lambda sp: sp[0], reverse=True)
    if complete:
        return _newest_intact(path, [p for _, p in complete])
    if found:
        names = ", ".join(sorted(p.name for _, p in found))
        raise CheckpointNotFoundError(
            f"{path}: no complete checkpoint; found only incomplete ones ({names}), "
            "probably from an interrupted save"
        )
    raise CheckpointNotFoundError(
        f"{path}: no checkpoint found (expected {MARKER} here or checkpoints/step_XXXXXXX/ inside)"
    )


def _newest_intact(run: Path, newest_first: list[Path]) -> Path:
    damaged: list[CheckpointDamagedError] = []
    for candidate in newest_first:
        try:
            verify_checkpoint(candidate)
        except CheckpointDamagedError as exc:
            damaged.append(exc)
            continue
        for exc in damaged:
            warnings.warn(f"skipping a damaged checkpoint: {exc}; using {candidate}", RuntimeWarning, stacklevel=3)
        return candidate
    raise CheckpointDamagedError(f"{run}: every checkpoint is damaged: " + "; ".join(map(str, damaged)),
                                 damaged[0].path)


def _why(exc: BaseException) -> str:
    """The informative line of a (possibly wrapped, multi-rank) checkpointing error."""
    text = str(exc)
    found = re.findall(r"CheckpointingException: (.+)", text)
    line = found[-1] if found else (text.strip().splitlines() or [type(exc).__name__])[0]
    return line.strip()[:300]


def _publish(tmp: Path, directory: Path) -> None:
    """Move the finished temporary folder into place (rank 0). Atomic on one file system."""
    old = directory.parent / f".{directory.name}.old"
    if directory.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(directory, old)
    os.rename(tmp, directory)
    if old.exists():
        shutil.rmtree(old)


def _undo_publish(directory: Path) -> None:
    """Put back the checkpoint a stopped :func:`_publish` had moved aside (a save replacing a step)."""
    old = directory.parent / f".{directory.name}.old"
    if old.is_dir() and not directory.exists():
        os.rename(old, directory)


def load_checkpoint(directory: str | Path, model: torch.nn.Module, *, state: bool = True) -> dict[str, Any]:
    """Load weights into ``model`` (any tensor-parallel layout) and return this rank's state.

    With ``state=False`` (scoring, evaluation) only the weights are read and ``{}`` is returned.
    A checkpoint is data, never code: before megatron-core or torch opens the folder, every
    pickle in it is checked against an allow-list (:mod:`._safe_pickle`) and symlinks leading
    out of it are refused; the state files are then read with ``torch.load(weights_only=True)``.

    Every rank must call this. The weights reshard to the current layout. The returned state is
    the one this rank saved when the layout (world size, tensor- and pipeline-parallel size) is
    unchanged; otherwise it is rank 0's state with ``"layout_changed": True`` added (what reshards
    of the optimizer is in ``optimizer/``: :func:`load_optimizer_tensors`). ``{}`` when the save
    had no state.

    Raises:
        CheckpointNotFoundError: ``directory`` is not a complete checkpoint.
        CheckpointDamagedError: a file differs from what was saved (see :func:`verify_checkpoint`).
        UnsafeCheckpointError: a pickle references a global that is not checkpoint data (it
            would run code), or a path leads outside the folder. Nothing was executed.
        ConfigError: the weights do not fit ``model`` (a different architecture or size).
    """
    from megatron.core import dist_checkpointing

    directory = Path(directory)
    info = checkpoint_info(directory)
    verify_checkpoint(directory)  # damage is named as damage (sizes and CRC-32s recorded at save time)
    _safe_pickle.check_checkpoint(directory)  # every pickle against the allow-list, before torch opens one
    try:
        loaded = dist_checkpointing.load(model.sharded_state_dict(), str(directory / "weights"))
        model.load_state_dict(loaded, strict=True)
    except (Exception, CheckpointException) as exc:  # DCP's CheckpointException is a BaseException
        raise ConfigError(
            f"{directory}: the checkpoint's weights do not fit the model built from the config "
            f"({_why(exc)}); was it saved with a different model.* config?"
        ) from exc

    if not state or not info.get("has_state"):
        return {}
    rank, world = _rank_world()
    layout = _layout()
    same = (info.get("world_size"), info.get("tensor_model_parallel_size"), info.get("pipeline_model_parallel_size", 1)) \
        == (world, layout["tensor_model_parallel_size"], layout["pipeline_model_parallel_size"])
    path = directory / "state" / f"rank_{rank if same else 0:05d}.pt"
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: missing trainer state of this rank")
    try:
        saved: dict[str, Any] = _safe_pickle.safe_torch_load(path)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:  # truncated or foreign file: name it, no traceback from torch
        raise CheckpointNotFoundError(
            f"{path}: unreadable trainer state ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "resume from an earlier checkpoint (train --resume-from RUN/checkpoints/step_XXXXXXX) or start a new run"
        ) from None
    if not same:
        warnings.warn(
            f"{directory} was saved by {info.get('world_size')} process(es) with tensor parallelism "
            f"{info.get('tensor_model_parallel_size')} x pipeline {info.get('pipeline_model_parallel_size', 1)}; "
            + ("the weights and the Adam moments were resharded, the rest of the trainer state (schedule, RNG) "
               "is rank 0's" if (directory / OPTIMIZER).is_dir() else
               "the weights were resharded, the per-rank trainer state is rank 0's"),
            RuntimeWarning,
            stacklevel=2,
        )
        saved["layout_changed"] = True
    return saved


def load_optimizer_tensors(directory: str | Path, template: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The optimizer tensors of ``directory`` (saved as ``optimizer_tensors``) for this rank's
    ``template`` (``ShardedTensor`` s of the current layout, as :func:`save_checkpoint` got them):
    ``{key: tensor}``, resharded to the current layout. Every rank must call this. Call after
    :func:`load_checkpoint` (which verified the folder and its pickles).

    Raises:
        ConfigError: the checkpoint has no such tensors, or they do not fit ``template``.
    """
    from megatron.core import dist_checkpointing

    folder = Path(directory) / OPTIMIZER
    if not folder.is_dir():
        raise ConfigError(f"{directory}: no {OPTIMIZER}/ folder (saved by an older version, or with a sharded optimizer)")
    try:
        return dict(dist_checkpointing.load(dict(template), str(folder)))
    except (Exception, CheckpointException) as exc:
        raise ConfigError(f"{directory}: the optimizer state does not fit this run's model ({_why(exc)})") from exc
