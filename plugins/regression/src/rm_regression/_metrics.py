"""Masked MSE loss, evaluation metrics and score rows of the regression architecture.

Shapes: B rows (texts) per batch, K attributes, N rows over a whole evaluation set.
torch is imported inside the functions so that importing the plugin stays cheap.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ._config import RegressionSettings
from ._data import label_of

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

__all__ = ["masked_mse", "batch_loss", "evaluation_metrics", "score_rows", "weighted_reward"]


def _check_shapes(rewards: torch.Tensor, labels: torch.Tensor, settings: RegressionSettings) -> None:
    k = settings.num_attributes
    if rewards.dim() != 2 or rewards.shape[1] != k:
        raise ValueError(
            f"rewards have shape {tuple(rewards.shape)}, expected [B, {k}] for the attributes "
            f"{', '.join(settings.attribute_names)}; was the model built from this config?"
        )
    if labels.shape != rewards.shape:
        raise ValueError(
            f"labels have shape {tuple(labels.shape)} but rewards {tuple(rewards.shape)}; "
            "the data and the model disagree on the number of attributes"
        )


def masked_mse(rewards: torch.Tensor, labels: torch.Tensor, mask_val: float) -> torch.Tensor:
    """``sum(mask * (rewards - labels)^2) / sum(mask)``, with ``mask = labels != mask_val``.

    Args:
        rewards: Predictions ``[B, K]``.
        labels: Targets ``[B, K]``; entries equal to ``mask_val`` are ignored.
        mask_val: The "not labelled" value.

    Returns:
        A 0-dim float32 tensor connected to ``rewards``. When every entry is masked it is
        ``0`` (``0 * rewards.sum()``), so the gradient is zero and nothing is NaN.
    """
    import torch

    pred = rewards.float()  # [B, K]
    mask = labels != mask_val  # [B, K] bool
    count = int(mask.sum())
    if count == 0:
        return 0.0 * pred.sum()
    # torch.where (not mask * diff): the masked differences may be huge (pred - (-100)) and must
    # not reach the gradient at all.
    diff = torch.where(mask, pred - labels.to(pred.dtype), torch.zeros_like(pred))
    return diff.square().sum() / count


def batch_loss(
    rewards: torch.Tensor, batch: Mapping[str, torch.Tensor], settings: RegressionSettings
) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of one batch and its metrics.

    The metric keys are the same for every batch (``loss``, ``mse``, ``labelled``: the number
    of unmasked label entries), so that the engine can average them over micro-batches and
    data-parallel ranks. Per-attribute errors are in the validation metrics, computed over the
    whole validation set (an attribute may be unlabelled in a whole training batch).

    Returns:
        ``(loss, metrics)``: ``loss`` from :func:`masked_mse`, metrics as finite floats.
    """
    labels = label_of(batch, settings.num_attributes).to(rewards.device)
    _check_shapes(rewards, labels, settings)
    loss = masked_mse(rewards, labels, settings.loss_mask_val)
    value = float(loss.detach())
    labelled = float((labels != settings.loss_mask_val).sum())
    return loss, {"loss": value, "mse": value, "labelled": labelled}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Pearson correlation of two float64 vectors; ``None`` when undefined.

    Undefined: fewer than 2 points, or either vector (numerically) constant.
    """
    if x.numel() < 2:
        return None
    dx = x - x.mean()
    dy = y - y.mean()
    sx = float(dx.square().sum().sqrt())
    sy = float(dy.square().sum().sqrt())
    scale_x = float(x.abs().max()) or 1.0
    scale_y = float(y.abs().max()) or 1.0
    # A "constant" vector whose spread is rounding noise has no meaningful correlation.
    tiny = 1e-12 * math.sqrt(x.numel())
    if sx <= tiny * scale_x or sy <= tiny * scale_y:
        return None
    r = float((dx * dy).sum()) / (sx * sy)
    return _finite(max(-1.0, min(1.0, r)))


def weighted_reward(rewards: torch.Tensor, settings: RegressionSettings) -> torch.Tensor:
    """The scalar reward ``rewards @ attribute_weights``: ``[B, K] -> [B]`` (float32)."""
    import torch

    k = settings.num_attributes
    if rewards.dim() != 2 or rewards.shape[1] != k:
        raise ValueError(
            f"rewards have shape {tuple(rewards.shape)}, expected [B, {k}] for the attributes "
            f"{', '.join(settings.attribute_names)}"
        )
    weights = torch.tensor(settings.attribute_weights, dtype=torch.float32, device=rewards.device)  # [K]
    return rewards.float() @ weights  # [B]


def evaluation_metrics(
    outputs: Sequence[tuple[torch.Tensor, Mapping[str, torch.Tensor]]], settings: RegressionSettings
) -> dict[str, Any]:
    """Metrics over a whole evaluation set (all numbers JSON-safe: undefined ones are ``None``).

    Args:
        outputs: ``(rewards [B, K], batch)`` for every batch; ``batch["labels"]`` is ``[B, K]``.
        settings: The resolved ``model.regression`` section.

    Returns:
        ``loss`` (the masked MSE of the whole set, 0.0 when nothing is labelled), ``mse``
        (the same, ``None`` when nothing is labelled), ``mse_baseline`` (the MSE of
        predicting each attribute's mean label of this set: a model must beat it),
        ``count`` (unmasked entries), ``num_samples``, ``attributes``
        ``{name: {"mse", "mae", "pearson", "count"}}`` and ``reward``
        ``{"mean", "std", "pearson", "count"}`` for the weighted scalar (``pearson`` against
        the weighted label, over the ``count`` rows whose attributes are all labelled).
    """
    import torch

    names = settings.attribute_names
    if outputs:
        for rewards, batch in outputs:
            _check_shapes(rewards, label_of(batch, len(names)), settings)
        pred = torch.cat([r.detach().to("cpu", torch.float64) for r, _ in outputs])  # [N, K]
        labels = torch.cat([label_of(b, len(names)).detach().to("cpu", torch.float64) for _, b in outputs])  # [N, K]
    else:
        pred = torch.zeros(0, len(names), dtype=torch.float64)
        labels = torch.zeros(0, len(names), dtype=torch.float64)
    mask = labels != settings.loss_mask_val  # [N, K]
    err = torch.where(mask, pred - labels, torch.zeros_like(pred))  # [N, K]
    total = int(mask.sum())
    mse = float(err.square().sum()) / total if total else None

    attributes: dict[str, dict[str, Any]] = {}
    baseline_sq = 0.0
    for k, name in enumerate(names):
        m = mask[:, k]
        n = int(m.sum())
        p, y = pred[m, k], labels[m, k]
        if n:
            baseline_sq += float((y - y.mean()).square().sum())
        attributes[name] = {
            "mse": _finite(float((p - y).square().mean())) if n else None,
            "mae": _finite(float((p - y).abs().mean())) if n else None,
            "pearson": _pearson(p, y),
            "count": n,
        }

    weights = torch.tensor(settings.attribute_weights, dtype=torch.float64)  # [K]
    scalar = pred @ weights  # [N]
    full = mask.all(dim=1)  # [N] rows with every attribute labelled
    reward = {
        "mean": _finite(float(scalar.mean())) if scalar.numel() else None,
        "std": _finite(float(scalar.std(unbiased=False))) if scalar.numel() else None,
        "pearson": _pearson(scalar[full], labels[full] @ weights),
        "count": int(full.sum()),
    }
    return {
        "loss": _finite(mse) if mse is not None else 0.0,
        "mse": _finite(mse) if mse is not None else None,
        "mse_baseline": baseline_sq / total if total else None,
        "count": total,
        "num_samples": int(pred.shape[0]),
        "attributes": attributes,
        "reward": reward,
    }


def score_rows(rewards: torch.Tensor, settings: RegressionSettings) -> list[dict[str, Any]]:
    """One JSON object per scored text.

    Args:
        rewards: ``[B, K]`` attribute predictions.

    Returns:
        ``[{"reward": float, "attributes": {name: float}}, ...]`` where ``reward`` is the
        weighted scalar ``sum_k attribute_weights[k] * attributes[name_k]``.
    """
    scalar = weighted_reward(rewards, settings).detach().cpu().tolist()  # [B]
    values = rewards.detach().float().cpu().tolist()  # [B][K]
    return [
        {"reward": float(r), "attributes": {name: float(v) for name, v in zip(settings.attribute_names, row)}}
        for r, row in zip(scalar, values)
    ]
