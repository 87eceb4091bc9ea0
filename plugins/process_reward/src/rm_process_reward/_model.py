"""The model class of the ``process_reward`` plugin: the engine's reward model read at every step.

Importing this module imports torch and megatron-core; the plugin object resolves it lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from rm_registry.engine.model import RewardModel

from ._config import ProcessRewardSettings

if TYPE_CHECKING:  # pragma: no cover
    from omegaconf import DictConfig

__all__ = ["ProcessRewardModel"]


class ProcessRewardModel(RewardModel):
    """A megatron-core GPT backbone whose head is read at the last token of each step.

    ``forward(tokens [N, S], lengths [N], positions [M, 2]) -> [M, K]``: K = 2 class logits
    (``model.process_reward.loss=ce``, class 1 = the step is correct) or 1 logit (``bce``).
    """

    @classmethod
    def from_config(  # type: ignore[override]
        cls, cfg: DictConfig | Mapping[str, Any], *, vocab_size: int
    ) -> ProcessRewardModel:
        """Build from the merged config, with the head width the loss needs.

        Args:
            cfg: The merged config (``model.*`` backbone keys, ``model.process_reward.loss``).
            vocab_size: The tokenizer's vocabulary size.
        """
        k = ProcessRewardSettings.from_config(cfg).num_outputs
        return super().from_config(cfg, vocab_size=vocab_size, num_outputs=k)  # type: ignore[arg-type]
