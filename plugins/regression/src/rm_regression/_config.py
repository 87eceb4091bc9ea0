"""The ``model.regression`` config section: defaults, and its validated, resolved form.

Nothing here imports torch: the registry and ``rm-registry info`` read the defaults cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from rm_registry import ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from omegaconf import DictConfig

__all__ = ["BT_LOSSES", "HELPSTEER_ATTRIBUTES", "LOSS_FUNCS", "SECTION", "STEERLM_ATTRIBUTES", "RegressionSettings",
           "default_config"]

#: The five HelpSteer attributes (0-4 scale), in NeMo-Aligner's SteerLM order. They are the
#: names used when neither ``attribute_names`` nor ``num_attributes`` is set, and the
#: attributes of the shipped sample data.
HELPSTEER_ATTRIBUTES: tuple[str, ...] = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")

#: NeMo-Aligner's SteerLM attribute order (9 attributes): the names when ``num_attributes=9``.
STEERLM_ATTRIBUTES: tuple[str, ...] = (
    "quality", "toxicity", "humor", "creativity", "helpfulness", "correctness", "coherence", "complexity", "verbosity",
)

#: ``model.regression.loss_func`` values (NeMo-Aligner's): masked MSE, or a Bradley-Terry loss on
#: HelpSteer2-Preference strength labels (see ``_bt.py``).
LOSS_FUNCS: tuple[str, ...] = ("regression", "regular_bt", "margin_bt", "scaled_bt")
BT_LOSSES: tuple[str, ...] = LOSS_FUNCS[1:]

#: The attribute whose output is the reward of the Bradley-Terry losses (helpfulness in SteerLM order).
BT_ATTRIBUTE_INDEX = 4

#: Where this plugin's keys live in the config tree.
SECTION = "model.regression"

# Characters that would make a name ambiguous in the SteerLM "name:value,name:value" label strings.
_FORBIDDEN_IN_NAMES = (",", ":")


def default_config() -> dict[str, Any]:
    """The plugin's config layer (merged over the engine defaults).

    ``model.regression`` holds the architecture's own keys; the engine overrides make
    ``rm-registry train regression`` on the shipped sample data learn all five attributes
    in one to four minutes on 2 shared CPU cores (see ``docs/regression.md``).
    """
    return {
        "model": {
            "regression": {
                # null: the five HelpSteer names, or attr_0 .. attr_{n-1} when num_attributes is set.
                "attribute_names": None,
                # NeMo-Aligner's key. null: the length of attribute_names. Both set: they must agree.
                "num_attributes": None,
                # null: uniform 1/K. The scalar reward is attributes . weights.
                "attribute_weights": None,
                # NeMo-Aligner: the served model outputs the weighted scalar [N, 1] instead of [N, K].
                "merge_attributes": False,
                # Label entries equal to this value are ignored by the loss and the metrics.
                "loss_mask_val": -100,
                # regression (masked MSE) | regular_bt | margin_bt | scaled_bt (HelpSteer2-Preference).
                "loss_func": "regression",
            },
            "optim": {"lr": 3.0e-3},
        },
        "trainer": {"rm": {"max_steps": 1000, "val_check_interval": 200, "save_interval": 500}},
    }


def _get(section: Any, key: str) -> Any:
    try:
        return section[key]
    except Exception:  # KeyError, omegaconf's ConfigKeyError / MissingMandatoryValue
        raise ConfigError(
            f"{SECTION}.{key} is missing; build the config with rm_registry.engine.config.build_config "
            "so that the regression plugin's defaults are merged in"
        ) from None


def _plain(value: Any) -> Any:
    """A ListConfig / DictConfig as a plain Python container; anything else unchanged."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency of the engine extra
        pass
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _names(raw_names: Any, raw_num: Any) -> tuple[str, ...]:
    if raw_num is not None and (not isinstance(raw_num, int) or isinstance(raw_num, bool) or raw_num < 1):
        raise ConfigError(f"{SECTION}.num_attributes={raw_num!r}: expected a positive whole number or null")
    if raw_names is None:
        if raw_num is None:
            return HELPSTEER_ATTRIBUTES
        if raw_num == len(STEERLM_ATTRIBUTES):
            return STEERLM_ATTRIBUTES
        return tuple(f"attr_{i}" for i in range(raw_num))
    if not isinstance(raw_names, (list, tuple)) or not raw_names:
        raise ConfigError(
            f"{SECTION}.attribute_names={raw_names!r}: expected a non-empty list of names, "
            "for example [helpfulness,correctness,verbosity]"
        )
    names: list[str] = []
    for i, name in enumerate(raw_names):
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{SECTION}.attribute_names[{i}]={name!r}: expected a non-empty string")
        if any(ch in name for ch in _FORBIDDEN_IN_NAMES):
            raise ConfigError(
                f"{SECTION}.attribute_names[{i}]={name!r}: names may not contain ',' or ':' "
                "(they separate entries of SteerLM label strings)"
            )
        if name.strip() in names:
            raise ConfigError(f"{SECTION}.attribute_names: {name.strip()!r} appears twice; names must be unique")
        names.append(name.strip())
    if raw_num is not None and raw_num != len(names):
        raise ConfigError(
            f"{SECTION}.num_attributes={raw_num} disagrees with {SECTION}.attribute_names, which has "
            f"{len(names)} names ({', '.join(names)}); set only one of them, or make them agree"
        )
    return tuple(names)


