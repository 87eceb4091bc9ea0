"""Reading Hugging Face weight files tensor by tensor, and writing safetensors.

Reading opens a shard only for the tensors it needs and closes it again, so memory-mapped pages
do not pile up: the peak during an import is the model plus about one tensor (large tensors are
read in row blocks straight into the destination). ``pytorch_model.bin`` is read only with
:func:`~.._safe_pickle.safe_torch_load`: its pickle checked against the allow-list of plain
tensor data, then ``torch.load(weights_only=True)`` (never arbitrary pickled objects).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from ..._errors import ConfigError, UnsafeCheckpointError
from ..checkpoint._safe_pickle import safe_torch_load

__all__ = ["WeightFiles"]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
BIN = "pytorch_model.bin"
#: Rows per block when a large tensor is copied in pieces (embeddings).
BLOCK_BYTES = 64 << 20


def is_folder_file(folder: Path, file: Path) -> bool:
    """Whether ``file`` (a name in ``folder``) is the folder's own file.

    It must resolve to a file directly in the folder, except in a Hugging Face hub cache: a
    snapshot ``models--ORG--NAME/snapshots/REVISION/`` holds symlinks to ``../../blobs/HASH``, so
    there a file may resolve into that repository's ``blobs`` folder (and nowhere else).
    """
    target, snapshot = file.resolve(), folder.resolve()
    if target.parent == snapshot:
        return True
    if snapshot.parent.name != "snapshots":
        return False
    return target.parent == (snapshot.parent.parent / "blobs").resolve()


class WeightFiles:
    """The weight files of a Hugging Face folder: names, shapes and tensors.

    Raises:
        ConfigError: no weights, a malformed index, an unreadable file (naming it).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._where: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._bin: dict[str, torch.Tensor] | None = None
        if (folder / INDEX).is_file():
            try:
                weight_map = json.loads((folder / INDEX).read_text(encoding="utf-8"))["weight_map"]
                if not isinstance(weight_map, dict):
                    raise ValueError("weight_map is not an object")
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{folder / INDEX}: malformed index ({exc})") from None
            files = sorted({str(f) for f in weight_map.values()})
        elif (folder / SINGLE).is_file():
            files = [SINGLE]
        elif (folder / BIN).is_file():
            self._load_bin(folder / BIN)
            return
        else:
            raise ConfigError(f"{folder}: no {SINGLE}, {INDEX} or {BIN}; expected Hugging Face weights")
        for name in files:
            self._scan(folder / name)

    def _scan(self, file: Path) -> None:
        from safetensors import safe_open

        if not file.is_file():
            raise ConfigError(f"{file}: missing (named by {INDEX})")
        if not is_folder_file(self.folder, file):
            raise ConfigError(f"{file}: leads to {file.resolve()}, outside the model folder (named by {INDEX}); "
                              "weights must be files of the folder itself")
        try:
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():
                    self._where[key] = file
                    self._shapes[key] = tuple(fh.get_slice(key).get_shape())
        except ConfigError:
            raise
        except Exception as exc:  # safetensors raises SafetensorError / OSError
            raise ConfigError(f"{file}: not a readable safetensors file ({exc})") from None

    def _load_bin(self, file: Path) -> None:
        try:
            state = safe_torch_load(file, mmap=True)
        except UnsafeCheckpointError:
            raise
        except Exception as exc:
            raise ConfigError(f"{file}: refused: it is not loadable with torch.load(weights_only=True) ({exc}); "
                              "convert it to safetensors") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConfigError(f"{file}: expected a dict of tensors")
        self._bin = state
        for key, value in state.items():
            self._where[key] = file
            self._shapes[key] = tuple(value.shape)

    def names(self) -> set[str]:
        return set(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def file_of(self, name: str) -> Path:
        return self._where[name]

    @contextmanager
    def _open(self, name: str) -> Iterator[object]:
        from safetensors import safe_open

        with safe_open(str(self._where[name]), framework="pt") as fh:
            yield fh

    def get(self, name: str) -> torch.Tensor:
        """One whole tensor (its shard is opened and closed again)."""
        if self._bin is not None:
            return self._bin[name]
        with self._open(name) as fh:
            return fh.get_tensor(name).clone()  # type: ignore[attr-defined]

    def copy_rows(self, name: str, out: torch.Tensor, start: int) -> None:
        """Copy rows ``start .. start + len(out)`` of tensor ``name`` into ``out``, in blocks."""
        rows = out.shape[0]
        if rows == 0:
            return
        if self._bin is not None:
            out.copy_(self._bin[name][start : start + rows])
            return
        per_row = max(1, out[0].numel() * out.element_size())
        block = max(1, BLOCK_BYTES // per_row)
        for lo in range(0, rows, block):
            hi = min(rows, lo + block)
            with self._open(name) as fh:
                out[lo:hi].copy_(fh.get_slice(name)[start + lo : start + hi])  # type: ignore[attr-defined]
