"""Bradley-Terry losses on a regression head: NeMo-Aligner's HelpSteer2-Preference recipe.

Data: the regression format ``{"text", "label"}`` with responses A and B of one prompt on
consecutive lines (A on line 2i, B on line 2i+1). ``label[0]`` of both lines is the preference
strength in -3..3: negative means A is preferred, positive B (0, a tie, counts B as chosen with
margin 0, as in NeMo-Aligner). The reward of a response is the head output at index 4
(``helpfulness`` in SteerLM order). With ``m = |label[0]|`` and ``d = r_chosen - r_rejected``:

* ``regular_bt``: ``-logsigmoid(d)``
* ``margin_bt``:  ``-logsigmoid(d - m)``
* ``scaled_bt``:  ``m * -logsigmoid(d)``

NeMo-Aligner computes one pair per micro-batch (``micro_batch_size: 2``, counting lines). Here each
A/B pair is one sample (``rm_regression._data.RegressionPair``), so no batching rule (micro-batch
size, token budget, shuffling, length grouping) can split it; ``model.micro_batch_size`` and
``model.global_batch_size`` count pairs, as for ``binary_ranking``, and the loss is the mean over
the pairs of a micro-batch (NeMo-Aligner's for one pair).

Shapes: N rows per batch (N = 2P, A of pair i on row 2i, B on row 2i + 1), K attributes, P pairs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ._config import BT_ATTRIBUTE_INDEX, RegressionSettings

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = ["bt_pairs", "bt_loss", "bt_batch_loss", "bt_evaluation_metrics"]


def bt_pairs(rewards: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split rows into (A, B) pairs and orient them.

    Args:
        rewards: ``[B, K]`` head outputs, B even, A/B rows alternating.
        labels: ``[B, K]``; ``labels[2i, 0]`` is pair i's strength.

    Returns:
        ``chosen [P]``, ``rejected [P]``, ``margin [P]`` (``|strength|``) and ``tie [P]`` (bool).

    Raises:
        ValueError: an odd number of rows.
    """
    import torch

    if rewards.shape[0] % 2:
        raise ValueError(f"Bradley-Terry losses need A/B pairs: got {rewards.shape[0]} rows (odd)")
    r = rewards[:, BT_ATTRIBUTE_INDEX].float()  # [B]
    first, second = r[0::2], r[1::2]  # [P]
    strength = labels[0::2, 0].to(r.device).float()  # [P]
    a_preferred = strength < 0
    chosen = torch.where(a_preferred, first, second)
    rejected = torch.where(a_preferred, second, first)
    return chosen, rejected, strength.abs(), strength == 0


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor, loss_func: str) -> torch.Tensor:
    """Per-pair loss ``[P]`` of ``loss_func`` (see the module docstring)."""
    import torch.nn.functional as F

    if loss_func == "regular_bt":
        return -F.logsigmoid(chosen - rejected)
    if loss_func == "margin_bt":
        return -F.logsigmoid(chosen - rejected - margin)
    if loss_func == "scaled_bt":
        return margin * -F.logsigmoid(chosen - rejected)
    raise ValueError(f"not a Bradley-Terry loss: {loss_func!r}")


def bt_batch_loss(rewards: torch.Tensor, labels: torch.Tensor,
                  settings: RegressionSettings) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of one batch (mean over its pairs) and its metrics.

    Returns:
        ``(loss, {"loss", "accuracy", "margin"})``; accuracy counts pairs whose chosen response
        scores higher, ties excluded (0.0 for a batch of ties only).
    """
    chosen, rejected, margin, tie = bt_pairs(rewards, labels)
    loss = bt_loss(chosen, rejected, margin, settings.loss_func).mean()
    decided = ~tie
    correct = ((chosen > rejected) & decided).sum()
    accuracy = float(correct) / max(1, int(decided.sum()))
    return loss, {"loss": float(loss.detach()), "accuracy": accuracy,
                  "margin": float((chosen - rejected).detach().mean())}


def bt_evaluation_metrics(outputs: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]],
                          settings: RegressionSettings) -> dict[str, Any]:
    """Metrics over a whole set of micro-batches (each holding whole A/B pairs).

    Returns:
        ``loss`` (mean over pairs), ``accuracy`` (ties excluded), ``pairs``, ``ties``,
        ``chosen_reward`` and ``rejected_reward`` (means).
    """
    import torch

    from ._data import label_of

    parts = [bt_pairs(rewards, label_of(batch)) for rewards, batch in outputs]
    if not parts:
        return {"loss": float("nan"), "accuracy": float("nan"), "pairs": 0, "ties": 0}
    chosen, rejected, margin, tie = (torch.cat(x) for x in zip(*parts))
    decided = ~tie
    loss = bt_loss(chosen, rejected, margin, settings.loss_func)
    n_decided = int(decided.sum())
    return {
        "loss": float(loss.mean()),
        "accuracy": float(((chosen > rejected) & decided).sum()) / n_decided if n_decided else float("nan"),
        "pairs": int(chosen.numel()),
        "ties": int(tie.sum()),
        "chosen_reward": float(chosen.mean()),
        "rejected_reward": float(rejected.mean()),
    }
