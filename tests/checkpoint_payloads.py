"""Shared by the checkpoint-safety tests: payloads crafted into real checkpoints, and the pickletools scan
of every global that a checkpoint's pickles reference (the allow-list must cover what our saves write)."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any, Iterator

import torch

from rm_registry.engine.checkpoint import _safe_pickle


#: The pickled files of a one-process checkpoint (the .distcp one: an object item inside it).
PICKLED = ["weights/.metadata", "weights/__0_0.distcp", "weights/common.pt", "state/rank_00000.pt"]


class Payload:
    """Unpickling this runs ``touch marker`` (what a malicious checkpoint would do, only worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _torch_save_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def object_item(ckpt: Path, shard: str = "__0_0.distcp") -> tuple[Any, Any]:
    """(metadata, storage key) of an item of ``weights/shard``: an object (bytes) item -- megatron's
    ``_extra_state``, which DCP reads with ``torch.load(weights_only=False)`` -- if the shard has one,
    else a tensor item."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    metadata = pickle.loads((ckpt / "weights" / ".metadata").read_bytes())  # our own, trusted file
    keys = sorted((not isinstance(metadata.state_dict_metadata[key.fqn], BytesStorageMetadata), i, key)
                  for i, (key, info) in enumerate(metadata.storage_data.items()) if info.relative_path == shard)
    if not keys:
        raise AssertionError(f"no item in {shard}: the test must craft another file")
    return metadata, keys[0][2]


def craft(ckpt: Path, rel: str, marker: Path) -> str:
    """Put a payload into the pickled file ``rel`` of ``ckpt``; returns the file as the refusal names it.

    Like a real attacker, it also rewrites the sizes and checksums in ``checkpoint.json`` (a record
    against damage, not a signature), so that the allow-list is what stops the payload.
    """
    where = _craft(ckpt, rel, marker)
    rerecord(ckpt)
    return where


def rerecord(ckpt: Path) -> None:
    """Rewrite the sizes and checksums in ``ckpt``'s ``checkpoint.json`` for its files as they are now."""
    from rm_registry.engine import checkpoint

    info = json.loads((ckpt / checkpoint.MARKER).read_text())
    if "files" in info:
        info["files"] = checkpoint._manifest(ckpt)
        (ckpt / checkpoint.MARKER).write_text(json.dumps(info))


def _craft(ckpt: Path, rel: str, marker: Path) -> str:
    target = ckpt / rel
    if rel.endswith(".metadata"):
        target.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    elif rel.endswith(".distcp"):
        # Appended to the shard, and the object item re-pointed at it: DCP reads object items
        # with torch.load(weights_only=False).
        metadata, key = object_item(ckpt, target.name)
        payload = _torch_save_bytes([Payload(marker)])
        offset = target.stat().st_size
        with open(target, "ab") as fh:
            fh.write(payload)
        info = metadata.storage_data[key]
        info.offset, info.length = offset, len(payload)
        (ckpt / "weights" / ".metadata").write_bytes(pickle.dumps(metadata))
        return f"{target} (bytes {offset}..{offset + len(payload)})"
    elif rel.endswith("common.pt"):
        target.write_bytes(_torch_save_bytes({"evil": Payload(marker)}))
    else:
        state = torch.load(target, weights_only=True)
        target.write_bytes(_torch_save_bytes({**state, "evil": Payload(marker)}))
    return str(target)


def refusal(where: str) -> str:
    return f"refusing to load {where}: it references posix.system, which is not checkpoint data"


def pickle_globals(data: bytes) -> set[str]:
    """Every ``module.name`` that a pickle references (GLOBAL, INST and STACK_GLOBAL), by pickletools.

    STACK_GLOBAL takes its two names from the stack: the strings pushed (or fetched from the
    memo) just before it.
    """
    found: set[str] = set()
    memo: dict[int, Any] = {}
    recent: list[Any] = []
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name in ("GLOBAL", "INST"):
            found.add(arg.replace(" ", "."))
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                      "BINSTRING", "STRING"):
            recent.append(arg)
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            recent.append(memo.get(int(arg)))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = recent[-1] if recent else None
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name == "STACK_GLOBAL":
            found.add(f"{recent[-2]}.{recent[-1]}")
        else:
            recent.append(None)  # anything else pushed or popped: no longer a name
    return found


def checkpoint_pickles(ckpt: Path) -> Iterator[tuple[str, bytes]]:
    """(label, pickle bytes) of every pickle in a checkpoint: .metadata, every .distcp item, *.pt archives."""
    metadata_path = ckpt / "weights" / ".metadata"
    yield str(metadata_path), metadata_path.read_bytes()
    metadata = pickle.loads(metadata_path.read_bytes())  # our own save: trusted here
    for key, info in metadata.storage_data.items():
        with open(ckpt / "weights" / info.relative_path, "rb") as fh:
            fh.seek(info.offset)
            blob = fh.read(info.length)
        reader = torch._C.PyTorchFileReader(io.BytesIO(blob))
        yield f"{info.relative_path}:{key.fqn}", reader.get_record("data.pkl")
    for pt in sorted(ckpt.glob("*/*.pt")):
        yield str(pt), torch._C.PyTorchFileReader(str(pt)).get_record("data.pkl")


def referenced_globals(ckpt: Path) -> dict[str, set[str]]:
    """Globals per kind ("metadata" / "torch.save") of every pickle in ``ckpt``."""
    out: dict[str, set[str]] = {"metadata": set(), "torch.save": set()}
    for label, data in checkpoint_pickles(ckpt):
        out["metadata" if label.endswith(".metadata") else "torch.save"] |= pickle_globals(data)
    return out


def assert_allow_list_covers(ckpt: Path) -> dict[str, set[str]]:
    """Fails naming any global our own save wrote that the allow-list lacks."""
    found = referenced_globals(ckpt)
    dtypes, storages = _safe_pickle._torch_dtypes(), _safe_pickle._torch_storages()
    missing = {"metadata": sorted(g for g in found["metadata"]
                                  if g not in _safe_pickle.DCP_METADATA_GLOBALS and g not in dtypes),
               "torch.save": sorted(g for g in found["torch.save"]
                                    if g not in _safe_pickle.TORCH_SAVE_GLOBALS and g not in dtypes | storages)}
    assert missing == {"metadata": [], "torch.save": []}, (
        f"{ckpt}: our own save wrote globals the allow-list of rm_registry/engine/checkpoint/_safe_pickle.py lacks "
        f"(a torch or megatron-core upgrade?): {missing}; add them if they are plain data")
    return found