def _weights(raw: Any, k: int, names: tuple[str, ...], loss_func: str = "regression") -> tuple[float, ...]:
    if raw is None and loss_func in BT_LOSSES:  # the Bradley-Terry reward is the helpfulness output
        return tuple(1.0 if i == BT_ATTRIBUTE_INDEX else 0.0 for i in range(k))
    if raw is None:
        return tuple(1.0 / k for _ in range(k))
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"{SECTION}.attribute_weights={raw!r}: expected a list of {k} numbers or null")
    if len(raw) != k:
        raise ConfigError(
            f"{SECTION}.attribute_weights has {len(raw)} values {list(raw)} but there are {k} attributes "
            f"({', '.join(names)}); give one weight per attribute"
        )
    for i, w in enumerate(raw):
        if not _is_number(w) or not math.isfinite(w):
            raise ConfigError(f"{SECTION}.attribute_weights[{i}]={w!r} (attribute {names[i]!r}): expected a finite number")
    return tuple(float(w) for w in raw)


@dataclass(frozen=True)
class RegressionSettings:
    """The resolved ``model.regression`` section.

    Attributes:
        attribute_names: The K attribute names, in head-output order.
        attribute_weights: K weights; the scalar reward is ``sum_k weights[k] * attributes[k]``.
        merge_attributes: Whether :meth:`RegressionRewardModel.infer` returns the weighted
            scalar ``[N, 1]`` (NeMo-Aligner's served ``rewards``) instead of ``[N, K]``.
        loss_mask_val: Label value meaning "not labelled" (ignored by loss and metrics).
        loss_func: One of :data:`LOSS_FUNCS`.
    """

    attribute_names: tuple[str, ...]
    attribute_weights: tuple[float, ...]
    merge_attributes: bool
    loss_mask_val: float
    loss_func: str = "regression"

    @property
    def bradley_terry(self) -> bool:
        """Whether the loss is one of the Bradley-Terry variants (A/B pairs in consecutive rows)."""
        return self.loss_func in BT_LOSSES

    @property
    def num_attributes(self) -> int:
        """K, the number of head outputs."""
        return len(self.attribute_names)

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping[str, Any]) -> RegressionSettings:
        """Validate and resolve ``cfg.model.regression``.

        Raises:
            ConfigError: naming the offending key and value.
        """
        try:
            section = cfg["model"]["regression"]
        except Exception:
            raise ConfigError(
                f"{SECTION} is missing from the config; build it with rm_registry.engine.config.build_config "
                "so that the regression plugin's defaults are merged in"
            ) from None
        known = set(default_config()["model"]["regression"])
        unknown = sorted(set(section.keys()) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key {SECTION}.{unknown[0]}; the regression plugin accepts "
                f"{', '.join(sorted(known))}"
            )
        names = _names(_plain(_get(section, "attribute_names")), _plain(_get(section, "num_attributes")))
        loss_func = section.get("loss_func", "regression")  # absent in configs saved before it existed
        if loss_func not in LOSS_FUNCS:
            raise ConfigError(f"{SECTION}.loss_func={loss_func!r}: expected one of {', '.join(LOSS_FUNCS)}")
        at = names[BT_ATTRIBUTE_INDEX] if len(names) > BT_ATTRIBUTE_INDEX else None
        if loss_func in BT_LOSSES and at not in ("helpfulness", f"attr_{BT_ATTRIBUTE_INDEX}"):
            raise ConfigError(
                f"{SECTION}.loss_func={loss_func}: the reward is read at attribute {BT_ATTRIBUTE_INDEX} (helpfulness in "
                f"SteerLM order) but the attributes are {', '.join(names)}; set {SECTION}.num_attributes=9"
            )
        weights = _weights(_plain(_get(section, "attribute_weights")), len(names), names, loss_func)
        merge = _get(section, "merge_attributes")
        if not isinstance(merge, bool):
            raise ConfigError(f"{SECTION}.merge_attributes={merge!r}: expected true or false")
        mask = _get(section, "loss_mask_val")
        if not _is_number(mask) or not math.isfinite(mask):
            raise ConfigError(f"{SECTION}.loss_mask_val={mask!r}: expected a finite number (default -100)")
        return cls(
            attribute_names=names,
            attribute_weights=weights,
            merge_attributes=merge,
            loss_mask_val=float(mask),
            loss_func=str(loss_func),
        )
