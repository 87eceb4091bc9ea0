"""NeMo-Aligner compatibility: ``RewardModelType`` and ``REWARD_MODEL_CLASS_DICT``, now open.

NeMo-Aligner code such as::

    model_type = RewardModelType(cfg.model.reward_model_type)
    reward_model_cls = REWARD_MODEL_CLASS_DICT[model_type]

keeps working, fed by whatever plugins are installed or registered.

``RewardModelType`` is an :class:`enum.Enum` whose members are the known plugin names (member
``REGRESSION`` has value ``"regression"``). It is built on first access and rebuilt when the
set of known names changes (:func:`rm_registry.rescan`, in-process registration), so read it
as ``rm_registry.RewardModelType`` when that matters: an enum imported earlier keeps its old
members. :data:`REWARD_MODEL_CLASS_DICT` accepts members of any such enum (it looks at their
value) as well as plain names, so old members stay usable.
"""

from __future__ import annotations

import enum
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from . import _registry
from ._errors import PluginNotFoundError

__all__ = ["REWARD_MODEL_CLASS_DICT", "RewardModelType", "UnknownRewardModelType"]


class UnknownRewardModelType(PluginNotFoundError, ValueError):
    """``RewardModelType(value)`` for a name nothing provides (a ``ValueError``, as for any enum)."""


def _member_name(name: str) -> str:
    member = re.sub(r"\W", "_", name).upper()
    return f"_{member}" if member[:1].isdigit() else member


def _missing(cls: type[enum.Enum], value: object) -> Any:
    names = [member.value for member in cls]
    error = _registry.not_found_error(str(value))
    raise UnknownRewardModelType(
        f"{value!r} is not a valid RewardModelType: {error} (members: {', '.join(names) or 'none'})"
    )


_lock = threading.Lock()
_cached: tuple[int, type[enum.Enum]] | None = None


def _build() -> type[enum.Enum]:
    global _cached
    with _lock:
        # Names and generation must belong together: if a rescan or registration lands while
        # the names are read (the first listing itself scans), read them again.
        while True:
            generation = _registry.generation()
            if _cached is not None and _cached[0] == generation:
                return _cached[1]
            names = sorted({info.name for info in _registry.list_reward_models()})
            if _registry.generation() == generation:
                break
        members: dict[str, str] = {}
        for name in names:
            members.setdefault(_member_name(name), name)
        rm_type = enum.Enum(  # type: ignore[misc]
            "RewardModelType", list(members.items()), module="rm_registry"
        )
        rm_type._missing_ = classmethod(_missing)  # type: ignore[assignment]
        rm_type.__doc__ = "Reward-model architectures known to this process (built from plugins)."
        _cached = (generation, rm_type)
        return rm_type


def _value_of(key: object) -> str:
    if isinstance(key, enum.Enum):
        key = key.value
    if not isinstance(key, str):
        raise TypeError(
            f"REWARD_MODEL_CLASS_DICT keys are RewardModelType members or names (str), "
            f"not {type(key).__name__}"
        )
    return key


class _RewardModelClassDict(Mapping[Any, type]):
    """Read-only mapping from a ``RewardModelType`` member or a name to the plugin's ``model_class``.

    Looking a key up imports that plugin (and resolves its class, which may import torch);
    iterating, ``len`` and ``in`` import nothing. Unknown keys raise
    :class:`rm_registry.PluginNotFoundError` (a ``LookupError``) with a "did you mean".
    """

    def __getitem__(self, key: object) -> type:
        plugin = _registry.get_reward_model(_value_of(key))
        return plugin.model_class

    def __iter__(self) -> Iterator[Any]:
        return iter(_build())

    def __len__(self) -> int:
        return len(_build())

    def __contains__(self, key: object) -> bool:
        try:
            name = _value_of(key)
        except TypeError:
            return False
        return name in {info.name for info in _registry.list_reward_models()}

    def get(self, key: object, default: Any = None) -> Any:
        if key not in self:
            return default
        return self[key]

    def __repr__(self) -> str:
        return f"REWARD_MODEL_CLASS_DICT({', '.join(repr(m.value) for m in _build())})"


REWARD_MODEL_CLASS_DICT: Mapping[Any, type] = _RewardModelClassDict()


def __getattr__(name: str) -> Any:
    if name == "RewardModelType":
        return _build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
