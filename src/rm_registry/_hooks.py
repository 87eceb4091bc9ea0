"""Cross-cutting hooks (pluggy), separate from the loading of architectures.

Hook implementations come from two places:

* installed distributions, through the ``rm_registry_hooks`` entry-point group (the value is a
  module or object carrying ``@hookimpl`` functions). They are imported lazily, the first time a
  hook is called, each one in isolation: an implementation that fails to import or does not
  match the hook specifications is skipped with a warning naming its distribution and entry
  point. ``RM_REGISTRY_DISABLE`` applies to them as to reward models (entry-point name or
  distribution name);
* the running process, through :func:`register_hooks` / :func:`unregister_hooks`.

Hooks are called one implementation at a time (last registered first, as pluggy does), so that
a failing implementation can be named and isolated:

* ``rm_registry_plugin_loaded``: an exception is turned into a warning;
* ``rm_registry_allow_plugin``: a plugin is refused when any implementation returns ``False``
  (``True`` and ``None`` never override another's ``False``); an implementation that raises
  refuses too (an allow-list policy fails closed), and the refusal says so;
* ``rm_registry_add_commands``: an exception is turned into a warning, the CLI keeps working.

Hook wrappers (``wrapper=True`` / ``hookwrapper=True``) are not supported and are skipped with a
warning.

pluggy itself is imported only when there is something for it to do: a hook implementation is
installed (and not disabled), one is registered in-process, or :data:`hookimpl` / :data:`hookspec`
is asked for. Without hook implementations, calling a hook costs one look at the entry-point scan,
so ``rm-registry list`` does not pay for importing pluggy.
"""

from __future__ import annotations

import threading
import warnings
from typing import TYPE_CHECKING, Any, Callable

from . import _discovery
from ._discovery import HOOKS_ENTRY_POINT_GROUP
from ._errors import PluginValidationError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import argparse

    import pluggy

    from ._protocol import PluginInfo, RewardModelPlugin

__all__ = [
    "HOOKS_ENTRY_POINT_GROUP",
    "PROJECT_NAME",
    "HookSpecs",
    "hookimpl",
    "hookspec",
    "register_hooks",
    "unregister_hooks",
]

#: pluggy project name: implementations are marked with ``pluggy.HookimplMarker("rm_registry")``.
PROJECT_NAME = "rm_registry"

#: The names of the hooks (the methods of :class:`HookSpecs`).
_SPEC_NAMES = frozenset({"rm_registry_plugin_loaded", "rm_registry_allow_plugin", "rm_registry_add_commands"})


def __getattr__(name: str) -> Any:
    # ``hookspec``, ``hookimpl`` and the marked ``HookSpecs`` are made on first access, so that
    # importing rm_registry does not import pluggy.
    if name in ("hookspec", "hookimpl", "HookSpecs"):
        _markers()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _markers() -> None:
    """Import pluggy, define ``hookspec`` and ``hookimpl`` and mark the :class:`HookSpecs` methods."""
    global hookspec, hookimpl, HookSpecs
    with _lock:
        if "HookSpecs" in globals():
            return
        import pluggy

        spec = pluggy.HookspecMarker(PROJECT_NAME)
        for hook_name in _SPEC_NAMES:
            spec(getattr(_HookSpecs, hook_name))  # sets the marker attribute on the function
        hookspec = spec
        hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
        HookSpecs = _HookSpecs


class _HookSpecs:
    """The hooks rm-registry calls. Implement any subset, as functions marked ``@hookimpl``.

    (Public as ``HookSpecs``, with the pluggy ``hookspec`` markers applied on first access.)
    """

    def rm_registry_plugin_loaded(self, plugin: RewardModelPlugin, info: PluginInfo) -> None:
        """Called once per plugin, after it was imported and validated (or registered in-process).

        Args:
            plugin: The validated plugin object, the one :func:`get_reward_model` returns.
            info: Its registry row; ``status`` is ``loaded`` (or ``registered``).
        """

    def rm_registry_allow_plugin(self, info: PluginInfo) -> bool | None:
        """Decide whether an installed plugin may be imported. Called before the import.

        Return ``False`` to refuse it (it is then listed as ``disabled`` and asking for it raises
        :class:`rm_registry.PluginDisabledError` naming this hook), ``True`` or ``None`` to
        leave the decision to others. Also called by :func:`list_reward_models`, so keep it
        cheap and free of side effects.
        """

    def rm_registry_add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        """Add subcommands to the ``rm-registry`` command line.

        Each new subparser must call ``set_defaults(func=handler)`` where ``handler(args) -> int``
        returns the exit code (0 success, 1 failure, 2 bad input).
        """


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
#: The entry-point scan the installed implementations were loaded from (a rescan makes a new one).
_loaded_from: _discovery.Scan | None = None
#: pluggy names of the implementations loaded from entry points -> description for messages.
_from_entry_points: dict[str, str] = {}
assert _SPEC_NAMES == {name for name in vars(_HookSpecs) if name.startswith("rm_registry_")}


