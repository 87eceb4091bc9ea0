"""The optimizer step's pieces against hand computations: the learning-rate schedule and clipping."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch


def _lrs_used(cfg: Any, total: int) -> list[float]:
    """The lr of every optimizer step, read as the trainer reads it (before ``optimizer.step()``)."""
    from rm_registry.engine.trainer import build_scheduler

    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([param], lr=float(cfg.model.optim.lr))
    scheduler = build_scheduler(optimizer, cfg, total)
    used = []
    for _ in range(total):
        used.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(2)
        optimizer.step()
        scheduler.step()
    return used


def _cosine(lr: float, min_lr: float, step: int, warmup: int, total: int) -> float:
    """NeMo's CosineAnnealing after warmup, written out: min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2."""
    t = (step - warmup) / (total - warmup)
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * t)) / 2


def test_warmup_is_linear_from_lr_over_w_then_cosine_to_min_lr(tiny_cfg) -> None:
    cfg = tiny_cfg(optim={"name": "adamw", "lr": 0.4, "weight_decay": 0.0, "betas": [0.9, 0.98], "eps": 1e-8,
                          "sched": {"name": "CosineAnnealing", "warmup_steps": 4, "min_lr": 0.01}})
    used = _lrs_used(cfg, total=12)
    # Warmup: lr/w, 2lr/w, 3lr/w, lr (never 0: the first step learns).
    assert used[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    # Then the cosine from lr (step w) down towards min_lr, reached at step `total`.
    assert used[4:] == pytest.approx([_cosine(0.4, 0.01, s, 4, 12) for s in range(4, 12)])
    assert used[4] == pytest.approx(0.4) and used[8] == pytest.approx((0.4 + 0.01) / 2)
    assert all(a > b for a, b in zip(used[4:], used[5:]))  # strictly decreasing
    assert used[-1] > 0.01


def test_no_warmup_and_constant_schedule(tiny_cfg) -> None:
    optim = {"name": "adamw", "lr": 0.2, "weight_decay": 0.0, "betas": [0.9, 0.98], "eps": 1e-8}
    cosine = tiny_cfg(optim={**optim, "sched": {"name": "CosineAnnealing", "warmup_steps": 0, "min_lr": 0.0}})
    assert _lrs_used(cosine, total=4) == pytest.approx([0.2, 0.2 * (1 + math.cos(math.pi / 4)) / 2, 0.1,
                                                        0.2 * (1 + math.cos(3 * math.pi / 4)) / 2])
    constant = tiny_cfg(optim={**optim, "sched": {"name": "constant", "warmup_steps": 2, "min_lr": 0.0}})
    assert _lrs_used(constant, total=5) == pytest.approx([0.1, 0.2, 0.2, 0.2, 0.2])


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _norm(grads: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))


def _backward(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(5)
    tokens, lengths = torch.randint(0, 258, (3, 10), generator=g), torch.tensor([10, 6, 2])
    model.zero_grad(set_to_none=True)
    (model(tokens, lengths) * torch.tensor([[1.0], [-2.0], [3.0]])).sum().backward()


def test_clip_returns_the_norm_before_clipping_and_clips_in_place(build_model, parallel_info) -> None:
    from rm_registry.engine.trainer._optim import clip_grad_norm

    model = build_model()
    _backward(model)
    before = _grads(model)
    norm = _norm(before)
    clip = norm / 8
    assert clip_grad_norm(model, clip, parallel_info) == pytest.approx(norm, rel=1e-9)
    after = _grads(model)
    assert _norm(after) <= clip * (1 + 1e-6)
    assert _norm(after) == pytest.approx(clip, rel=1e-4)
    for a, b in zip(after, before):  # same direction: every gradient scaled by clip / norm
        assert torch.allclose(a, b * (clip / norm), rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("clip", [None, 0.0, "above"])
def test_no_clipping_when_disabled_or_below_the_limit(build_model, parallel_info, clip: Any) -> None:
    from rm_registry.engine.trainer._optim import clip_grad_norm

    model = build_model()
    _backward(model)
    before = _grads(model)
    limit = _norm(before) * 2 if clip == "above" else clip
    assert clip_grad_norm(model, limit, parallel_info) == pytest.approx(_norm(before), rel=1e-9)
    assert all(torch.equal(a, b) for a, b in zip(_grads(model), before))
