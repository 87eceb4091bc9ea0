"""Discovery, loading and in-process registration of reward-model plugins.

Installed architectures declare one entry point in the ``reward_models`` group::

    [project.entry-points.reward_models]
    regression = "rm_regression:plugin"

The entry points of every installed distribution are read once per process, on first use
(:func:`list_reward_models` or :func:`get_reward_model`), under a lock; :func:`rescan` forgets
that scan. Listing never imports plugin code; :func:`get_reward_model` imports the one plugin
asked for, once, and validates it against :class:`rm_registry.RewardModelPlugin`. The scan itself
is :mod:`._discovery`'s, which :mod:`._hooks` reads too.

The entry point's object should be a plugin *instance*. A class is accepted too: it is
instantiated once, without arguments. Any other callable is treated as the plugin itself.

The same distribution seen twice on ``sys.path`` (an editable install shadowing a site
install, say) counts once: the first one on ``sys.path`` wins, as for imports. The same name
declared by two *different* distributions is a conflict that is never resolved silently.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

from . import _hooks
from ._discovery import (
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    IN_PROCESS,
    Entry,
    Scan,
    current_scan,
    env_disabled,
    forget_scan,
    normalize,
)
from ._errors import (
    PluginConflictError,
    PluginDisabledError,
    PluginLoadError,
    PluginNotFoundError,
    PluginValidationError,
)
from ._protocol import OPTIONAL_MEMBERS, PROTOCOL_MEMBERS, OptionalMembers, PluginInfo, RewardModelPlugin

__all__ = [
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "IN_PROCESS",
    "get_reward_model",
    "list_reward_models",
    "optional_members",
    "plugin_distribution",
    "protocol_problems",
    "register_reward_model",
    "registered_reward_model",
    "rescan",
    "unregister_reward_model",
]

# Members whose value is data, not a method.
_DATA_MEMBERS = frozenset({"name", "description"})
# Never read while validating: resolving it may import torch.
_LAZY_MEMBERS = frozenset({"model_class"})


_lock = threading.RLock()
_registered: dict[str, Entry] = {}
_generation = 0  # bumped on every change of what is known (scan, registration)


_seen: Scan | None = None  # the scan _generation last counted


def _get_scan() -> Scan:
    global _generation, _seen
    scan = current_scan()
    with _lock:
        if scan is not _seen:  # a new scan: what is known may have changed
            _seen = scan
            _generation += 1
    return scan


def generation() -> int:
    """A number that changes whenever the set of known reward models may have (a new scan, an
    in-process registration or removal): caches of names compare it (``RewardModelType``)."""
    _get_scan()
    return _generation


def rescan() -> None:
    """Forget the entry-point scan; the next call reads the installed distributions again.

    Use it after installing or uninstalling a plugin distribution at run time. Plugins that
    were already loaded and are still installed keep their object; broken ones are retried.
    In-process registrations are kept. Hook implementations are read again too.
    """
    global _generation
    forget_scan()
    with _lock:
        _generation += 1


def _disabled(entry: Entry) -> str | None:
    """Why ``entry`` may not be imported (environment, then allow hooks), or ``None``."""
    reason = env_disabled(entry)
    if reason is not None:
        return reason
    refused = _hooks.refusal(entry.info("available"))
    if refused is not None:
        return (
            f"{refused}; to use it, change that hook's policy or disable the hook's distribution "
            f"with {DISABLE_ENV}"
        )
    return None


def protocol_problems(obj: object, *, expected_name: str | None = None) -> list[str]:
    """Everything that keeps ``obj`` from satisfying :class:`RewardModelPlugin`.

    ``model_class`` is only looked up statically (never resolved: that may import torch).

    Args:
        obj: The candidate plugin object.
        expected_name: The entry-point name ``obj.name`` must equal, if any.

    Returns:
        Human-readable problems; empty when ``obj`` conforms.
    """
    import inspect  # here, not at the top: listing never validates, and inspect is slow to import

    problems: list[str] = []
    missing = []
    for member in PROTOCOL_MEMBERS:
        try:
            inspect.getattr_static(obj, member)
        except AttributeError:
            missing.append(member)
            continue
        if member in _LAZY_MEMBERS:
            continue
        try:
            value = getattr(obj, member)
        except Exception as exc:
            problems.append(f"reading {member!r} raised {type(exc).__name__}: {exc}")
            continue
        if member in _DATA_MEMBERS:
            if not isinstance(value, str) or not value:
                problems.append(f"{member!r} must be a non-empty str, got {value!r}")
        elif not callable(value):
            problems.append(f"{member!r} must be a method, got a {type(value).__name__}")
        else:
            problem = _signature_problem(member, value)
            if problem:
                problems.append(problem)
    if missing:
        problems.insert(0, f"missing member(s): {', '.join(missing)}")
    problems.extend(_optional_problems(obj))
    name = inspect.getattr_static(obj, "name", None)
    if expected_name is not None and isinstance(name, str) and name != expected_name:
        problems.append(
            f"name is {name!r} but the entry point is named {expected_name!r}; they must be equal"
        )
    return problems


def optional_members(obj: object) -> tuple[str, ...]:
    """The members of :data:`OPTIONAL_MEMBERS` that ``obj`` defines (looked up statically)."""
    import inspect

    present = []
    for member in OPTIONAL_MEMBERS:
        try:
            inspect.getattr_static(obj, member)
        except AttributeError:
            continue
        present.append(member)
    return tuple(present)


def _optional_problems(obj: object) -> list[str]:
    """Problems of the optional members ``obj`` defines (absent ones are fine)."""
    problems = []
    for member in optional_members(obj):
        try:
            value = getattr(obj, member)
        except Exception as exc:
            problems.append(f"reading optional {member!r} raised {type(exc).__name__}: {exc}")
            continue
        if member == "evaluation_batch_keys":
            if not isinstance(value, (tuple, list)) or not all(isinstance(k, str) for k in value):
                problems.append(f"optional 'evaluation_batch_keys' must be a tuple of str, got {value!r}")
        elif not callable(value):
            problems.append(f"optional {member!r} must be a method, got a {type(value).__name__}")
        else:
            problem = _signature_problem(member, value, OptionalMembers)
            if problem:
                problems.append(problem)
    return problems


def _signature_problem(member: str, method: Any, spec: type = RewardModelPlugin) -> str | None:
    """Whether ``method`` can be called as the protocol calls it (positionally or by keyword)."""
    import inspect

    try:
        expected = inspect.signature(getattr(spec, member))
        actual = inspect.signature(method)
    except (TypeError, ValueError):  # builtins without signatures: trust them
        return None
    params = [p.name for p in expected.parameters.values() if p.name != "self"]
    keyword_only = {p.name for p in expected.parameters.values() if p.kind is p.KEYWORD_ONLY}
    if keyword_only:  # e.g. score_texts(record, *, path, line): call it exactly that way
        try:
            actual.bind(*[p for p in params if p not in keyword_only], **{k: None for k in keyword_only})
            return None
        except TypeError as exc:
            return f"{member!r} cannot be called as {member}({', '.join(params)}): {exc}"
    try:
        actual.bind(*params)
        return None
    except TypeError:
        pass
    try:
        actual.bind(**{name: None for name in params})
        return None
    except TypeError as exc:
        return f"{member!r} cannot be called as {member}({', '.join(params)}): {exc}"


def _instantiate(obj: Any) -> Any:
    return obj() if isinstance(obj, type) else obj


def _load(entry: Entry) -> Any:
    if entry.ready:
        return entry.plugin
    with entry.lock:
        if entry.loaded:
            return entry.plugin
        if entry.failure is not None:
            again = type(entry.failure)(str(entry.failure))
            raise again from entry.failure.__cause__
        assert entry.ep is not None
        try:
            obj = _instantiate(entry.ep.load())
        except (Exception, SystemExit) as exc:
            error = PluginLoadError(
                f"reward model {entry.name!r} failed to load ({entry.where}): "
                f"{type(exc).__name__}: {exc}. Fix or reinstall {entry.distribution}, or set "
                f"{DISABLE_ENV}={entry.name} to skip it"
            )
            entry.failure = error
            raise error from exc
        problems = protocol_problems(obj, expected_name=entry.name)
        if problems:
            error = PluginValidationError(
                f"reward model {entry.name!r} ({entry.where}) does not satisfy the "
                f"RewardModelPlugin protocol: {'; '.join(problems)}"
            )
            entry.failure = error
            raise error
        entry.plugin = obj
        entry.loaded = True
        _hooks.call_plugin_loaded(obj, entry.info("loaded"))
        entry.ready = True
        return obj


def _known_names() -> list[str]:
    with _lock:
        return sorted(set(_get_scan().plugins) | set(_registered))


def not_found_error(name: str) -> PluginNotFoundError:
    names = _known_names()
    if not names:
        return PluginNotFoundError(
            f"no reward model named {name!r}: no reward models are installed. Install a plugin "
            f"distribution (for example `pip install rm-regression`) or register one with "
            f"register_reward_model()"
        )
    import difflib

    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return PluginNotFoundError(
        f"no reward model named {name!r}.{hint} Installed: {', '.join(names)} "
        f"(see `rm-registry list`)"
    )


def _resolve(name: str, distribution: str | None) -> Entry:
    """The one entry ``name`` (and ``distribution``) designates, or our error saying why not."""
    with _lock:
        registered = _registered.get(name)
        candidates = list(_get_scan().plugins.get(name, []))
    if distribution is not None:
        if distribution == IN_PROCESS:
            if registered is None:
                raise PluginNotFoundError(f"no reward model {name!r} is registered in-process")
            return registered
        chosen = [c for c in candidates if normalize(c.distribution) == normalize(distribution)]
        if not chosen:
            if not candidates and registered is None:
                raise not_found_error(name)
            providers = [c.distribution for c in candidates] + ([IN_PROCESS] if registered else [])
            raise PluginNotFoundError(
                f"distribution {distribution!r} does not provide a reward model named {name!r}; "
                f"it is provided by: {', '.join(sorted(providers))}"
            )
        entry = chosen[0]
        reason = _disabled(entry)
        if reason is not None:
            raise PluginDisabledError(f"reward model {name!r} ({entry.where}) is {reason}")
        return entry
    if registered is not None:
        return registered
    if not candidates:
        raise not_found_error(name)
    enabled = []
    reasons = []
    for candidate in candidates:
        reason = _disabled(candidate)
        if reason is None:
            enabled.append(candidate)
        else:
            reasons.append(f"reward model {name!r} ({candidate.where}) is {reason}")
    if not enabled:
        raise PluginDisabledError("; ".join(reasons))
    if len(enabled) > 1:
        raise _conflict(name, enabled)
    return enabled[0]


def _conflict(name: str, entries: list[Entry]) -> PluginConflictError:
    listed = " and ".join(f"{e.distribution} {e.version} (entry point {e.value})" for e in entries)
    first = entries[0].distribution
    others = ",".join(e.distribution for e in entries[1:])
    return PluginConflictError(
        f"reward model {name!r} is provided by {len(entries)} distributions: {listed}. Choose one "
        f"with get_reward_model({name!r}, distribution={first!r}) (on the command line: --distribution "
        f"{first}), or disable the others with "
        f"{DISABLE_ENV}={others} (or uninstall them)"
    )


def get_reward_model(name: str, *, distribution: str | None = None) -> RewardModelPlugin:
    """The plugin registered as ``name``, imported on first request and validated.

    Only that plugin's code is imported. An in-process registration of ``name`` takes
    precedence over installed ones unless ``distribution`` is given.

    Args:
        name: Registry name (the entry-point name), e.g. ``"regression"``.
        distribution: Pick the plugin of this installed distribution (needed when two
            distributions provide ``name``); ``"<in-process>"`` picks the in-process one.

    Raises:
        PluginNotFoundError: Nothing provides ``name`` (the message suggests the closest name).
        PluginConflictError: Several distributions provide ``name`` and none was chosen.
        PluginDisabledError: ``RM_REGISTRY_DISABLE`` or an allow hook refuses it.
        PluginLoadError: Importing or instantiating it raised (chained as ``__cause__``).
        PluginValidationError: The object does not satisfy :class:`RewardModelPlugin`.
    """
    entry = _resolve(name, distribution)
    if entry.distribution == IN_PROCESS:
        return entry.plugin
    return _load(entry)


def _entry_status(entry: Entry) -> PluginInfo:
    reason = _disabled(entry)
    if reason is not None:
        return entry.info("disabled", reason)
    if entry.failure is not None:
        return entry.info("broken", str(entry.failure))
    if entry.loaded:
        return entry.info("loaded")
    return entry.info("available")


def list_reward_models() -> list[PluginInfo]:
    """Every installed or registered reward model, with its status. Imports no plugin code.

    Returns:
        One :class:`PluginInfo` per (name, distribution), sorted by name, the in-process one
        first, then by distribution. A name that several enabled distributions provide appears
        once per distribution, with status ``conflict`` (unless already loaded or broken).
    """
    with _lock:
        groups = {name: list(entries) for name, entries in _get_scan().plugins.items()}
        registered = list(_registered.values())
    rows = [entry.info("registered") for entry in registered]
    for name, entries in groups.items():
        statuses = [_entry_status(entry) for entry in entries]
        active = {row.distribution for row in statuses if row.status != "disabled"}
        for entry, row in zip(entries, statuses):
            if row.status == "available" and len(active) > 1:
                others = ", ".join(sorted(active - {row.distribution}))
                row = entry.info(
                    "conflict",
                    f"{name!r} is also provided by {others}; choose with distribution= or "
                    f"disable one with {DISABLE_ENV}",
                )
            rows.append(row)
    rows.sort(key=lambda row: (row.name, row.distribution != IN_PROCESS, row.distribution))
    return rows


def plugin_info(name: str, distribution: str | None = None) -> PluginInfo:
    """The registry row of the plugin :func:`get_reward_model` resolves to (loading it)."""
    entry = _resolve(name, distribution)
    if entry.distribution == IN_PROCESS:
        return entry.info("registered")
    _load(entry)
    return entry.info("loaded")


def plugin_distribution(plugin: Any) -> tuple[str, str] | None:
    """``(distribution, version)`` that provided the loaded or registered ``plugin`` object.

    ``(IN_PROCESS, "")`` for an in-process registration; ``None`` for an object the registry
    did not hand out (a plugin used directly, without ``get_reward_model``).
    """
    with _lock:
        for entry in _registered.values():
            if entry.plugin is plugin:
                return IN_PROCESS, ""
        for entries in _get_scan().plugins.values():
            for entry in entries:
                if entry.loaded and entry.plugin is plugin:
                    return entry.distribution, entry.version
    return None


def register_reward_model(plugin: Any, *, replace: bool = False) -> RewardModelPlugin:
    """Register a plugin object in this process (notebooks, tests), under ``plugin.name``.

    Args:
        plugin: A plugin instance (a class is instantiated without arguments).
        replace: Allow replacing an in-process registration of the same name, or shadowing an
            installed plugin of that name (``get_reward_model(name)`` then returns this one;
            ``distribution=`` still reaches the installed one).

    Returns:
        The registered plugin object.

    Raises:
        PluginValidationError: ``plugin`` does not satisfy :class:`RewardModelPlugin`.
        PluginConflictError: The name is taken and ``replace`` is false.
    """
    return _register(plugin, replace=replace)[0].plugin


def _register(plugin: Any, *, replace: bool) -> tuple[Entry, Entry | None]:
    global _generation
    plugin = _instantiate(plugin)
    problems = protocol_problems(plugin)
    if problems:
        raise PluginValidationError(
            f"cannot register {plugin!r} in-process: it does not satisfy the RewardModelPlugin "
            f"protocol: {'; '.join(problems)}"
        )
    entry = Entry(
        name=plugin.name,
        distribution=IN_PROCESS,
        version="",
        value=f"{type(plugin).__module__}:{type(plugin).__qualname__}",
        group=ENTRY_POINT_GROUP,
        plugin=plugin,
        loaded=True,
        ready=True,
    )
    with _lock:
        previous = _registered.get(entry.name)
        if not replace:
            if previous is not None:
                raise PluginConflictError(
                    f"a reward model named {entry.name!r} is already registered in-process "
                    f"({previous.value}); pass replace=True to replace it"
                )
            installed = _get_scan().plugins.get(entry.name)
            if installed:
                dists = ", ".join(f"{e.distribution} {e.version}" for e in installed)
                raise PluginConflictError(
                    f"a reward model named {entry.name!r} is installed ({dists}); pass "
                    f"replace=True to shadow it in this process"
                )
        _registered[entry.name] = entry
        _generation += 1
    _hooks.call_plugin_loaded(plugin, entry.info("registered"))
    return entry, previous


def unregister_reward_model(name: str) -> None:
    """Remove the in-process registration of ``name``.

    Raises:
        PluginNotFoundError: ``name`` is not registered in-process.
    """
    global _generation
    with _lock:
        if name not in _registered:
            raise PluginNotFoundError(
                f"no reward model {name!r} is registered in-process (installed plugins are "
                f"removed by uninstalling their distribution)"
            )
        del _registered[name]
        _generation += 1


@contextlib.contextmanager
def registered_reward_model(plugin: Any, *, replace: bool = False) -> Iterator[RewardModelPlugin]:
    """Register ``plugin`` for the duration of a ``with`` block, then undo it exactly.

    A registration it replaced (``replace=True``) is put back on exit.

    Example::

        with rm_registry.registered_reward_model(MyPlugin()) as plugin:
            assert rm_registry.get_reward_model(plugin.name) is plugin
    """
    global _generation
    entry, previous = _register(plugin, replace=replace)
    try:
        yield entry.plugin
    finally:
        with _lock:
            if _registered.get(entry.name) is entry:
                if previous is not None:
                    _registered[entry.name] = previous
                else:
                    del _registered[entry.name]
                _generation += 1


def _snapshot() -> dict[str, Entry]:
    with _lock:
        return dict(_registered)


def _restore(registered: dict[str, Entry]) -> None:
    """Put the in-process registrations back and forget the scan (test isolation)."""
    global _generation
    with _lock:
        _registered.clear()
        _registered.update(registered)
        _generation += 1
    rescan()