def _bare_manager() -> pluggy.PluginManager:
    global _pm
    with _lock:
        if _pm is None:
            import pluggy

            _markers()
            pm = pluggy.PluginManager(PROJECT_NAME)
            pm.add_hookspecs(_HookSpecs)
            _pm = pm
        return _pm


def _wanted_entry_points() -> dict[str, Any]:
    """The installed hook implementations to load (``RM_REGISTRY_DISABLE`` applied), by pluggy name."""
    return {
        f"{entry.distribution}:{entry.name}": entry
        for entry in _discovery.hook_entries()
        if _discovery.env_disabled(entry) is None
    }


def _manager() -> pluggy.PluginManager:
    """The plugin manager, with the installed hook implementations of the current scan loaded
    (once per scan: after :func:`rm_registry.rescan` they are read again)."""
    global _loaded_from
    pm = _bare_manager()
    scan = _discovery.current_scan()
    if _loaded_from is scan:
        return pm
    with _lock:
        if _loaded_from is not scan:
            # Set first: a hook module calling back into the registry while it is imported must
            # not start the loading again.
            _loaded_from = scan
            _load_entry_point_hooks(pm)
    return pm


def _load_entry_point_hooks(pm: pluggy.PluginManager) -> None:
    wanted = _wanted_entry_points()
    # Forget implementations whose distribution went away or was disabled since (rescan).
    for key in list(_from_entry_points):
        if key not in wanted:
            plugin = pm.get_plugin(key)
            if plugin is not None:
                pm.unregister(plugin)
            del _from_entry_points[key]
    for key, entry in wanted.items():
        if pm.get_plugin(key) is not None:
            continue
        where = (
            f"entry point {entry.name} = {entry.value} (group {HOOKS_ENTRY_POINT_GROUP}) "
            f"of distribution {entry.distribution} {entry.version}"
        )
        advice = f"Fix or uninstall it, or set RM_REGISTRY_DISABLE={entry.distribution} to skip it."
        try:
            obj = entry.ep.load()
            pm.register(obj, name=key)
        except Exception as exc:  # isolate: one broken hook distribution never breaks the rest
            warnings.warn(
                f"rm-registry: skipping hook implementation {where}: "
                f"{type(exc).__name__}: {exc}. {advice}",
                UserWarning,
                stacklevel=3,
            )
            continue
        unknown = _unknown_hooks(pm, obj)
        if unknown:
            pm.unregister(obj)
            warnings.warn(
                f"rm-registry: skipping hook implementation {where}: it implements unknown "
                f"hook(s) {', '.join(unknown)}; known hooks are {', '.join(sorted(_SPEC_NAMES))}. "
                f"{advice}",
                UserWarning,
                stacklevel=3,
            )
            continue
        _from_entry_points[key] = where


def _unknown_hooks(pm: pluggy.PluginManager, obj: object) -> list[str]:
    return sorted(
        caller.name
        for caller in (pm.get_hookcallers(obj) or [])
        if caller.name not in _SPEC_NAMES
    )


def register_hooks(obj: object, name: str | None = None) -> str:
    """Register hook implementations from ``obj`` (a module, class or instance) in this process.

    Args:
        obj: Carries functions marked with :data:`hookimpl`.
        name: Name used in messages and by :func:`unregister_hooks`; pluggy picks one if omitted.

    Returns:
        The registered name.

    Raises:
        rm_registry.PluginValidationError: ``obj`` is already registered, implements an unknown
            hook, or a hook function takes an argument the hook does not provide.
    """
    pm = _bare_manager()
    with _lock:
        from pluggy import PluginValidationError as PluggyValidationError

        try:
            registered = pm.register(obj, name=name)
        except (ValueError, PluggyValidationError) as exc:
            raise PluginValidationError(f"cannot register hooks from {obj!r}: {exc}") from exc
        if registered is None:  # pluggy returns None for a blocked name
            raise PluginValidationError(f"cannot register hooks from {obj!r}: name {name!r} is blocked")
        unknown = _unknown_hooks(pm, obj)
        if unknown:
            pm.unregister(obj)
            raise PluginValidationError(
                f"cannot register hooks from {obj!r}: unknown hook(s) {', '.join(unknown)}; "
                f"known hooks are {', '.join(sorted(_SPEC_NAMES))}"
            )
        return registered


