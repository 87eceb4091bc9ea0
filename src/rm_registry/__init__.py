"""rm-registry: an open registry of reward-model architectures for RLHF.

Architectures are separate distributions that register under the ``reward_models``
entry-point group; they are discovered on first use and imported only when asked for.
Importing this package never imports torch nor any plugin.

    >>> import rm_registry
    >>> [p.name for p in rm_registry.list_reward_models()]   # doctest: +SKIP
    ['binary_ranking', 'regression']
    >>> plugin = rm_registry.get_reward_model("regression")   # doctest: +SKIP

The engine (training, evaluation, checkpoints, scoring) is ``rm_registry.engine`` and needs
the ``[megatron]`` extra.
"""

from __future__ import annotations

from typing import Any

from ._errors import (
    ConfigError,
    DataError,
    PluginConflictError,
    PluginDisabledError,
    PluginLoadError,
    PluginNotFoundError,
    PluginValidationError,
    RMRegistryError,
    StorageError,
    TrainingError,
    UnsafeCheckpointError,
)
from ._hooks import register_hooks, unregister_hooks
from ._protocol import PluginInfo, RewardModelPlugin, Tokenizer
from ._registry import (
    ENTRY_POINT_GROUP,
    get_reward_model,
    list_reward_models,
    register_reward_model,
    registered_reward_model,
    rescan,
    unregister_reward_model,
)
from ._version import __version__

__all__ = [
    "ENTRY_POINT_GROUP",
    "REWARD_MODEL_CLASS_DICT",
    "ConfigError",
    "DataError",
    "PluginConflictError",
    "PluginDisabledError",
    "PluginInfo",
    "PluginLoadError",
    "PluginNotFoundError",
    "PluginValidationError",
    "RMRegistryError",
    "RewardModelPlugin",
    "RewardModelType",
    "StorageError",
    "Tokenizer",
    "TrainingError",
    "UnsafeCheckpointError",
    "__version__",
    "get_reward_model",
    "hookimpl",
    "hookspec",
    "list_reward_models",
    "register_hooks",
    "register_reward_model",
    "registered_reward_model",
    "rescan",
    "unregister_hooks",
    "unregister_reward_model",
]


def __getattr__(name: str) -> Any:
    # The pluggy markers are made on first access (importing pluggy), not on import.
    if name in ("hookimpl", "hookspec"):
        from . import _hooks

        return getattr(_hooks, name)
    # NeMo-Aligner compatibility names are built from the discovered plugins on first access,
    # so that importing rm_registry scans nothing.
    if name in ("RewardModelType", "REWARD_MODEL_CLASS_DICT"):
        from . import _compat

        return getattr(_compat, name)
    raise AttributeError(f"module 'rm_registry' has no attribute {name!r}")
