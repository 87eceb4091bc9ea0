"""The token cache: each data file tokenized once, into files every process maps read-only.

An entry is a folder ``<cache root>/<key>/`` (``tokens.bin``, the offset and field arrays as
``.npy``, ``meta.json``), where ``key`` is a hash of

* the data's content (``_sources.content_hash``: the file's bytes, a folder's files, the Arrow
  files behind a ``hf://`` name), so an edited file is tokenized again;
* the tokenizer (its whole ``tokenizer.json``, special ids, chat template, Hugging Face rules);
* every config key that changes what a sample is: ``model.encoder_seq_length``,
  ``model.data.overlong_policy``, ``model.data.columns`` and the plugin's own section, with the
  plugin's and rm-registry's versions and this format's number.

Where: ``model.data.cache_dir``, else ``$RM_REGISTRY_CACHE``, else ``$XDG_CACHE_HOME/rm-registry/tokens``
(``~/.cache/rm-registry/tokens``): a read-only data folder is no obstacle. ``model.data.cache=false``
tokenizes in memory every run.

One process writes an entry while the others wait (an exclusive ``flock`` on ``.<key>.lock``; with
torchrun every rank of a node asks, one builds, the others then map it). It is written into
``.tmp-<key>-<pid>-...`` and renamed into place in one step, ``meta.json`` written last: a process
killed while writing leaves only a ``.tmp-`` folder, never read as an entry and removed by the next
build or ``rm-registry cache clear``. An entry whose files disagree with its ``meta.json`` is
damaged: it is removed and built again, with one warning. Building an entry for a file removes the
entries of the same file and settings made from an older content (stale), with one warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..._errors import StorageError
from . import DatasetStats
from ._sources import HF_PREFIX, content_hash
from ._tokens import TokenArrays, TokenDataset, in_memory_dataset, tokenize_file

if TYPE_CHECKING:  # pragma: no cover
    from omegaconf import DictConfig

    from ..._protocol import RewardModelPlugin, Tokenizer

__all__ = ["CACHE_FORMAT", "ENV_VAR", "cache_root", "clear_entries", "list_entries", "split_dataset"]

#: Bumped whenever the files of an entry change meaning.
CACHE_FORMAT = 1
#: Environment variable naming the cache root when ``model.data.cache_dir`` is not set.
ENV_VAR = "RM_REGISTRY_CACHE"
_META = "meta.json"
_PROBE = "The quick brown fox, 0123456789; \u00fc\u00df \u65e5\u672c\u8a9e <|endoftext|> </s>\n\tend."
_TMP = ".tmp-"


def default_root() -> Path:
    """``$RM_REGISTRY_CACHE``, else ``$XDG_CACHE_HOME/rm-registry/tokens`` (``~/.cache/...``)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "rm-registry" / "tokens"


def cache_root(cfg: DictConfig | None = None) -> Path:
    """The cache root of a run: ``model.data.cache_dir`` when set, else :func:`default_root`."""
    from omegaconf import OmegaConf

    value = None if cfg is None else OmegaConf.select(cfg, "model.data.cache_dir", default=None)
    return Path(str(value)).expanduser() if value else default_root()


def _tokenizer_identity(tokenizer: Tokenizer) -> dict[str, Any]:
    ident: dict[str, Any] = {
        "class": type(tokenizer).__name__,
        "vocab_size": int(tokenizer.vocab_size),
        "eos_id": int(tokenizer.eos_id),
        "pad_id": int(tokenizer.pad_id),
        "hf_rules": bool(getattr(tokenizer, "hf_rules", False)),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "bos_token": getattr(tokenizer, "bos_token", None),
    }
    to_str = getattr(tokenizer, "to_str", None)
    if callable(to_str):
        ident["tokenizer_json"] = hashlib.sha256(str(to_str()).encode("utf-8")).hexdigest()
    else:  # a tokenizer we know nothing more of: where it comes from, and what it makes of a probe text
        ident["module"] = type(tokenizer).__module__
        ident["probe"] = list(tokenizer.encode(_PROBE))
    return ident


