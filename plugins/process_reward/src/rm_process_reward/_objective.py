"""Loss, metrics and scoring of the ``process_reward`` plugin.

Shapes:
    M: labelled steps of a batch (the rows of ``reward_positions``), K: 2 (``ce``) or 1 (``bce``).

A step's reward is the probability that it is correct: ``softmax(logits)[1]`` for ``ce`` (TRL's
two classes, class 1 = correct), ``sigmoid(logit)`` for ``bce``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from rm_registry import PluginValidationError

from ._config import ProcessRewardSettings

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from omegaconf import DictConfig

__all__ = ["evaluation_metrics", "loss", "num_steps", "score_outputs", "score_records", "step_rewards"]


def step_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """The probability that each step is correct, ``[M]``, from head outputs ``[M, 2]`` or ``[M, 1]``."""
    import torch

    if rewards.dim() != 2 or rewards.shape[1] not in (1, 2):
        raise PluginValidationError(f"process_reward: expected step outputs [M, 2] or [M, 1], got "
                                    f"{tuple(rewards.shape)} (is the batch missing reward_positions?)")
    if rewards.shape[1] == 2:
        return torch.softmax(rewards.float(), dim=-1)[:, 1]
    return torch.sigmoid(rewards.float()[:, 0])


def _step_loss(rewards: torch.Tensor, labels: torch.Tensor, settings: ProcessRewardSettings) -> torch.Tensor:
    """Summed loss over the M steps (``[M, K]`` outputs, ``[M]`` labels in [0, 1])."""
    import torch.nn.functional as F

    if settings.loss == "bce":
        return F.binary_cross_entropy_with_logits(rewards[:, 0].float(), labels, reduction="sum")
    log_p = F.log_softmax(rewards.float(), dim=-1)  # [M, 2]; soft labels as probability targets
    return -(labels * log_p[:, 1] + (1 - labels) * log_p[:, 0]).sum()


def num_steps(batch: Mapping[str, Any]) -> int:
    """Labelled steps in a batch (what the training metrics average over)."""
    return int(batch["step_labels"].shape[0])


def loss(rewards: torch.Tensor, batch: Mapping[str, torch.Tensor], cfg: DictConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean loss over the batch's labelled steps and the step accuracy.

    Args:
        rewards: ``[M, K]``, the head at each of the batch's ``reward_positions``.
        batch: :func:`~rm_process_reward._data.collate`'s batch.

    Returns:
        ``(loss, {"step_accuracy": ...})``; a batch without steps gives 0, connected to the graph.
    """
    settings = ProcessRewardSettings.from_config(cfg)
    labels = batch["step_labels"].to(rewards.device)
    if rewards.shape[0] != labels.shape[0]:
        raise PluginValidationError(f"process_reward: {rewards.shape[0]} step outputs for {labels.shape[0]} labels")
    m = labels.shape[0]
    if m == 0:
        return rewards.sum() * 0.0, {"step_accuracy": 0.0}
    value = _step_loss(rewards, labels, settings) / m
    correct = ((step_rewards(rewards.detach()) >= settings.threshold) == (labels >= 0.5)).float().mean()
    return value, {"step_accuracy": float(correct)}


def _first_error(flags: Sequence[bool]) -> int:
    """Index of the first ``False`` (a wrong step), ``-1`` when every step is right."""
    return next((i for i, ok in enumerate(flags) if not ok), -1)


def evaluation_metrics(outputs: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]],
                       cfg: DictConfig) -> dict[str, Any]:
    """Metrics over a whole set, every step (and every solution) counted once.

    - ``loss``: mean over steps; ``step_accuracy``: thresholded step reward vs label (a soft label
      counts as correct from 0.5); ``majority_step_accuracy``: what always answering the set's
      more frequent class would score; ``last_step_accuracy``: the last labelled step of each solution.
    - ProcessBench's first-error figures over solutions: ``error_accuracy`` (solutions with a wrong
      step: the first step predicted wrong is the first wrong step), ``correct_accuracy``
      (solutions without one: no step predicted wrong), ``first_error_f1``, their harmonic mean.
    """
    import torch

    settings = ProcessRewardSettings.from_config(cfg)
    total_loss = 0.0
    steps = correct = positives = 0
    last_right = solutions = 0
    err_right = err_total = ok_right = ok_total = 0
    for rewards, batch in outputs:
        labels = batch["step_labels"].float()
        if labels.shape[0] == 0:
            continue
        total_loss += float(_step_loss(rewards.float(), labels, settings))
        predicted = (step_rewards(rewards) >= settings.threshold).tolist()
        gold = (labels >= 0.5).tolist()
        rows = batch["reward_positions"][:, 0].tolist()
        steps += len(gold)
        correct += sum(p == g for p, g in zip(predicted, gold))
        positives += sum(gold)
        by_row: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            by_row.setdefault(row, []).append(i)
        for idx in by_row.values():
            solutions += 1
            last_right += predicted[idx[-1]] == gold[idx[-1]]
            want, got = _first_error([gold[i] for i in idx]), _first_error([predicted[i] for i in idx])
            if want >= 0:
                err_total += 1
                err_right += got == want
            else:
                ok_total += 1
                ok_right += got == -1
    if steps == 0:
        return {"loss": None, "step_accuracy": None, "majority_step_accuracy": None, "last_step_accuracy": None,
                "error_accuracy": None, "correct_accuracy": None, "first_error_f1": None, "num_steps": 0,
                "num_solutions": 0}
    err_acc = err_right / err_total if err_total else None
    ok_acc = ok_right / ok_total if ok_total else None
    f1 = None
    if err_acc is not None and ok_acc is not None:
        f1 = 0.0 if err_acc + ok_acc == 0 else 2 * err_acc * ok_acc / (err_acc + ok_acc)
    return {
        "loss": total_loss / steps,
        "step_accuracy": correct / steps,
        "majority_step_accuracy": max(positives, steps - positives) / steps,
        "last_step_accuracy": last_right / solutions,
        "error_accuracy": err_acc,
        "correct_accuracy": ok_acc,
        "first_error_f1": f1,
        "num_steps": steps,
        "num_solutions": solutions,
    }


def _aggregate(values: Sequence[float], how: str) -> float:
    if how == "min":
        return min(values)
    if how == "last":
        return values[-1]
    if how == "prod":
        return math.prod(values)
    return sum(values) / len(values)


def score_outputs(rewards: torch.Tensor, cfg: DictConfig) -> list[dict[str, Any]]:
    """``[{"reward": p}, ...]``: one object per row (a step), ``p`` the probability it is correct."""
    return [{"reward": float(p)} for p in step_rewards(rewards).tolist()]


def score_records(rewards: torch.Tensor, group_sizes: Sequence[int], cfg: DictConfig) -> list[dict[str, Any]]:
    """One object per scored solution: ``{"step_rewards": [...], "reward": <aggregate>}`` (the
    aggregate is ``model.process_reward.aggregate`` of the step rewards)."""
    how = ProcessRewardSettings.from_config(cfg).aggregate
    values = step_rewards(rewards).tolist()
    out, start = [], 0
    for size in group_sizes:
        mine = values[start : start + size]
        start += size
        out.append({"step_rewards": mine, "reward": _aggregate(mine, how) if mine else None})
    return out
