"""Where the records of a data file come from: JSON Lines, Parquet, Arrow / ``datasets`` folders,
and hub data sets from the local Hugging Face cache.

Every reader yields ``(number, record)``: the 1-based line of a JSON Lines file, or the 1-based
row of a Parquet file / Arrow table, so a :class:`~rm_registry.DataError` names the file and the
row whatever its form. What a path means:

========================================  =================================================
``prefs.jsonl`` (any other name)          JSON Lines, one object per line (as before)
``prefs.parquet``                         Parquet (pyarrow), read in row groups
``prefs.arrow``                           one Arrow file (IPC stream or file format)
``folder/``                               a ``datasets`` folder from ``save_to_disk``: a
                                          ``Dataset``, or a ``DatasetDict`` of one split
                                          (else name the split's subfolder: ``folder/train``)
``hf://ORG/NAME[/CONFIG][:SPLIT]``        a hub data set from the local Hugging Face cache,
                                          without network (split ``train`` by default)
========================================  =================================================

A :class:`DataSource` is a path that also carries ``model.data.columns``, a mapping from the keys
the plugin reads to the file's own column names (``{chosen: response_j, rejected: response_k}``):
records are renamed as they are read, so every plugin gets the mapping without knowing of it.

Nothing here imports torch; pyarrow and ``datasets`` are imported only for the files that need
them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..._errors import ConfigError, DataError

__all__ = ["HF_PREFIX", "DataSource", "content_hash", "iter_records", "source_kind", "with_columns"]

#: The prefix of a hub data set name: ``hf://Anthropic/hh-rlhf:train``.
HF_PREFIX = "hf://"
_BATCH_ROWS = 1024


class DataSource(str):
    """A data path (its text is the path, as given) plus ``columns``: our key -> the file's column.

    Plugins pass it on to :func:`rm_registry.engine.data.read_jsonl` like any path; the mapping
    travels with it.
    """

    columns: dict[str, str]

    def __new__(cls, path: str | Path, columns: Mapping[str, str] | None = None) -> DataSource:
        obj = super().__new__(cls, str(path))
        obj.columns = dict(columns or {})
        return obj

    def __reduce__(self) -> Any:
        return (DataSource, (str(self), self.columns))


def with_columns(path: str | Path, columns: Mapping[str, Any] | None) -> str | Path:
    """``path`` as a :class:`DataSource` carrying ``columns`` (``model.data.columns``), or unchanged
    when there is no mapping.

    Raises:
        ConfigError: a mapping that is not ``{key: column name}``, or maps two keys to one column.
    """
    if not columns:
        return path
    mapping = {str(k): v for k, v in dict(columns).items()}
    bad = [k for k, v in mapping.items() if not isinstance(v, str) or not v]
    if bad:
        raise ConfigError(f"model.data.columns.{bad[0]}={mapping[bad[0]]!r}: expected the name of a column of the file")
    if len(set(mapping.values())) != len(mapping):
        raise ConfigError(f"model.data.columns={mapping}: two keys name the same column")
    return DataSource(path, mapping)


def source_kind(path: str | Path) -> str:
    """``jsonl``, ``parquet``, ``arrow``, ``folder`` (``save_to_disk``) or ``hub`` (``hf://``)."""
    text = str(path)
    if text.startswith(HF_PREFIX):
        return "hub"
    p = Path(text)
    if p.is_dir():
        return "folder"
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".arrow":
        return "arrow"
    return "jsonl"


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(number, record)`` for every record of ``path``, in order, renamed by its columns mapping.

    Raises:
        DataError: the file is missing, unreadable, empty or not of its kind; a line of JSON
            Lines that is not an object; a mapped column the file lacks. The message names the
            file and, where there is one, the line or row.
    """
    columns = getattr(path, "columns", None) or {}
    kind = source_kind(path)
    reader = {"jsonl": _jsonl, "parquet": _parquet, "arrow": _arrow, "folder": _folder, "hub": _hub}[kind]
    seen = False
    number = 0
    try:
        for number, record in reader(str(path)):
            if columns:
                record = _rename(record, columns, path=path, number=number)
            seen = True
            yield number, record
    except DataError:
        raise
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:  # pyarrow's ArrowInvalid / ArrowIOError
        raise DataError(path, None, f"cannot read {'the file' if not seen else f'past record {number}'} "
                                    f"({type(exc).__name__}: {exc})") from None
    if not seen:
        what = "no JSON Lines records" if kind == "jsonl" else "no rows"
        raise DataError(path, None, f"file is empty ({what})")


def _rename(record: dict[str, Any], columns: Mapping[str, str], *, path: str | Path, number: int) -> dict[str, Any]:
    out = dict(record)
    for ours, theirs in columns.items():
        if theirs not in record:
            have = ", ".join(repr(k) for k in record) or "none"
            raise DataError(path, number, f"model.data.columns maps {ours!r} to column {theirs!r}, which this "
                                          f"record does not have (it has {have})")
        out.pop(theirs, None)
    for ours, theirs in columns.items():
        out[ours] = record[theirs]
    return out


def _jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    p = Path(path)
    if not p.exists():
        raise DataError(p, None, "no such file")
    try:
        with p.open("r", encoding="utf-8") as fh:
            head = fh.read(4096).lstrip()
            fh.seek(0)
            if head.startswith("["):  # one JSON array of objects (RM-Bench's total_dataset.json): records 1..N
                yield from _json_array(p, fh)
                return
            for lineno, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise DataError(p, lineno, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise DataError(p, lineno, f"expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
    except UnicodeDecodeError as exc:
        raise DataError(p, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _json_array(p: Path, fh: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        items = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(p, None, f"malformed JSON array ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(items, list):  # pragma: no cover - it started with "["
        raise DataError(p, None, "expected JSON Lines or one JSON array of objects")
    for number, obj in enumerate(items, start=1):
        if not isinstance(obj, dict):
            raise DataError(p, number, f"element {number} of the JSON array is a {type(obj).__name__}, expected an object")
        yield number, obj


def _table_rows(batches: Iterator[Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    row = 0
    for batch in batches:
        for record in batch.to_pylist():
            row += 1
            yield row, record


def _parquet(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise DataError(p, None, "no such file")
    try:
        reader = pq.ParquetFile(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(p, None, f"not a Parquet file ({exc})") from None
    yield from _table_rows(reader.iter_batches(batch_size=_BATCH_ROWS))


def _arrow_batches(p: Path) -> Iterator[Any]:
    import pyarrow as pa

    with pa.memory_map(str(p), "r") as source:
        try:
            reader: Any = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            try:
                source.seek(0)
                file_reader = pa.ipc.open_file(source)
            except pa.ArrowInvalid as exc:
                raise DataError(p, None, f"not an Arrow file ({exc})") from None
            yield from (file_reader.get_batch(i) for i in range(file_reader.num_record_batches))
            return
        yield from reader


def _arrow(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    p = Path(path)
    if not p.exists():
        raise DataError(p, None, "no such file")
    yield from _table_rows(_arrow_batches(p))


def _folder(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """A ``save_to_disk`` folder, read through ``datasets.load_from_disk`` (memory-mapped Arrow)."""
    p = Path(path)
    if (p / "dataset_dict.json").is_file():
        try:
            splits = json.loads((p / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(p, None, "dataset_dict.json is not a datasets DatasetDict description") from None
        if len(splits) != 1:
            raise DataError(p, None, f"a DatasetDict of splits {', '.join(map(str, splits))}: name one split's folder, "
                                     f"e.g. {p / str(splits[0])}")
        p = p / str(splits[0])
    if not (p / "state.json").is_file():
        raise DataError(p, None, "is a folder, but not one written by datasets' save_to_disk (no state.json); "
                                 "give a JSON Lines, Parquet or Arrow file, or a save_to_disk folder")
    import datasets

    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as exc:  # datasets raises FileNotFoundError / ValueError / ArrowInvalid
        raise DataError(p, None, f"cannot read this save_to_disk folder ({type(exc).__name__}: {exc})") from None
    yield from _dataset_rows(ds)


def _dataset_rows(ds: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a ``datasets.Dataset`` in its order (an indices mapping included), in batches."""
    row = 0
    for batch in ds.with_format(None).iter(batch_size=_BATCH_ROWS):
        keys = list(batch)
        for i in range(len(batch[keys[0]]) if keys else 0):
            row += 1
            yield row, {k: batch[k][i] for k in keys}


def parse_hub(path: str) -> tuple[str, str | None, str]:
    """``(repo id, config or None, split)`` of ``hf://ORG/NAME[/CONFIG][:SPLIT]``.

    Raises:
        ConfigError: a name that is not of that form.
    """
    body = path[len(HF_PREFIX):]
    name, _, split = body.partition(":")
    parts = [s for s in name.split("/") if s]
    if len(parts) not in (2, 3) or not split and body.endswith(":"):
        raise ConfigError(f"{path!r}: expected hf://ORG/NAME[/CONFIG][:SPLIT], e.g. hf://Anthropic/hh-rlhf:train")
    return "/".join(parts[:2]), (parts[2] if len(parts) == 3 else None), split or "train"


def hub_snapshot(repo: str) -> Path | None:
    """The local snapshot folder of hub data set ``repo`` (``refs/main``'s, else the newest), or None."""
    from huggingface_hub.constants import HF_HUB_CACHE

    root = Path(HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}"
    ref = root / "refs" / "main"
    if ref.is_file():
        snap = root / "snapshots" / ref.read_text(encoding="utf-8").strip()
        if snap.is_dir():
            return snap
    snaps = sorted((root / "snapshots").glob("*"), key=lambda s: s.stat().st_mtime) if (root / "snapshots").is_dir() else []
    return snaps[-1] if snaps else None


def _load_hub(path: str) -> Any:
    """The ``datasets.Dataset`` of a ``hf://`` name, from the local cache only."""
    repo, config, split = parse_hub(path)
    import datasets
    import huggingface_hub.constants as hub_constants

    snapshot = hub_snapshot(repo)
    saved = (hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    hub_constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True  # the local cache only, never the network
    try:
        if snapshot is not None:  # files as huggingface_hub downloaded them: datasets' own split rules
            return datasets.load_dataset(str(snapshot), config, split=split)
        return datasets.load_dataset(repo, config, split=split)  # datasets' prepared cache, offline
    except (ValueError, KeyError) as exc:
        raise DataError(path, None, f"no split {split!r} here ({exc})") from None
    except Exception as exc:  # ConnectionError (offline, not cached), FileNotFoundError, DatasetNotFoundError
        from huggingface_hub.constants import HF_HUB_CACHE

        raise DataError(path, None, f"not in the local Hugging Face cache ({HF_HUB_CACHE}; "
                                    f"{type(exc).__name__}: {exc}); download it where there is network "
                                    "(huggingface-cli download --repo-type dataset "
                                    f"{repo}) or give a local file") from None
    finally:
        hub_constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def _hub(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    yield from _dataset_rows(_load_hub(path))


def content_hash(path: str | Path) -> str:
    """sha256 of what ``path`` reads: a file's bytes, a folder's files (names and bytes), or the
    Arrow files behind a ``hf://`` name. Key of the token cache.

    Raises:
        DataError: the path does not exist.
    """
    h = hashlib.sha256()
    kind = source_kind(path)
    if kind == "hub":
        ds = _load_hub(str(path))
        h.update(str(path).encode() + b"\0" + str(getattr(ds, "_fingerprint", "")).encode() + b"\0")
        files = sorted({Path(f["filename"]) for f in ds.cache_files})
    else:
        p = Path(str(path))
        if not p.exists():
            raise DataError(p, None, "no such file")
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        base = p if p.is_dir() else p.parent
        files = [f for f in files if not any(part.startswith(".") for part in f.relative_to(base).parts)]
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()