def _settings(plugin: RewardModelPlugin, tokenizer: Tokenizer, cfg: DictConfig,
              columns: dict[str, str] | None = None) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from ..._version import __version__
    from .._contract import plugin_record

    record = plugin_record(plugin)
    section = OmegaConf.select(cfg, f"model.{plugin.name}", default=None)
    return {
        "format": CACHE_FORMAT,
        "rm_registry": __version__,
        "plugin": {"name": plugin.name, "distribution": record.get("distribution"), "version": record.get("version")},
        "tokenizer": _tokenizer_identity(tokenizer),
        "encoder_seq_length": int(cfg.model.encoder_seq_length),
        "overlong_policy": str(cfg.model.data.overlong_policy),
        "columns": dict(columns) if columns else None,  # what the path carries is what is applied
        "section": None if section is None else OmegaConf.to_container(section, resolve=True),
    }


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _source_name(path: str) -> str:
    return path if path.startswith(HF_PREFIX) else str(Path(path).resolve())


# --- reading an entry ------------------------------------------------------------------------

class _Damaged(Exception):
    pass


def _read_meta(entry: Path) -> dict[str, Any]:
    try:
        meta = json.loads((entry / _META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _Damaged(f"{_META} unreadable ({exc})") from None
    if not isinstance(meta, dict):
        raise _Damaged(f"{_META} is not an object")
    return meta


def _open(entry: Path, plugin: Any, key: str, path: str) -> TokenDataset:
    """Map an entry read-only. Raises _Damaged when its files disagree with its meta.json."""
    meta = _read_meta(entry)
    if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
        raise _Damaged(f"format {meta.get('format')!r} / key {meta.get('key')!r} is not this cache's")
    try:
        for name, size in meta["files"].items():
            actual = (entry / name).stat().st_size
            if actual != size:
                raise _Damaged(f"{name} has {actual} bytes, {_META} says {size}")
        dtype = np.dtype(meta["dtype"])
        n_tokens = int(meta["tokens"])
        tokens = (np.memmap(entry / "tokens.bin", dtype=dtype, mode="r", shape=(n_tokens,)) if n_tokens
                  else np.zeros(0, dtype))

        def load(name: str) -> np.ndarray:
            return np.load(entry / name, mmap_mode="r", allow_pickle=False)

        fields = {name: (load(f"field-{i}.npy"), load(f"present-{i}.npy")) for i, name in enumerate(meta["fields"])}
        arrays = TokenArrays(tokens=tokens, seq_offsets=load("seq_offsets.npy"), seq_lines=load("seq_lines.npy"),
                             sample_offsets=load("sample_offsets.npy"), fields=fields)
        stats = DatasetStats(**{k: int(v) for k, v in meta["stats"].items()})
    except _Damaged:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _Damaged(f"{type(exc).__name__}: {exc}") from None
    if (arrays.num_samples != stats.kept or int(arrays.seq_offsets[-1]) != n_tokens
            or arrays.seq_lines.shape[0] != arrays.seq_offsets.shape[0] - 1):
        raise _Damaged("its arrays disagree with each other")
    with contextlib.suppress(OSError):
        os.utime(entry / _META)  # last use, for `rm-registry cache info`
    return TokenDataset(plugin, arrays, stats, path, cache=entry)


# --- writing an entry ------------------------------------------------------------------------

class _NoLock(Exception):
    pass


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    with open(lock, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            from ..progress import say

            say(f"waiting for another process writing the token cache {lock.parent / lock.name[1:-5]}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as exc:  # ENOLCK / ENOSYS: a file system without flock (some NFS, Lustre)
            raise _NoLock(exc.strerror or str(exc)) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tmp_owner(tmp: Path) -> tuple[int, str]:
    """``(pid, host)`` of a ``.tmp-<key>-<pid>-<ns>-<host>`` folder (``(-1, "")`` when unreadable)."""
    parts = tmp.name[len(_TMP):].split("-", 3)
    try:
        return int(parts[1]), parts[3]
    except (IndexError, ValueError):
        return -1, ""


def _writer_gone(tmp: Path) -> bool:
    """The folder's writer ran on this host and is no longer alive (another host's: unknown, kept)."""
    pid, host = _tmp_owner(tmp)
    return host == socket.gethostname() and pid != os.getpid() and not _pid_alive(pid)


def _remove_leftovers(root: Path, key: str) -> None:
    """``.tmp-<key>-`` folders of writers of this entry that are gone (killed while writing); called
    under the entry's lock, so no live writer of this host is writing one."""
    for tmp in root.glob(f"{_TMP}{key}-*"):
        if _writer_gone(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(root: Path, source: str, settings_key: str, keep: str) -> None:
    for meta_file in root.glob(f"*/{_META}"):
        entry = meta_file.parent
        if entry.name == keep:
            continue
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if meta.get("source") == source and meta.get("settings_key") == settings_key:
            warnings.warn(f"{source} changed since it was tokenized into {entry}: tokenizing it again "
                          "(the old cache entry is removed)", UserWarning, stacklevel=4)
            shutil.rmtree(entry, ignore_errors=True)


def _write(entry: Path, plugin: Any, path: str | Path, tokenizer: Tokenizer, cfg: DictConfig, meta: dict[str, Any],
           progress: bool, before: tuple[int, int, int] | None) -> None:
    tmp = entry.parent / f"{_TMP}{entry.name}-{os.getpid()}-{time.monotonic_ns()}-{socket.gethostname()}"
    tmp.mkdir()
    try:
        with open(tmp / "tokens.bin", "wb") as sink:
            builder, stats = tokenize_file(plugin, path, tokenizer, cfg, sink=sink, progress=progress,
                                           desc=f"tokenizing {Path(path).name if '://' not in str(path) else path}")
        arrays = builder.finish(tokens=np.zeros(0, builder.dtype))
        np.save(tmp / "seq_offsets.npy", arrays.seq_offsets)
        np.save(tmp / "seq_lines.npy", arrays.seq_lines)
        np.save(tmp / "sample_offsets.npy", arrays.sample_offsets)
        names = sorted(arrays.fields)
        for i, name in enumerate(names):
            values, present = arrays.fields[name]
            np.save(tmp / f"field-{i}.npy", values)
            np.save(tmp / f"present-{i}.npy", present)
        files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
        meta = {**meta, "dtype": builder.dtype.name, "tokens": builder.num_tokens, "samples": stats.kept,
                "fields": names, "stats": stats.as_dict(), "files": files,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / _META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if _file_state(path) != before:
            from ..._errors import DataError

            raise DataError(path, None, "changed while it was being tokenized; run again once it is written")
        try:
            os.rename(tmp, entry)
        except OSError:  # an entry appeared meanwhile (another node, a left-over folder)
            try:
                _open(entry, plugin, meta["key"], str(path))
                shutil.rmtree(tmp, ignore_errors=True)
                return
            except _Damaged:
                shutil.rmtree(entry, ignore_errors=True)
                os.rename(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _file_state(path: str | Path) -> tuple[int, int, int] | None:
    """``(size, mtime_ns, inode)`` of a data file (None for folders and hub names)."""
    p = Path(str(path))
    if str(path).startswith(HF_PREFIX) or not p.is_file():
        return None
    st = p.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _fallback(why: str, plugin: Any, path: str | Path, tokenizer: Tokenizer, cfg: DictConfig,
              progress: bool) -> TokenDataset:
    warnings.warn(f"{why}; tokenizing {path} in memory. Set model.data.cache_dir (or RM_REGISTRY_CACHE) to a "
                  "writable local folder, or model.data.cache=false to skip the cache", UserWarning, stacklevel=3)
    return in_memory_dataset(plugin, path, tokenizer, cfg, progress=progress)


def split_dataset(plugin: RewardModelPlugin, path: str | Path, tokenizer: Tokenizer, cfg: DictConfig, *,
                  progress: bool = False) -> TokenDataset:
    """The :class:`TokenDataset` of one data file: from the token cache (built when missing), or
    tokenized in memory with ``model.data.cache=false``, or (one warning) when the cache cannot be
    written or locked.

    Raises:
        DataError: from reading the file (nothing is left in the cache), or the file changed while
            it was tokenized.
        StorageError: the cache could not be written (disk full...).
    """
    from omegaconf import OmegaConf

    if not bool(OmegaConf.select(cfg, "model.data.cache", default=True)):
        return in_memory_dataset(plugin, path, tokenizer, cfg, progress=progress)
    root = cache_root(cfg)
    text = str(path)
    settings = _settings(plugin, tokenizer, cfg, columns=getattr(path, "columns", None))
    settings_key = _digest(settings)
    before = _file_state(path)
    key = _digest([settings_key, content_hash(path)])[:32]
    entry = root / key
    try:
        found = _open(entry, plugin, key, text)  # a read-only cache root with the entry serves too
        found.cache_note = f"mapped from the token cache {entry}"
        return found
    except _Damaged:
        pass
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return _fallback(f"the token cache {root} cannot be written ({exc.strerror or exc})", plugin, path, tokenizer,
                         cfg, progress)
    started = time.perf_counter()
    try:
        with _locked(root / f".{key}.lock"):
            if entry.exists():
                try:
                    found = _open(entry, plugin, key, text)
                    found.cache_note = f"mapped from the token cache {entry}, written by another process"
                    return found
                except _Damaged as why:
                    warnings.warn(f"the token cache {entry} of {text} is damaged ({why}): tokenizing again",
                                  UserWarning, stacklevel=2)
                    shutil.rmtree(entry, ignore_errors=True)
            _remove_leftovers(root, key)
            source = _source_name(text)
            _remove_stale(root, source, settings_key, keep=key)
            meta = {"format": CACHE_FORMAT, "key": key, "source": source, "settings_key": settings_key,
                    "plugin": plugin.name, "settings": settings}
            _write(entry, plugin, path, tokenizer, cfg, meta, progress, before)
    except _NoLock as exc:
        return _fallback(f"the token cache {root} cannot be locked ({exc})", plugin, path, tokenizer, cfg, progress)
    except OSError as exc:
        raise StorageError(f"{root}: cannot write the token cache ({exc.strerror or exc}); free space there or "
                           "set model.data.cache_dir to another folder (model.data.cache=false: no cache)") from exc
    try:
        made = _open(entry, plugin, key, text)
    except _Damaged as why:  # removed or changed by another process in the meantime
        return _fallback(f"the token cache entry {entry} just written cannot be read back ({why})", plugin, path,
                         tokenizer, cfg, progress)
    made.cache_note = (f"tokenized in {time.perf_counter() - started:.1f} s, {made.arrays.num_tokens} tokens, into "
                       f"the token cache {entry}")
    return made


# --- rm-registry cache info / clear -----------------------------------------------------------

def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def list_entries(root: Path) -> list[dict[str, Any]]:
    """One dict per entry (``key``, ``source``, ``plugin``, ``samples``, ``tokens``, ``bytes``,
    ``created``, ``last_used``, ``ok``), plus leftovers of killed writers as ``ok: false``."""
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out
    for entry in sorted(p for p in root.iterdir() if p.is_dir()):
        if entry.name.startswith(_TMP):
            out.append({"key": entry.name, "source": None, "plugin": None, "samples": None, "tokens": None,
                        "bytes": _size(entry), "created": None, "last_used": None, "ok": False,
                        "note": ("unfinished (its writer was stopped); removed by the next build or `cache clear`"
                                 if _writer_gone(entry) else "being written (or by another host's process)")})
            continue
        try:
            meta = _read_meta(entry)
            ok = True
        except _Damaged:
            meta, ok = {}, False
        mtime = (entry / _META).stat().st_mtime if (entry / _META).exists() else entry.stat().st_mtime
        out.append({"key": entry.name, "source": meta.get("source"), "plugin": meta.get("plugin"),
                    "samples": meta.get("samples"), "tokens": meta.get("tokens"), "bytes": _size(entry),
                    "created": meta.get("created"), "last_used": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(mtime)),
                    "ok": ok})
    return out


def clear_entries(root: Path, keys: list[str] | None = None) -> tuple[int, int]:
    """Remove the entries named by ``keys`` (prefixes allowed), or all of them; ``(removed, bytes)``.

    Raises:
        KeyError: a key that matches no entry (nothing is removed then).
    """
    entries = [e for e in list_entries(root)
               if not e["key"].startswith(_TMP) or _writer_gone(root / e["key"])]  # a live writer's: kept
    chosen = entries
    if keys:
        chosen = []
        for k in keys:
            hits = [e for e in entries if e["key"].startswith(k) or e["key"].startswith(_TMP + k)]
            if not hits:
                raise KeyError(k)
            chosen += [e for e in hits if e not in chosen]
    removed = size = 0
    for e in chosen:
        shutil.rmtree(root / e["key"], ignore_errors=True)
        removed, size = removed + 1, size + int(e["bytes"] or 0)
    return removed, size  # lock files stay: a waiting process holds one open
