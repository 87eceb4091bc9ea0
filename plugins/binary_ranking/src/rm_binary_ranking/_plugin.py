"""The ``binary_ranking`` plugin object: Bradley-Terry reward models on preference pairs.

Cheap to import: the data, loss and model modules (and with them torch and megatron-core) are
imported inside the methods that need them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from . import _config

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from omegaconf import DictConfig

    from rm_registry import Tokenizer
    from rm_registry.engine.data import TextSample

    from ._data import PreferencePair

__all__ = ["BinaryRankingPlugin"]


class BinaryRankingPlugin:
    """Bradley-Terry (pairwise) reward models, NeMo-Aligner's ``binary_ranking``.

    See ``docs/binary_ranking.md`` for the data formats, config keys, loss and metrics.
    """

    name = "binary_ranking"
    description = "Bradley-Terry reward model trained on chosen/rejected preference pairs (one scalar reward)."

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @property
    def model_class(self) -> type:
        """:class:`rm_binary_ranking._model.BinaryRankingRewardModel` (imports torch on first use)."""
        from ._model import BinaryRankingRewardModel

        return BinaryRankingRewardModel

    def default_config(self) -> dict[str, Any]:
        """``model.binary_ranking`` defaults plus the engine overrides tuned for the sample data."""
        return _config.default_config()

    def validate_config(self, cfg: DictConfig) -> None:
        """Check ``model.binary_ranking.*``; raises :class:`rm_registry.ConfigError` naming the key."""
        _config.validate_config(cfg)

    def sample_data(self) -> Mapping[str, Path]:
        """The shipped sample pairs: ``{"train": ..., "validation": ...}`` JSON Lines files."""
        root = resources.files(__package__).joinpath("data")
        return {split: Path(str(root.joinpath(f"{split}.jsonl"))) for split in ("train", "validation")}

    def build_datasets(
        self,
        data_paths: Mapping[str, str | Path | None],
        tokenizer: Tokenizer,
        cfg: DictConfig,
    ) -> dict[str, Sequence[PreferencePair]]:
        """Read and tokenize each split (format detected per file; stats count pairs)."""
        from ._data import build_datasets

        return build_datasets(self, data_paths, tokenizer, cfg)

    def text_samples(self, path: str | Path, cfg: DictConfig) -> Iterator[TextSample]:
        """The pairs of one file, texts ``(chosen, rejected)`` and field ``margin`` (the token cache's input)."""
        from ._data import text_samples

        return text_samples(path, margin_mode=str(_config.section(cfg)["margin_mode"]))

    def sample_from_tokens(self, sequences: list[list[int]], fields: Mapping[str, Any],
                           lines: list[int]) -> PreferencePair:
        """A :class:`~rm_binary_ranking._data.PreferencePair` from its stored token ids and margin."""
        from ._data import sample_from_tokens

        return sample_from_tokens(sequences, fields, lines)

    def collate(self, samples: Sequence[PreferencePair], pad_id: int) -> dict[str, torch.Tensor]:
        """``tokens [2P, S]`` (chosen rows first), ``lengths [2P]``, ``margin [P]``, ``has_margin [P]``."""
        from ._objective import collate

        return collate(samples, pad_id)

    def loss(
        self, rewards: torch.Tensor, batch: Mapping[str, torch.Tensor], cfg: DictConfig
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean Bradley-Terry loss over pairs (with margin / centering as configured) and metrics."""
        from ._objective import loss

        return loss(rewards, batch, cfg)

    def metric_weight(self, batch: Mapping[str, torch.Tensor], cfg: DictConfig) -> float:
        """The number of pairs in ``batch``: logged training metrics are means over pairs."""
        from ._objective import num_pairs

        return float(num_pairs(batch))

    def evaluation_metrics(
        self, outputs: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]], cfg: DictConfig
    ) -> dict[str, Any]:
        """The loss metrics over a whole set, pair-weighted, plus ``num_pairs``."""
        from ._objective import evaluation_metrics

        return evaluation_metrics(outputs, cfg)

    def score_outputs(self, rewards: torch.Tensor, cfg: DictConfig) -> list[dict[str, Any]]:
        """``[{"reward": float}, ...]`` for rewards ``[B, 1]``."""
        from ._objective import score_outputs

        return score_outputs(rewards, cfg)
