"""The optimizer step's parts: the optimizer and learning-rate schedule, and the gradient
reduction and clipping done before each step.

In: the model's parameters and their accumulated gradients (each rank's micro-batches).
Out: gradients averaged over data-parallel ranks, clipped by the global norm (tensor-parallel
shards counted once), and the optimizer / scheduler that step the weights.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..config import learning_rate

if TYPE_CHECKING:  # pragma: no cover
    from ..parallel import ParallelInfo

__all__ = ["allreduce_grads", "build_optimizer", "build_scheduler", "clip_grad_norm"]


def build_optimizer(model: torch.nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (L2), torch's (fused): Megatron's optimizer needs CUDA in 0.16.1.

    ``model.optim.weight_decay`` applies to weight matrices, not to biases and norms.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.endswith(".bias") else decay).append(param)
    o = cfg.model.optim
    groups = [
        {"params": decay, "weight_decay": float(o.weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = {"lr": learning_rate(cfg), "betas": tuple(float(b) for b in o.betas), "eps": float(o.eps),
              # One fused kernel per parameter (CPU and CUDA): the same update, several times faster
              # on CPU than torch's default per-element loop there.
              "fused": all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + no_decay)}
    if o.name == "adam":  # weight decay as an L2 term in the gradient (torch.optim.Adam semantics)
        return torch.optim.Adam(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DictConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to ``model.optim.lr``, then cosine decay to ``sched.min_lr`` (or constant).

    With ``sched.constant_steps`` (NeMo-Aligner's CosineAnnealing), the decay ends that many steps
    before the last step and ``min_lr`` holds for the rest; when it leaves no decay steps, the
    rate drops to ``min_lr`` right after warmup, as in NeMo.
    """
    sched = cfg.model.optim.sched
    lr, min_lr, warmup = learning_rate(cfg), float(sched.min_lr), int(sched.warmup_steps)

    # NeMo's CosineAnnealing hold phase: the last `constant_steps` steps stay at min_lr.
    constant = int(OmegaConf.select(sched, "constant_steps", default=0) or 0)
    decay = total_steps - warmup - constant

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if sched.name == "constant":
            return 1.0
        if constant and step >= warmup + max(0, decay):
            return min_lr / lr
        progress = min(1.0, (step - warmup) / max(1, decay))
        return (min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))) / lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _dp_group() -> Any:
    """megatron-core's data-parallel process group."""
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_group()


def allreduce_grads(model: torch.nn.Module, info: ParallelInfo, group: Any = None) -> None:
    """Average gradients over the data-parallel group (one flat buffer).

    ``group``: the process group of the ``info.dp`` data-parallel ranks; default :func:`_dp_group`.
    """
    if info.dp == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch._utils._flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat, group=_dp_group() if group is None else group)
    flat /= info.dp
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def clip_grad_norm(model: torch.nn.Module, max_norm: float | None, info: ParallelInfo) -> float:
    """Global gradient norm across tensor-parallel shards (replicated parameters counted once); clips in place.

    Accumulated in float64 in one pass per tensor (no float64 copy of the gradients).
    """
    params = [p for p in model.parameters() if p.grad is not None]
    counted = [p.grad.detach() for p in params if info.tp_rank == 0 or getattr(p, "tensor_model_parallel", False)]
    total = torch.zeros((), dtype=torch.float64, device=info.device)
    if counted:
        total += torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in counted]).pow(2).sum()
    if info.tp > 1:
        from megatron.core import parallel_state

        torch.distributed.all_reduce(total, group=parallel_state.get_tensor_model_parallel_group())
    norm = float(total.sqrt())
    if max_norm and math.isfinite(norm) and norm > max_norm:
        torch._foreach_mul_([p.grad for p in params], max_norm / (norm + 1e-6))
    return norm
