"""Conformance kit for plugin authors: call these from your own test suite.

    from rm_registry.testing import check_plugin

    def test_conformance():
        check_plugin(my_plugin)          # protocol, then behaviour when [megatron] is installed

:func:`check_protocol` needs nothing but the core. :func:`check_plugin` adds the behaviour checks
of ``rm_registry.engine._conformance`` (build, forward, loss, backward, checkpoint round trip)
when the ``[megatron]`` extra is installed.

:func:`fake_distribution` writes a real ``*.dist-info`` folder, for testing discovery cases
(broken, duplicate, disabled plugins) without installing anything.
"""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._errors import PluginValidationError
from ._registry import ENTRY_POINT_GROUP, protocol_problems

__all__ = ["ConformanceError", "check_plugin", "check_protocol", "fake_distribution"]


class ConformanceError(PluginValidationError, AssertionError):
    """A plugin failed a conformance check. Both our validation error and an ``AssertionError``."""


def _plugin_object(plugin: Any) -> Any:
    return plugin() if isinstance(plugin, type) else plugin


def check_protocol(plugin: Any) -> None:
    """Check ``plugin`` against :class:`rm_registry.RewardModelPlugin`, listing every problem.

    Beyond what the registry checks on load (members present, methods callable with the
    protocol's arguments, ``name``/``description`` non-empty strings), this calls the two cheap
    methods: ``default_config()`` must return a JSON-serialisable mapping, ``sample_data()`` a
    mapping of split name to an existing file. ``model_class`` is not resolved here.

    Args:
        plugin: The plugin object (a class is instantiated without arguments).

    Raises:
        ConformanceError: With one line per problem.
    """
    plugin = _plugin_object(plugin)
    problems = protocol_problems(plugin)
    if not any(p.startswith("missing") and "default_config" in p for p in problems):
        problems.extend(_default_config_problems(plugin))
    if not any(p.startswith("missing") and "sample_data" in p for p in problems):
        problems.extend(_sample_data_problems(plugin))
    if problems:
        label = getattr(plugin, "name", type(plugin).__name__)
        raise ConformanceError(
            f"plugin {label!r} does not conform to RewardModelPlugin:\n"
            + "\n".join(f"  - {problem}" for problem in problems)
        )


def _default_config_problems(plugin: Any) -> list[str]:
    try:
        defaults = plugin.default_config()
    except Exception as exc:
        return [f"default_config() raised {type(exc).__name__}: {exc}"]
    if not isinstance(defaults, Mapping):
        return [f"default_config() must return a dict, got {type(defaults).__name__}"]
    try:
        json.dumps(defaults)
    except (TypeError, ValueError) as exc:
        return [f"default_config() must be JSON-serialisable (plain values only): {exc}"]
    return []


def _sample_data_problems(plugin: Any) -> list[str]:
    try:
        samples = plugin.sample_data()
    except Exception as exc:
        return [f"sample_data() raised {type(exc).__name__}: {exc}"]
    if not isinstance(samples, Mapping):
        return [f"sample_data() must return a mapping of split to path, got {type(samples).__name__}"]
    return [
        f"sample_data()[{split!r}] = {str(path)!r} is not an existing file"
        for split, path in samples.items()
        if not Path(path).is_file()
    ]


def _megatron_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "megatron"))


def check_plugin(plugin: Any, *, behaviour: bool = True) -> None:
    """Run every conformance check that the installed extras allow.

    1. :func:`check_protocol`.
    2. If ``behaviour`` and the ``[megatron]`` extra is installed: ``model_class`` resolves to a
       class with ``from_config``, then ``rm_registry.engine._conformance.check_behaviour``
       (build, forward, loss, backward, checkpoint and Hugging Face export round trips on a tiny
       CPU model). When the extra or that module is missing, the behaviour part is skipped with a
       warning.

    Raises:
        ConformanceError: A check failed; the message lists what is wrong.
    """
    plugin = _plugin_object(plugin)
    check_protocol(plugin)
    if not behaviour:
        return
    if not _megatron_installed():
        warnings.warn(
            "rm-registry: behaviour checks skipped: the [megatron] extra (torch, megatron-core) "
            "is not installed; `pip install 'rm-registry[megatron]'` to run them",
            UserWarning,
            stacklevel=2,
        )
        return
    try:
        model_class = plugin.model_class
    except Exception as exc:
        raise ConformanceError(
            f"plugin {plugin.name!r}: resolving model_class raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model_class, type) or not callable(getattr(model_class, "from_config", None)):
        raise ConformanceError(
            f"plugin {plugin.name!r}: model_class must be a class with a from_config(cfg, *, "
            f"vocab_size) constructor, got {model_class!r}"
        )
    try:
        from .engine._conformance import check_behaviour
    except ImportError as exc:
        warnings.warn(
            f"rm-registry: behaviour checks skipped: rm_registry.engine._conformance is not "
            f"available ({exc})",
            UserWarning,
            stacklevel=2,
        )
        return
    check_behaviour(plugin)


def _dist_folder_name(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name)


def fake_distribution(
    tmp_path: str | Path,
    name: str,
    version: str,
    entry_points: Mapping[str, str | Mapping[str, str]],
    modules: Mapping[str, str] | None = None,
) -> Path:
    """Write an installed-looking distribution into ``tmp_path``; put that folder on ``sys.path``.

    Args:
        tmp_path: Folder to write into (several distributions may share it).
        name: Distribution name, e.g. ``"rm-my-plugin"``.
        version: Its version.
        entry_points: ``{"entry_name": "module:attr"}`` goes to the ``reward_models`` group;
            a mapping value declares another group: ``{"rm_registry_hooks": {"x": "mod"}}``.
        modules: ``{"module_name": source}`` (or ``{"pkg/__init__.py": source}``) files to write.

    Returns:
        ``tmp_path``, for ``sys.path.insert(0, ...)`` followed by :func:`rm_registry.rescan`.

    Example::

        site = fake_distribution(tmp_path, "rm-broken", "1.0", {"broken": "rm_broken:plugin"},
                                 {"rm_broken": "raise ImportError('no')"})
        monkeypatch.syspath_prepend(site); rm_registry.rescan()
    """
    root = Path(tmp_path)
    dist_info = root / f"{_dist_folder_name(name)}-{version}.dist-info"
    dist_info.mkdir(parents=True, exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        f"Summary: Fake distribution {name} written by rm_registry.testing\n",
        encoding="utf-8",
    )
    groups: dict[str, dict[str, str]] = {}
    for key, value in entry_points.items():
        if isinstance(value, Mapping):
            groups.setdefault(key, {}).update(value)
        else:
            groups.setdefault(ENTRY_POINT_GROUP, {})[key] = value
    lines = []
    for group, items in groups.items():
        lines.append(f"[{group}]")
        lines.extend(f"{ep_name} = {ep_value}" for ep_name, ep_value in items.items())
        lines.append("")
    (dist_info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    (dist_info / "INSTALLER").write_text("rm_registry.testing\n", encoding="utf-8")
    for module, source in (modules or {}).items():
        relative = module if module.endswith(".py") else module.replace(".", "/") + ".py"
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    return root
