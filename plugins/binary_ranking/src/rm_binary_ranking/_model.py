"""The model class of the ``binary_ranking`` plugin: the engine's reward model with one output.

Importing this module imports torch and megatron-core; the plugin object resolves it lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from rm_registry.engine.model import RewardModel

if TYPE_CHECKING:  # pragma: no cover
    from omegaconf import DictConfig

__all__ = ["BinaryRankingRewardModel"]


class BinaryRankingRewardModel(RewardModel):
    """A megatron-core GPT backbone with a scalar reward head (Bradley-Terry).

    ``forward(tokens [N, S], lengths [N]) -> rewards [N, 1]``.
    """

    @classmethod
    def from_config(  # type: ignore[override]
        cls, cfg: DictConfig | Mapping[str, Any], *, vocab_size: int
    ) -> BinaryRankingRewardModel:
        """Build from the merged config with one reward output.

        Args:
            cfg: The merged config (``model.*`` backbone keys).
            vocab_size: The tokenizer's vocabulary size.
        """
        return super().from_config(cfg, vocab_size=vocab_size, num_outputs=1)
