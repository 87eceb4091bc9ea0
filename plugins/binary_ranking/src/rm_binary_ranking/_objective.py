"""Batches, the Bradley-Terry loss and the metrics of the ``binary_ranking`` plugin.

Layout of a batch of P pairs (one forward pass for both sides, as NeMo-Aligner does)::

    tokens     [2P, S] int64    rows 0..P-1 chosen, rows P..2P-1 rejected (pair i: rows i, P+i)
    lengths    [2P]    int64    real tokens per row (EOS included)
    margin     [P]     float32  the data's margin, 0 where a pair has none
    has_margin [P]     bool     whether the pair had a margin

Loss per pair, with ``d = r_c - r_r``:

    subtract mode   -logsigmoid(d - m)        (m = 0 without a margin)
    scale mode      w * -logsigmoid(d)        (w = m, or 1 without a margin)
    plus            c * (r_c + r_r)^2         (c = center_rewards_coefficient)

averaged over pairs. ``use_margin=false`` ignores margins. torch is imported inside functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from rm_registry.engine.data import pad_batch

from ._config import section
from ._data import PreferencePair

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from omegaconf import DictConfig

__all__ = ["collate", "loss", "evaluation_metrics", "score_outputs", "split_rewards", "pair_losses"]


def collate(samples: Sequence[PreferencePair], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch P pairs: chosen rows first, then rejected rows, padded to the longest of all 2P.

    Returns:
        ``tokens [2P, S]``, ``lengths [2P]``, ``margin [P]`` (0 where absent) and
        ``has_margin [P]``.
    """
    import torch

    tokens, lengths = pad_batch([s.chosen for s in samples] + [s.rejected for s in samples], pad_id)
    margin = torch.tensor([0.0 if s.margin is None else s.margin for s in samples], dtype=torch.float32)
    has_margin = torch.tensor([s.margin is not None for s in samples], dtype=torch.bool)
    return {"tokens": tokens, "lengths": lengths, "margin": margin, "has_margin": has_margin}


