"""The megatron-core engine shared by every architecture (needs the ``[megatron]`` extra).

Importing this package is cheap; its names import torch and megatron-core when first used.
``import rm_registry`` imports none of it.

Plugins build on :class:`RewardModel` and the helpers in :mod:`rm_registry.engine.data`;
users train with :func:`train`, and load checkpoints with :func:`load_reward_model`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from . import _warnings

# Before any engine module imports megatron-core: silence its known-harmless warnings (only those).
_warnings.install()

# Public name -> submodule. Resolved on first access, so that importing a light submodule
# (``rm_registry.engine.data``, ``.config``) does not import megatron-core.
_EXPORTS = {
    "LoadedRewardModel": "api",
    "load_reward_model": "api",
    "score_file": "api",
    "CheckpointDamagedError": "checkpoint",
    "check_checkpoint": "checkpoint._safe_pickle",
    "safe_torch_load": "checkpoint._safe_pickle",
    "find_latest": "checkpoint",
    "is_complete": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "verify_checkpoint": "checkpoint",
    "build_config": "config",
    "RewardModel": "model",
    "ParallelInfo": "parallel",
    "initialize": "parallel",
    "ByteTokenizer": "tokenizer",
    "HFTokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "TrainResult": "trainer",
    "evaluate_dataset": "evaluation",
    "train": "trainer",
}

__all__ = [
    "ByteTokenizer",
    "CheckpointDamagedError",
    "HFTokenizer",
    "LoadedRewardModel",
    "ParallelInfo",
    "RewardModel",
    "TrainResult",
    "build_config",
    "check_checkpoint",
    "evaluate_dataset",
    "find_latest",
    "initialize",
    "is_complete",
    "load_checkpoint",
    "load_reward_model",
    "load_tokenizer",
    "safe_torch_load",
    "save_checkpoint",
    "score_file",
    "train",
    "verify_checkpoint",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rm_registry.engine' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
