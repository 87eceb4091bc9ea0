"""The ``model.process_reward`` config section: defaults, and its validated form.

Nothing here imports torch: the registry and ``rm-registry info`` read the defaults cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from rm_registry import ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from omegaconf import DictConfig

__all__ = ["AGGREGATES", "LOSSES", "SECTION", "ProcessRewardSettings", "default_config"]

#: Where this plugin's keys live in the config tree.
SECTION = "model.process_reward"

#: ``model.process_reward.loss``: ``ce`` (two classes, TRL's ``num_labels=2``; soft labels as
#: probability targets) or ``bce`` (one logit, binary cross-entropy; OpenRLHF's soft labels).
LOSSES = ("ce", "bce")

#: ``model.process_reward.aggregate``: how ``score`` and ``serve`` make one reward of the step
#: rewards: the lowest step (``min``, the usual choice for best-of-N), the last step, their
#: product, or their mean.
AGGREGATES = ("min", "last", "prod", "mean")

#: ``model.process_reward`` defaults, with the reason for each.
DEFAULTS: dict[str, Any] = {
    # TRL's format: appended to every step; the label sits on its last token (TRL's default "\n").
    "step_separator": "\n",
    # The placeholder format: the tag after each step of one text (Math-Shepherd's "ки").
    "step_tag": "ки",
    # The placeholder format's keys (OpenRLHF's Math-Shepherd example: --input_key input --label_key value).
    "input_key": "input",
    "label_key": "value",
    # Label strings of the placeholder format (Math-Shepherd's reward tokens).
    "positive_label": "+",
    "negative_label": "-",
    "loss": "ce",
    # TRL's train_on_last_step_only: training reads only each solution's last step; evaluation all steps.
    "train_on_last_step_only": False,
    # TRL's max_prompt_length: the prompt's last tokens kept (null: the whole prompt).
    "max_prompt_length": None,
    "aggregate": "min",
    # A step counts as predicted correct when its reward (the positive class's probability) >= this.
    "threshold": 0.5,
}


def default_config() -> dict[str, Any]:
    """The plugin's config layer (merged over the engine defaults).

    ``model.process_reward`` holds the architecture's own keys; the engine overrides make
    ``rm-registry train process_reward`` on the shipped sample data learn in a few minutes on
    2 CPU cores (see ``docs/process_reward.md``).

    ``trainer.rm.length_group_batches=2``: steps still group solutions of similar length (little
    padding), but each length-sorted group is only two steps wide. The engine's 50 makes every
    step's solutions nearly the same length; with first-error labels a solution's length says much
    about its labels, and such steps cost step accuracy (benchmarks/bench_prm_vs_trl.py, seed 1:
    0.811 at 50, 0.860 at 4, 0.879 at 2, 0.865 without grouping, at 24% padding).
    """
    return {
        "model": {
            "process_reward": dict(DEFAULTS),
            "encoder_seq_length": 192,
            "micro_batch_size": 16,
            "global_batch_size": 16,
            "optim": {"lr": 2.0e-3},
        },
        "trainer": {"rm": {"max_steps": 600, "val_check_interval": 200, "save_interval": 600,
                           "length_group_batches": 2}},
    }


def config_types() -> dict[str, Any]:
    """Types of the keys whose default is ``null``."""
    return {f"{SECTION}.max_prompt_length": int}


@dataclass(frozen=True)
class ProcessRewardSettings:
    """``model.process_reward``, validated on construction (:meth:`from_config`).

    Attributes: as :data:`DEFAULTS` describes them.
    """

    step_separator: str = DEFAULTS["step_separator"]
    step_tag: str = DEFAULTS["step_tag"]
    input_key: str = DEFAULTS["input_key"]
    label_key: str = DEFAULTS["label_key"]
    positive_label: str = DEFAULTS["positive_label"]
    negative_label: str = DEFAULTS["negative_label"]
    loss: str = DEFAULTS["loss"]
    train_on_last_step_only: bool = DEFAULTS["train_on_last_step_only"]
    max_prompt_length: int | None = DEFAULTS["max_prompt_length"]
    aggregate: str = DEFAULTS["aggregate"]
    threshold: float = DEFAULTS["threshold"]

    def __post_init__(self) -> None:
        for key in ("step_separator", "step_tag", "input_key", "label_key", "positive_label", "negative_label"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{SECTION}.{key}={value!r}: expected a non-empty string")
        if self.positive_label == self.negative_label:
            raise ConfigError(f"{SECTION}.positive_label and negative_label are both {self.positive_label!r}; "
                              "they must differ")
        if self.input_key == self.label_key:
            raise ConfigError(f"{SECTION}.input_key and label_key are both {self.input_key!r}; they must differ")
        if self.loss not in LOSSES:
            raise ConfigError(f"{SECTION}.loss={self.loss!r}: expected one of {', '.join(LOSSES)} "
                              "(ce: two classes as TRL; bce: one logit)")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"{SECTION}.aggregate={self.aggregate!r}: expected one of {', '.join(AGGREGATES)}")
        if not isinstance(self.train_on_last_step_only, bool):
            raise ConfigError(f"{SECTION}.train_on_last_step_only={self.train_on_last_step_only!r}: "
                              "expected true or false")
        m = self.max_prompt_length
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ConfigError(f"{SECTION}.max_prompt_length={m!r}: expected a whole number >= 1, or null")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 < t < 1:
            raise ConfigError(f"{SECTION}.threshold={t!r}: expected a number strictly between 0 and 1")

    @property
    def num_outputs(self) -> int:
        """K of the head: 2 classes for ``ce``, one logit for ``bce``."""
        return 2 if self.loss == "ce" else 1

    @classmethod
    def from_config(cls, cfg: DictConfig | Mapping[str, Any]) -> ProcessRewardSettings:
        """The validated section of the merged config (a missing section means the defaults).

        Raises:
            ConfigError: an unknown key, or a value out of range, naming the key.
        """
        model = cfg.get("model") if hasattr(cfg, "get") else None
        own = model.get("process_reward") if model is not None and hasattr(model, "get") else None
        if own is None:
            return cls()
        if not hasattr(own, "keys"):
            raise ConfigError(f"{SECTION}={own!r}: expected a mapping of the keys {', '.join(DEFAULTS)}")
        unknown = [str(k) for k in own.keys() if k not in DEFAULTS]
        if unknown:
            raise ConfigError(f"{SECTION}.{unknown[0]}: unknown key; the process_reward keys are {', '.join(DEFAULTS)}")
        return cls(**{str(k): own[k] for k in own.keys()})


def validate_config(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Check ``model.process_reward`` and the engine keys this architecture depends on.

    Raises:
        ConfigError: naming the key, the value and what is expected.
    """
    ProcessRewardSettings.from_config(cfg)
    model = cfg.get("model") if hasattr(cfg, "get") else None
    if model is not None and hasattr(model, "get"):
        if model.get("output_sequence", False):
            raise ConfigError("model.output_sequence=true: process_reward reads its head at the end of each step "
                              "already; set model.output_sequence=false")
        if model.get("use_avg_pool", False):
            raise ConfigError("model.use_avg_pool=true: process_reward reads its head at the end of each step; "
                              "set model.use_avg_pool=false")
