"""rm-hinge-ranking: a pairwise reward model trained with a hinge (margin ranking) loss.

This is the finished plugin of the rm-registry tutorial (``docs/writing-a-plugin.md``).
It registers the architecture ``hinge_ranking`` under the ``reward_models`` entry-point
group. The loss per pair is ``relu(margin - (r_chosen - r_rejected))``: a pair stops
contributing once the chosen reward leads by at least ``margin`` (unlike Bradley-Terry,
which keeps pushing the rewards apart forever).

Importing this module is cheap: everything under ``rm_registry.engine`` (and with it torch
and megatron-core) is imported inside the methods that need it.

Shapes: P pairs per batch, N = 2 * P sequences (the P chosen ones first, then the P
rejected ones), S the longest sequence of the batch, K = 1 reward per sequence.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from rm_registry import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from omegaconf import DictConfig

    from rm_registry import Tokenizer
    from rm_registry.engine.data import TextSample

__all__ = ["HingeRankingPlugin", "plugin"]
__version__ = "0.1.0"

#: The metric names of every batch (``loss()`` must return the same names for every batch).
METRICS = ("loss", "accuracy", "chosen_reward_mean", "rejected_reward_mean")

#: A pair is (chosen token ids, rejected token ids), EOS included.
Pair = tuple[list[int], list[int]]

_DATA = Path(__file__).parent / "data"


class HingeRankingPlugin:
    """The ``hinge_ranking`` architecture: a GPT backbone, one reward, a hinge loss on pairs.

    Config (``model.hinge_ranking``):
        margin: How far the chosen reward must lead the rejected one before a pair stops
            contributing to the loss. Must be > 0.
    """

    name = "hinge_ranking"
    description = "Pairwise reward model with a hinge (margin ranking) loss on {chosen, rejected} pairs."

    @property
    def model_class(self) -> type:
        """``rm_registry.engine.RewardModel``, imported only when a model is built."""
        from rm_registry.engine import RewardModel

        return RewardModel

    def default_config(self) -> dict[str, Any]:
        """Our config section, plus a shorter run for the shipped sample data."""
        return {
            "model": {"hinge_ranking": {"margin": 1.0}},
            "trainer": {"rm": {"max_steps": 60, "val_check_interval": 20}},
        }

    def validate_config(self, cfg: DictConfig) -> None:
        """Refuse a margin that is not a positive number."""
        margin = cfg.model.hinge_ranking.margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0:
            raise ConfigError(
                f"model.hinge_ranking.margin={margin!r}: expected a number > 0, "
                "for example model.hinge_ranking.margin=1.0"
            )

    def sample_data(self) -> Mapping[str, Path]:
        """The small preference set shipped in ``rm_hinge_ranking/data``."""
        return {"train": _DATA / "train.jsonl", "validation": _DATA / "validation.jsonl"}

    def build_datasets(
        self,
        data_paths: Mapping[str, str | Path | None],
        tokenizer: Tokenizer,
        cfg: DictConfig,
    ) -> dict[str, Sequence[Any]]:
        """Every split given, tokenized in batches from :meth:`text_samples` (the engine's helper)."""
        from rm_registry.engine.data import tokenize_datasets

        return tokenize_datasets(self, data_paths, tokenizer, cfg)

    def text_samples(self, path: str | Path, cfg: DictConfig) -> Iterator[TextSample]:
        """The pairs of ``{"chosen": ..., "rejected": ...}`` records (optional ``"prompt"`` before each).

        Either text may be a string or a list of chat messages. The engine tokenizes them,
        drops, truncates or refuses a pair as a whole when one side is longer than
        ``model.encoder_seq_length`` (``model.data.overlong_policy``), and caches the result.
        """
        from rm_registry.engine.data import TextSample, join_prompt_response, read_jsonl, render_text

        for line, record in read_jsonl(path):
            texts = []
            for key in ("chosen", "rejected"):
                if key not in record:
                    raise _missing_key(path, line, key, record)
                if "prompt" in record:  # TRL's explicit prompt, joined as `rm-registry score` joins it
                    texts.append(join_prompt_response(record["prompt"], record[key], path=path, line=line,
                                                      response_key=key))
                else:
                    texts.append(render_text(record[key], path=path, line=line, key=key))
            yield TextSample(texts, line, keys=("chosen", "rejected"))

    def sample_from_tokens(self, sequences: list[list[int]], fields: Mapping[str, Any], lines: list[int]) -> Pair:
        """A pair from its two stored token-id lists (chosen, rejected)."""
        return (sequences[0], sequences[1])

    def collate(self, samples: Sequence[Any], pad_id: int) -> dict[str, torch.Tensor]:
        """Chosen sequences first, then rejected: ``tokens [2P, S]``, ``lengths [2P]``."""
        from rm_registry.engine.data import pad_batch

        tokens, lengths = pad_batch([c for c, _ in samples] + [r for _, r in samples], pad_id)
        return {"tokens": tokens, "lengths": lengths}

    def loss(
        self, rewards: torch.Tensor, batch: Mapping[str, torch.Tensor], cfg: DictConfig
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``mean(relu(margin - (r_chosen - r_rejected)))`` over the P pairs of the batch."""
        import torch

        chosen, rejected = _split_pairs(rewards)  # (P,), (P,)
        if chosen.numel() == 0:  # nothing to learn from: a zero loss still attached to the graph,
            return rewards.sum() * 0.0, dict.fromkeys(METRICS, 0.0)  # and the same metric names
        margin = float(cfg.model.hinge_ranking.margin)
        loss = torch.relu(margin - (chosen - rejected)).mean()
        return loss, {"loss": float(loss.detach()), **_pair_metrics(chosen.detach(), rejected.detach())}

    def evaluation_metrics(
        self,
        outputs: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]],
        cfg: DictConfig,
    ) -> dict[str, Any]:
        """Loss, accuracy and mean rewards over the whole evaluation set."""
        import torch

        halves = [_split_pairs(rewards.detach().float().cpu()) for rewards, _ in outputs]
        chosen = torch.cat([c for c, _ in halves]) if halves else torch.zeros(0)
        rejected = torch.cat([r for _, r in halves]) if halves else torch.zeros(0)
        if chosen.numel() == 0:  # an empty set has no loss or accuracy, not a zero one
            return {**dict.fromkeys(METRICS), "num_pairs": 0}
        margin = float(cfg.model.hinge_ranking.margin)
        loss = torch.relu(margin - (chosen - rejected)).mean()
        return {"loss": float(loss), **_pair_metrics(chosen, rejected), "num_pairs": int(chosen.numel())}

    def score_outputs(self, rewards: torch.Tensor, cfg: DictConfig) -> list[dict[str, Any]]:
        """One ``{"reward": float}`` per scored text (rewards ``[B, 1]``)."""
        return [{"reward": float(r)} for r in rewards.detach().float()[:, 0]]


def _split_pairs(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards ``[2P, 1]`` -> chosen ``[P]``, rejected ``[P]``."""
    if rewards.dim() != 2 or rewards.shape[1] != 1 or rewards.shape[0] % 2:
        raise ValueError(f"hinge_ranking expects rewards of shape [2P, 1], got {list(rewards.shape)}")
    r = rewards[:, 0]
    half = r.shape[0] // 2
    return r[:half], r[half:]


def _pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Accuracy (fraction with ``r_chosen > r_rejected``) and mean rewards, as floats."""
    return {
        "accuracy": float((chosen > rejected).float().mean()),
        "chosen_reward_mean": float(chosen.mean()),
        "rejected_reward_mean": float(rejected.mean()),
    }


def _missing_key(path: str | Path, line: int, key: str, record: Mapping[str, Any]) -> DataError:
    found = ", ".join(sorted(record)) or "no keys"
    return DataError(path, line, f"missing key '{key}': hinge_ranking reads {{\"chosen\", \"rejected\"}} lines (found {found})")


#: The object the ``hinge_ranking`` entry point points at.
plugin = HingeRankingPlugin()