def unregister_hooks(obj: object) -> None:
    """Remove hook implementations registered with :func:`register_hooks` (object or name)."""
    with _lock:
        if _pm is None:  # nothing was ever registered: no need to import pluggy to say so
            raise LookupError(f"no hook implementations registered as {obj!r}")
        pm = _pm
        plugin = pm.get_plugin(obj) if isinstance(obj, str) else obj
        if plugin is None or not pm.is_registered(plugin):
            raise LookupError(f"no hook implementations registered as {obj!r}")
        pm.unregister(plugin)


def _describe(impl: pluggy.HookImpl) -> str:
    where = _from_entry_points.get(impl.plugin_name)
    if where is not None:
        return where
    plugin = impl.plugin
    label = impl.plugin_name
    if label == str(id(plugin)):  # pluggy's default name: say something readable instead
        label = getattr(plugin, "__name__", None) or type(plugin).__qualname__
    return f"in-process hooks {label!r}"


def _impls(hook_name: str) -> list[pluggy.HookImpl]:
    """Implementations of ``hook_name`` in call order (last registered first), wrappers skipped."""
    if _pm is None and not _wanted_entry_points():
        return []  # no implementation anywhere: skip importing pluggy
    caller = getattr(_manager().hook, hook_name)
    impls = []
    for impl in reversed(caller.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            warnings.warn(
                f"rm-registry: hook wrappers are not supported; skipping {hook_name} of "
                f"{_describe(impl)}",
                UserWarning,
                stacklevel=3,
            )
            continue
        impls.append(impl)
    return impls


def _call(impl: pluggy.HookImpl, **kwargs: Any) -> Any:
    function: Callable[..., Any] = impl.function
    return function(*[kwargs[arg] for arg in impl.argnames])


def call_plugin_loaded(plugin: object, info: PluginInfo) -> None:
    """Call ``rm_registry_plugin_loaded``; a failing implementation is only warned about."""
    for impl in _impls("rm_registry_plugin_loaded"):
        try:
            _call(impl, plugin=plugin, info=info)
        except Exception as exc:
            warnings.warn(
                f"rm-registry: the rm_registry_plugin_loaded hook of {_describe(impl)} raised "
                f"{type(exc).__name__}: {exc} (for plugin {info.name!r}); ignored",
                UserWarning,
                stacklevel=3,
            )


def refusal(info: PluginInfo) -> str | None:
    """Ask ``rm_registry_allow_plugin``: ``None`` when allowed, else why it was refused."""
    for impl in _impls("rm_registry_allow_plugin"):
        try:
            verdict = _call(impl, info=info)
        except Exception as exc:
            return (
                f"the rm_registry_allow_plugin hook of {_describe(impl)} raised "
                f"{type(exc).__name__}: {exc}, so the plugin is refused (the policy fails closed)"
            )
        if verdict is False:
            return f"refused by the rm_registry_allow_plugin hook of {_describe(impl)}"
    return None


def call_add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Call ``rm_registry_add_commands``; a failing implementation is warned about and skipped."""
    for impl in _impls("rm_registry_add_commands"):
        try:
            _call(impl, subparsers=subparsers)
        except Exception as exc:
            warnings.warn(
                f"rm-registry: the rm_registry_add_commands hook of {_describe(impl)} raised "
                f"{type(exc).__name__}: {exc}; its commands are not available",
                UserWarning,
                stacklevel=3,
            )


def _snapshot() -> tuple[list[tuple[object, str | None]], bool]:
    """In-process registrations, for tests that must restore the state they found."""
    with _lock:
        if _pm is None:
            return [], False
        own = [
            (plugin, _pm.get_name(plugin))
            for plugin in _pm.get_plugins()
            if _pm.get_name(plugin) not in _from_entry_points
        ]
        return own, True


def _restore(snapshot: tuple[list[tuple[object, str | None]], bool]) -> None:
    global _pm, _loaded_from
    own, _ = snapshot
    with _lock:
        _pm = None
        _loaded_from = None
        _from_entry_points.clear()
        if own:
            pm = _bare_manager()
            for plugin, name in own:
                pm.register(plugin, name=name)
