"""The scan of installed entry points: what is installed, read once per process.

The lowest layer of the registry: :mod:`._registry` (reward models) and :mod:`._hooks` (hook
implementations) both read the one scan this module keeps, and neither imports the other for it.

One pass over ``importlib.metadata.entry_points()`` serves both groups. The same distribution seen
twice on ``sys.path`` (an editable install shadowing a site install, say) counts once: the first
one on ``sys.path`` wins, as for imports. :func:`forget_scan` makes the next use read the installed
distributions again; entries already loaded and still installed keep their object.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from ._errors import RMRegistryError
from ._protocol import PluginInfo

__all__ = [
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "HOOKS_ENTRY_POINT_GROUP",
    "IN_PROCESS",
    "Entry",
    "Scan",
    "current_scan",
    "env_disabled",
    "forget_scan",
    "normalize",
]

#: Entry-point group that reward-model architectures register under.
ENTRY_POINT_GROUP = "reward_models"
#: Entry-point group of installed hook implementations.
HOOKS_ENTRY_POINT_GROUP = "rm_registry_hooks"
#: Environment variable: comma-separated plugin or distribution names never to import.
DISABLE_ENV = "RM_REGISTRY_DISABLE"
#: The ``distribution`` of plugins registered with :func:`rm_registry.register_reward_model`.
IN_PROCESS = "<in-process>"


def normalize(name: str) -> str:
    """PEP 503 normalisation, also used for plugin names so ``a-b`` and ``a_b`` match."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(eq=False)
class Entry:
    """One plugin (or hook) declaration and, once loaded, its object."""

    name: str
    distribution: str
    version: str
    value: str
    group: str
    ep: importlib.metadata.EntryPoint | None = None
    plugin: Any = None
    loaded: bool = False  # set as soon as the object is validated (re-entrant calls see it)
    ready: bool = False  # set after the plugin_loaded hooks ran (fast path for other threads)
    failure: RMRegistryError | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def where(self) -> str:
        if self.distribution == IN_PROCESS:
            return f"registered in-process ({type(self.plugin).__module__}.{type(self.plugin).__qualname__})"
        return (
            f"distribution {self.distribution} {self.version}, "
            f"entry point {self.name} = {self.value}"
        )

    def info(self, status: str, error: str | None = None) -> PluginInfo:
        return PluginInfo(
            name=self.name,
            distribution=self.distribution,
            version=self.version,
            entry_point=self.value,
            status=status,
            error=error,
        )


@dataclass
class Scan:
    plugins: dict[str, list[Entry]]  # by name, in sys.path order
    hooks: list[Entry]


_lock = threading.RLock()
_scan: Scan | None = None
_scan_count = 0  # number of entry-point scans done by this process (for tests and debugging)


def _dist_of(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "<unknown>", "?"
    try:
        name = dist.metadata["Name"] or dist.name
        version = dist.version or "?"
    except Exception:  # a corrupt METADATA file must not break the listing of the others
        return "<unknown>", "?"
    return str(name), str(version)


def _entries(
    eps: importlib.metadata.EntryPoints, group: str, keep: dict[tuple[str, ...], Entry]
) -> list[Entry]:
    seen: set[tuple[str, str]] = set()
    entries = []
    for ep in eps.select(group=group):
        distribution, version = _dist_of(ep)
        key = (ep.name, normalize(distribution))
        if key in seen:  # the same distribution twice on sys.path: the first one wins
            continue
        seen.add(key)
        previous = keep.get((ep.name, normalize(distribution), version, ep.value))
        entries.append(
            previous
            or Entry(ep.name, distribution, version, ep.value, group, ep)
        )
    return entries


def _discover(keep: dict[tuple[str, ...], Entry]) -> Scan:
    global _scan_count
    _scan_count += 1
    # One pass over every installed distribution serves both groups.
    eps = importlib.metadata.entry_points()
    plugins: dict[str, list[Entry]] = {}
    for entry in _entries(eps, ENTRY_POINT_GROUP, keep):
        plugins.setdefault(entry.name, []).append(entry)
    return Scan(plugins=plugins, hooks=_entries(eps, HOOKS_ENTRY_POINT_GROUP, {}))


def current_scan() -> Scan:
    """The scan of the installed entry points (read now if nothing was read since the last forget)."""
    global _scan
    scan = _scan
    if scan is not None:
        return scan
    with _lock:
        if _scan is None:
            _scan = _discover(_keep)
            _keep.clear()
        return _scan


# Loaded entries carried over a rescan, so the same plugin object stays the same object.
_keep: dict[tuple[str, ...], Entry] = {}


def hook_entries() -> list[Entry]:
    """The installed hook implementations (entry points of :data:`HOOKS_ENTRY_POINT_GROUP`)."""
    return list(current_scan().hooks)


def forget_scan() -> None:
    """Forget the scan; the next :func:`current_scan` reads the installed distributions again.

    Loaded entries are kept aside, so that a plugin still installed keeps its object.
    """
    global _scan
    importlib.invalidate_caches()
    with _lock:
        if _scan is not None:
            for entries in _scan.plugins.values():
                for entry in entries:
                    if entry.loaded:
                        key = (entry.name, normalize(entry.distribution), entry.version, entry.value)
                        _keep[key] = entry
        _scan = None


def _disable_list() -> list[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_disabled(entry: Entry) -> str | None:
    """Why ``RM_REGISTRY_DISABLE`` disables ``entry``, or ``None``."""
    targets = {normalize(entry.name), normalize(entry.distribution)}
    for item in _disable_list():
        if normalize(item) in targets:
            return (
                f"disabled by {DISABLE_ENV}={os.environ.get(DISABLE_ENV, '')!r} (it lists {item!r}); "
                f"remove {item!r} from {DISABLE_ENV} to re-enable it"
            )
    return None
