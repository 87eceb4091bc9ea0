"""Which plugin distribution trained a checkpoint: recorded at save, checked at load.

Every checkpoint carries ``plugin.json``::

    {"name": "plackett_luce", "distribution": "rm-plackett-luce", "version": "0.3.0",
     "module": "rm_plackett_luce._plugin"}

Loading a checkpoint whose architecture is not installed then says what to install
(``pip install rm-plackett-luce==0.3.0``) instead of only "no reward model named ...", and a
different installed version of the same distribution gives a warning (the plugin's code, not the
weights, decides what the rewards mean). Nothing here imports torch.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._errors import PluginNotFoundError
from ..._registry import IN_PROCESS, get_reward_model
from .._contract import plugin_record

if TYPE_CHECKING:  # pragma: no cover
    from ..._protocol import RewardModelPlugin

__all__ = ["PLUGIN_FILE", "plugin_for_checkpoint", "plugin_record", "read_record", "warn_if_other_version"]

#: The file of a checkpoint folder that records the plugin distribution.
PLUGIN_FILE = "plugin.json"


def read_record(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's ``plugin.json``, or ``None`` for checkpoints saved before it existed."""
    path = Path(checkpoint) / PLUGIN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _install_hint(record: dict[str, Any]) -> str:
    dist, version = record.get("distribution"), record.get("version")
    if dist == IN_PROCESS or not dist:
        return (f"it was registered in-process from module {record.get('module')!r} when trained: import that "
                "module and register the plugin (rm_registry.register_reward_model) before loading")
    pinned = f"{dist}=={version}" if version else dist
    return f"it was trained with {dist} {version or ''}".rstrip() + f"; install it: pip install {pinned}"


def plugin_for_checkpoint(checkpoint: Path, name: str, *, distribution: str | None = None) -> RewardModelPlugin:
    """The installed plugin that can load ``checkpoint`` (architecture ``name``).

    Raises:
        PluginNotFoundError: ``name`` is not installed; says which distribution to install when
            the checkpoint records it.

    Warns:
        UserWarning: the installed distribution's version differs from the one that trained it.
    """
    record = read_record(checkpoint)
    try:
        plugin = get_reward_model(name, distribution=distribution)
    except PluginNotFoundError as exc:
        if record is None:
            raise
        raise PluginNotFoundError(f"{checkpoint}: architecture {name!r} is not available here ({exc}); "
                                  f"{_install_hint(record)}") from None
    warn_if_other_version(checkpoint, plugin)
    return plugin


def warn_if_other_version(checkpoint: Path, plugin: RewardModelPlugin) -> None:
    """Warn when ``plugin``'s installed version differs from the one that saved ``checkpoint``."""
    record = read_record(checkpoint)
    if record is None or record.get("distribution") in (None, IN_PROCESS):
        return
    now = plugin_record(plugin)
    if now["distribution"] == record["distribution"] and now["version"] != record.get("version"):
        warnings.warn(
            f"{checkpoint} was trained with {record['distribution']} {record.get('version')}, but "
            f"{now['version']} is installed; its rewards may differ if the plugin changed "
            f"(pip install {record['distribution']}=={record.get('version')} to use the same version)",
            UserWarning,
            stacklevel=3,
        )
