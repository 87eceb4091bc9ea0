"""The ``process_reward`` plugin object: process reward models, one reward per reasoning step.

Cheap to import: the data, loss and model modules (and with them torch and megatron-core) are
imported inside the methods that need them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from . import _config

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from omegaconf import DictConfig

    from rm_registry import Tokenizer

    from ._data import StepSample

__all__ = ["ProcessRewardPlugin"]


class ProcessRewardPlugin:
    """Process reward models (Math-Shepherd, PRM800K, TRL's ``PRMTrainer``): the head read at the
    end of every step, trained with cross-entropy on the steps' labels.

    See ``docs/process_reward.md`` for the data formats, config keys, loss and metrics.
    """

    name = "process_reward"
    description = "Process reward model: one reward per solution step (TRL PRM and Math-Shepherd formats)."

    #: What evaluation_metrics reads (tokens are not needed).
    evaluation_batch_keys = ("reward_positions", "step_labels")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @property
    def model_class(self) -> type:
        """:class:`rm_process_reward._model.ProcessRewardModel` (imports torch on first use)."""
        from ._model import ProcessRewardModel

        return ProcessRewardModel

    def default_config(self) -> dict[str, Any]:
        """``model.process_reward`` defaults plus the engine overrides tuned for the sample data."""
        return _config.default_config()

    def config_types(self) -> Mapping[str, Any]:
        """``model.process_reward.max_prompt_length`` is a whole number (default null)."""
        return _config.config_types()

    def validate_config(self, cfg: DictConfig) -> None:
        """Check ``model.process_reward.*``; raises :class:`rm_registry.ConfigError` naming the key."""
        _config.validate_config(cfg)

    def sample_data(self) -> Mapping[str, Path]:
        """The shipped sample solutions: ``{"train": ..., "validation": ...}`` JSON Lines files."""
        root = resources.files(__package__).joinpath("data")
        return {split: Path(str(root.joinpath(f"{split}.jsonl"))) for split in ("train", "validation")}

    def build_datasets(self, data_paths: Mapping[str, str | Path | None], tokenizer: Tokenizer,
                       cfg: DictConfig) -> dict[str, Sequence[StepSample]]:
        """Read and tokenize each split (format detected per record; stats count solutions)."""
        from ._data import build_datasets

        return build_datasets(data_paths, tokenizer, cfg)

    def collate(self, samples: Sequence[StepSample], pad_id: int) -> dict[str, torch.Tensor]:
        """``tokens [B, S]``, ``lengths [B]``, ``reward_positions [M, 2]``, ``step_labels [M]``."""
        from ._data import collate

        return collate(samples, pad_id)

    def loss(self, rewards: torch.Tensor, batch: Mapping[str, torch.Tensor],
             cfg: DictConfig) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean cross-entropy (or BCE) over the labelled steps, and the step accuracy."""
        from ._objective import loss

        return loss(rewards, batch, cfg)

    def metric_weight(self, batch: Mapping[str, torch.Tensor], cfg: DictConfig) -> float:
        """The number of labelled steps: logged training metrics are means over steps."""
        from ._objective import num_steps

        return float(num_steps(batch))

    def evaluation_metrics(self, outputs: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]],
                           cfg: DictConfig) -> dict[str, Any]:
        """Step accuracy, last-step accuracy and ProcessBench's first-error F1 over the whole set."""
        from ._objective import evaluation_metrics

        return evaluation_metrics(outputs, cfg)

    def score_sequences(self, record: Mapping[str, Any], tokenizer: Tokenizer, cfg: DictConfig, *,
                        path: str, line: int) -> list[tuple[list[int], list[int]]]:
        """The token ids of one ``score`` record and the position of each step's last token."""
        from ._data import score_sequences

        return score_sequences(record, tokenizer, cfg, path=path, line=line)

    def score_outputs(self, rewards: torch.Tensor, cfg: DictConfig) -> list[dict[str, Any]]:
        """``[{"reward": p}, ...]`` for step outputs ``[M, K]`` (``p``: the step is correct)."""
        from ._objective import score_outputs

        return score_outputs(rewards, cfg)

    def score_records(self, rewards: torch.Tensor, group_sizes: Sequence[int], cfg: DictConfig) -> list[dict[str, Any]]:
        """``{"step_rewards": [...], "reward": min/last/prod/mean of them}`` per solution."""
        from ._objective import score_records

        return score_records(rewards, group_sizes, cfg)

    def scalar_rewards(self, rewards: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
        """The probability of the positive class for each row ``[N]``."""
        from ._objective import step_rewards

        return step_rewards(rewards)

    def output_names(self, cfg: DictConfig) -> list[str]:
        """``["incorrect", "correct"]`` for the two classes of ``ce``; ``["correct"]`` for ``bce``."""
        return ["incorrect", "correct"] if _config.ProcessRewardSettings.from_config(cfg).loss == "ce" else ["correct"]