def split_rewards(rewards: torch.Tensor, num_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected rewards ``([P], [P])`` (float32) from rewards ``[2P, 1]`` or ``[2P]``.

    Raises:
        ValueError: when the shape is not that of a pairwise batch with one reward per row.
    """
    if rewards.dim() == 2 and rewards.shape[1] == 1:
        flat = rewards[:, 0]
    elif rewards.dim() == 1:
        flat = rewards
    else:
        raise ValueError(
            f"binary_ranking expects one reward per sequence, rewards [2P, 1]; got shape {tuple(rewards.shape)} "
            "(is the model built with num_outputs=1 and model.output_sequence=false?)"
        )
    if flat.shape[0] != 2 * num_pairs:
        raise ValueError(
            f"rewards have {flat.shape[0]} rows but the batch has {num_pairs} pairs (expected {2 * num_pairs} rows: "
            "chosen rows first, then rejected rows)"
        )
    flat = flat.float()
    return flat[:num_pairs], flat[num_pairs:]


def pair_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor,
    has_margin: torch.Tensor,
    options: Mapping[str, Any],
) -> torch.Tensor:
    """Loss of every pair ``[P]`` from rewards ``chosen [P]``, ``rejected [P]`` (see module doc)."""
    import torch
    import torch.nn.functional as F

    diff = chosen - rejected
    use_margin = bool(options["use_margin"])
    if use_margin and options["margin_mode"] == "subtract":
        diff = diff - margin.to(diff)
    per_pair = -F.logsigmoid(diff)
    if use_margin and options["margin_mode"] == "scale":
        per_pair = per_pair * torch.where(has_margin.to(per_pair.device), margin.to(per_pair), 1.0)
    coef = float(options["center_rewards_coefficient"])
    if coef:
        per_pair = per_pair + coef * (chosen + rejected).pow(2)
    return per_pair


#: The names of :func:`loss`'s metrics, the same for every batch.
METRIC_NAMES = ("loss", "accuracy", "chosen_reward_mean", "rejected_reward_mean", "reward_mean", "reward_std")


def num_pairs(batch: Mapping[str, torch.Tensor]) -> int:
    """P, the number of pairs of a batch (the weight of its metrics)."""
    return _num_pairs(batch)


def _num_pairs(batch: Mapping[str, torch.Tensor]) -> int:
    if "margin" in batch:
        return int(batch["margin"].shape[0])
    return int(batch["tokens"].shape[0]) // 2


def _margins(batch: Mapping[str, torch.Tensor], num_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    margin = batch.get("margin")
    has_margin = batch.get("has_margin")
    if margin is None:
        margin = torch.zeros(num_pairs)
    if has_margin is None:
        has_margin = torch.zeros(num_pairs, dtype=torch.bool)
    return margin, has_margin


def _metrics(chosen: torch.Tensor, rejected: torch.Tensor, per_pair: torch.Tensor) -> dict[str, float]:
    """Pair-weighted metrics; ``reward_std`` is the population std over all 2P rewards."""
    import torch

    with torch.no_grad():
        both = torch.cat([chosen, rejected]).double()
        return {
            "loss": float(per_pair.double().mean()),
            "accuracy": float((chosen > rejected).double().mean()),
            "chosen_reward_mean": float(chosen.double().mean()),
            "rejected_reward_mean": float(rejected.double().mean()),
            "reward_mean": float(both.mean()),
            "reward_std": float(both.std(unbiased=False)),
        }


def loss(
    rewards: torch.Tensor, batch: Mapping[str, torch.Tensor], cfg: DictConfig | Mapping[str, Any]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry loss over the batch's pairs and its metrics.

    Args:
        rewards: ``[2P, 1]`` model outputs for ``batch`` (chosen rows first).
        batch: What :func:`collate` returned.
        cfg: The merged config (``model.binary_ranking.*``).

    Returns:
        ``(loss, metrics)``: the 0-dim mean loss over pairs (0, still connected to the graph,
        for an empty batch) and ``loss``, ``accuracy``, ``chosen_reward_mean``,
        ``rejected_reward_mean``, ``reward_mean``, ``reward_std`` as floats.
    """
    num_pairs = _num_pairs(batch)
    chosen, rejected = split_rewards(rewards, num_pairs)
    if num_pairs == 0:  # the same metric names as any batch; metric_weight() = 0 keeps them out of means
        zero = rewards.sum() * 0.0
        return zero, dict.fromkeys(METRIC_NAMES, 0.0)
    margin, has_margin = _margins(batch, num_pairs)
    per_pair = pair_losses(chosen, rejected, margin, has_margin, section(cfg))
    return per_pair.mean(), _metrics(chosen, rejected, per_pair)


def evaluation_metrics(
    outputs: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]], cfg: DictConfig | Mapping[str, Any]
) -> dict[str, Any]:
    """The :func:`loss` metrics over a whole set, weighted by pair (not averaged per batch).

    Args:
        outputs: ``(rewards [2P, 1], batch)`` for every batch of the set.

    Returns:
        The metrics of :func:`loss` plus ``num_pairs``. With no pairs at all, ``num_pairs`` is 0
        and every other metric is ``None``.
    """
    import torch

    options = section(cfg)
    chosen_parts, rejected_parts, losses = [], [], []
    with torch.no_grad():
        for rewards, batch in outputs:
            num_pairs = _num_pairs(batch)
            chosen, rejected = split_rewards(rewards.detach(), num_pairs)
            margin, has_margin = _margins(batch, num_pairs)
            chosen_parts.append(chosen.cpu())
            rejected_parts.append(rejected.cpu())
            losses.append(pair_losses(chosen, rejected, margin, has_margin, options).cpu())
    total = sum(int(c.shape[0]) for c in chosen_parts)
    if total == 0:
        return {**{name: None for name in METRIC_NAMES}, "num_pairs": 0}
    metrics: dict[str, Any] = _metrics(torch.cat(chosen_parts), torch.cat(rejected_parts), torch.cat(losses))
    metrics["num_pairs"] = total
    return metrics


def score_outputs(rewards: torch.Tensor, cfg: DictConfig | Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"reward": float}, ...]``, one per row of rewards ``[B, 1]`` (or ``[B]``)."""
    if rewards.dim() == 2 and rewards.shape[1] == 1:
        flat = rewards[:, 0]
    elif rewards.dim() == 1:
        flat = rewards
    else:
        raise ValueError(f"binary_ranking expects rewards [B, 1]; got shape {tuple(rewards.shape)}")
    return [{"reward": float(v)} for v in flat.detach().float().cpu().tolist()]
