"""The ``regression`` plugin object: multi-attribute (SteerLM / HelpSteer) reward models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from rm_registry import ConfigError

from ._config import RegressionSettings, default_config

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from omegaconf import DictConfig

    from rm_registry import Tokenizer
    from rm_registry.engine.data import TextSample

__all__ = ["RegressionPlugin"]

_DATA_DIR = Path(__file__).with_name("data")


class RegressionPlugin:
    """K named attributes predicted by one head, trained with a masked MSE.

    Implements :class:`rm_registry.RewardModelPlugin`; the registered instance is
    ``rm_regression.plugin``. Config keys live under ``model.regression`` (see
    :func:`rm_regression._config.default_config` and ``docs/regression.md``).
    """

    name = "regression"
    description = "Multi-attribute regression reward model (SteerLM / HelpSteer): K named attributes, masked MSE."

    @property
    def model_class(self) -> type:
        """:class:`rm_regression._model.RegressionRewardModel` (imports torch and megatron-core)."""
        from ._model import RegressionRewardModel

        return RegressionRewardModel

    def default_config(self) -> dict[str, Any]:
        """``{"model": {"regression": {...}, ...}, "trainer": {...}}``; see :func:`default_config`."""
        return default_config()

    def settings(self, cfg: DictConfig | Mapping[str, Any]) -> RegressionSettings:
        """The validated, resolved ``model.regression`` section of ``cfg``.

        Raises:
            ConfigError: naming the key and value.
        """
        return RegressionSettings.from_config(cfg)

    def validate_config(self, cfg: DictConfig) -> None:
        """Check ``model.regression`` (and the engine keys this architecture cannot use).

        Raises:
            ConfigError: naming the offending key and value.
        """
        RegressionSettings.from_config(cfg)
        try:
            output_sequence = cfg["model"]["output_sequence"]
        except Exception:
            output_sequence = False
        if output_sequence:
            raise ConfigError(
                "model.output_sequence=true: the regression architecture predicts one value per "
                "attribute and text (pooled); set model.output_sequence=false"
            )

    def config_types(self) -> dict[str, Any]:
        """Types of the keys whose default is null (``model.regression.num_attributes=abc`` is refused)."""
        return {
            "model.regression.attribute_names": list,
            "model.regression.num_attributes": int,
            "model.regression.attribute_weights": list,
        }

    def resolve_config(self, cfg: DictConfig) -> None:
        """Store the resolved attribute names (and their number) in ``cfg``.

        With ``attribute_names: null`` the names come from the plugin's defaults; writing them
        into the config saved with every checkpoint means a later change of those defaults cannot
        rename the outputs of an old checkpoint.
        """
        settings = RegressionSettings.from_config(cfg)
        cfg.model.regression.attribute_names = list(settings.attribute_names)
        cfg.model.regression.num_attributes = settings.num_attributes

    def sample_data(self) -> dict[str, Path]:
        """The shipped HelpSteer-style sample set (``scripts/make_sample_data.py`` writes it)."""
        return {"train": _DATA_DIR / "train.jsonl", "validation": _DATA_DIR / "validation.jsonl"}

    def build_datasets(
        self,
        data_paths: Mapping[str, str | Path | None],
        tokenizer: Tokenizer,
        cfg: DictConfig,
    ) -> dict[str, Sequence[Any]]:
        """Read and tokenize every split given (JSON Lines ``{"text", "label"}``).

        Returns:
            ``{split: dataset of RegressionSample}`` with ``stats`` per split; with a
            Bradley-Terry ``loss_func``, of :class:`~rm_regression._data.RegressionPair` (one
            sample per A/B pair, ``stats`` counting pairs).

        Raises:
            DataError: naming the file, the line and the problem (before any training work).
        """
        from rm_registry.engine.data import tokenize_datasets

        return tokenize_datasets(self, data_paths, tokenizer, cfg)

    def text_samples(self, path: str | Path, cfg: DictConfig) -> Iterator[TextSample]:
        """One text and its ``label`` per record (A/B pairs for the Bradley-Terry losses): the token cache's input."""
        from ._data import text_samples

        return text_samples(path, RegressionSettings.from_config(cfg))

    def sample_from_tokens(self, sequences: list[list[int]], fields: Mapping[str, Any], lines: list[int]) -> Any:
        """A :class:`~rm_regression._data.RegressionSample` (or pair) from stored token ids and labels."""
        from ._data import sample_from_tokens

        return sample_from_tokens(sequences, fields, lines)

    def collate(self, samples: Sequence[Any], pad_id: int) -> dict[str, torch.Tensor]:
        """``tokens [N, S]``, ``lengths [N]`` (int64) and ``labels [N, K]`` (float32): one row per
        text, or rows A, B of each pair (Bradley-Terry)."""
        from ._data import collate

        return collate(samples, pad_id)

    def loss(
        self, rewards: torch.Tensor, batch: Mapping[str, torch.Tensor], cfg: DictConfig
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked MSE of ``rewards [B, K]`` against ``batch["labels"] [B, K]``.

        Returns:
            ``(loss, {"loss", "mse", "labelled", "mse/<name>" ...})``; the loss is
            ``0 * rewards.sum()`` when every label of the batch is masked.
        """
        settings = RegressionSettings.from_config(cfg)
        if settings.bradley_terry:
            from ._bt import bt_batch_loss
            from ._data import label_of

            return bt_batch_loss(rewards, label_of(batch), settings)
        from ._metrics import batch_loss

        return batch_loss(rewards, batch, settings)

    def metric_weight(self, batch: Mapping[str, torch.Tensor], cfg: DictConfig) -> float:
        """The number of labelled entries of ``batch``: the logged training loss is the masked MSE
        over every labelled entry of the step, as the validation loss is over the set."""
        from ._data import label_of

        return float((label_of(batch) != RegressionSettings.from_config(cfg).loss_mask_val).sum())

    def evaluation_metrics(
        self,
        outputs: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]],
        cfg: DictConfig,
    ) -> dict[str, Any]:
        """``loss``, ``mse``, ``mse_baseline``, ``attributes`` and ``reward`` over a whole set.

        See :func:`rm_regression._metrics.evaluation_metrics`.
        """
        settings = RegressionSettings.from_config(cfg)
        if settings.bradley_terry:
            from ._bt import bt_evaluation_metrics

            return bt_evaluation_metrics(outputs, settings)
        from ._metrics import evaluation_metrics

        return evaluation_metrics(outputs, settings)

    def output_names(self, cfg: DictConfig) -> list[str]:
        """The attribute names, in head-output order (optional member: the ``id2label`` of a
        Hugging Face export)."""
        return list(RegressionSettings.from_config(cfg).attribute_names)

    def config_for_output_names(self, names: Sequence[str]) -> dict[str, Any]:
        """The config layer for a Hugging Face reward model with these ``id2label`` names
        (optional member: scoring a foreign ``*ForSequenceClassification`` folder)."""
        return {"model": {"regression": {"attribute_names": list(names), "num_attributes": None}}}

    def scalar_rewards(self, rewards: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
        """What benchmarks rank by, ``[N]`` from ``rewards [N, K]``: the weighted scalar of
        :meth:`score_outputs` (``model.regression.attribute_weights``, settable at load time)."""
        from ._metrics import weighted_reward

        return weighted_reward(rewards, RegressionSettings.from_config(cfg)).detach().float().cpu()

    def score_outputs(self, rewards: torch.Tensor, cfg: DictConfig) -> list[dict[str, Any]]:
        """``[{"reward": weighted scalar, "attributes": {name: value}}, ...]`` for ``rewards [B, K]``."""
        from ._metrics import score_rows

        return score_rows(rewards, RegressionSettings.from_config(cfg))
