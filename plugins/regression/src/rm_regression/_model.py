"""The regression reward model: the engine's :class:`RewardModel` with a K-wide head.

Imports torch and megatron-core; :attr:`rm_regression.plugin.model_class` imports this module
on first access only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from rm_registry import ConfigError
from rm_registry.engine.model import RewardModel

from ._config import RegressionSettings

if TYPE_CHECKING:  # pragma: no cover - typing only
    from omegaconf import DictConfig

__all__ = ["RegressionRewardModel"]


class RegressionRewardModel(RewardModel):
    """GPT backbone + pooling + a head with one output per attribute.

    ``forward(tokens [N, S], lengths [N]) -> [N, K]`` (what training, ``evaluate`` and
    ``score`` use). :meth:`infer` follows ``model.regression.merge_attributes`` like
    NeMo-Aligner's served model: ``[N, 1]`` weighted scalar when true, ``[N, K]`` otherwise.

    Attributes:
        attribute_names: The K names, in output order.
        merge_attributes: The config flag read by :meth:`infer`.
        attribute_weights: float32 buffer ``[K]`` (not saved in checkpoints: it comes from the
            config stored beside them).
    """

    attribute_names: tuple[str, ...]
    merge_attributes: bool
    attribute_weights: torch.Tensor

    @classmethod
    def from_config(  # type: ignore[override]
        cls, cfg: DictConfig, *, vocab_size: int, num_outputs: int | None = None
    ) -> RegressionRewardModel:
        """Build from the merged config; K is the number of ``model.regression`` attributes.

        Args:
            cfg: The merged config tree.
            vocab_size: The tokenizer's vocabulary size.
            num_outputs: Optional; when given it must equal K.

        Raises:
            ConfigError: naming the offending key and value.
        """
        settings = RegressionSettings.from_config(cfg)
        k = settings.num_attributes
        if num_outputs is not None and num_outputs != k:
            raise ConfigError(
                f"num_outputs={num_outputs} but model.regression has {k} attributes "
                f"({', '.join(settings.attribute_names)}); the head width is the number of attributes"
            )
        model = super().from_config(cfg, vocab_size=vocab_size, num_outputs=k)
        assert isinstance(model, RegressionRewardModel)
        model.attribute_names = settings.attribute_names
        model.merge_attributes = settings.merge_attributes
        weights = torch.tensor(settings.attribute_weights, dtype=torch.float32)  # [K]
        model.register_buffer("attribute_weights", weights.to(model.head.weight.device), persistent=False)
        return model

    def merge(self, rewards: torch.Tensor) -> torch.Tensor:
        """The weighted scalar of attribute predictions: ``[N, K] -> [N, 1]`` (float32)."""
        return rewards.float() @ self.attribute_weights.unsqueeze(1)  # [N, K] @ [K, 1]

    @torch.no_grad()
    def infer(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Rewards for serving, shaped as NeMo-Aligner serves them.

        Args:
            tokens: ``[N, S]`` int64, right-padded.
            lengths: ``[N]`` int64.

        Returns:
            ``[N, 1]`` weighted scalar when ``merge_attributes`` is true, else ``[N, K]``.
        """
        rewards = self(tokens, lengths)  # [N, K]
        return self.merge(rewards) if self.merge_attributes else rewards
