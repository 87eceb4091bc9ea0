"""The optimizer step's parts: the optimizer and learning-rate schedule, and the gradient
reduction and clipping done before each step.

In: the model's parameters and their accumulated gradients (each rank's micro-batches).
Out: gradients averaged over data-parallel ranks, clipped by the global norm (tensor-parallel
shards counted once), and the optimizer / scheduler that step the weights; for float16 compute,
the :class:`LossScaler` that scales the loss and skips steps whose gradients overflowed.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..config import learning_rate

if TYPE_CHECKING:  # pragma: no cover
    from ..parallel import ParallelInfo

__all__ = ["LossScaler", "allreduce_grads", "allreduce_tensor_parallel_replicas", "build_optimizer",
           "build_scheduler", "clip_grad_norm", "is_sharded", "load_optimizer_state", "optimizer_state", "state_bytes"]


def build_optimizer(model: torch.nn.Module, cfg: DictConfig, info: ParallelInfo | None = None) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (L2), torch's (fused); with
    ``model.optim.use_distributed_optimizer`` and several data-parallel ranks, its state sharded
    over them (torch's ``ZeroRedundancyOptimizer``: each rank keeps the moments of its share of
    the parameters, steps those, and broadcasts them; the same update as the replicated one).

    megatron-core's distributed optimizer needs CUDA in 0.16.1 (``torch.cuda`` buffers and type
    checks), so the engine shards with torch's on every device: the memory is that of megatron's
    (optimizer state / DP), the gradient reduction stays the engine's all-reduce.

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
    optimizer_class = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW  # adam: L2 in the gradient
    if _wants_sharding(cfg, info):
        with warnings.catch_warnings():  # torch.distributed.optim's functional optimizers use torch.jit
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer([g for g in groups if g["params"]], optimizer_class=optimizer_class,
                                       process_group=_dp_group(), **kwargs)
    return optimizer_class(groups, **kwargs)


def _wants_sharding(cfg: DictConfig, info: ParallelInfo | None) -> bool:
    """Sharding asked for, with several data-parallel ranks to shard over."""
    asked = bool(OmegaConf.select(cfg, "model.optim.use_distributed_optimizer", default=False))
    return asked and info is not None and info.dp > 1


def is_sharded(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer``'s state is sharded over the data-parallel ranks."""
    return _local(optimizer) is not optimizer


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What a checkpoint keeps of this rank's optimizer: its state, or its shard's when sharded."""
    local = _local(optimizer)
    if local is not optimizer:  # the shard's groups were synced at its last step, before the scheduler's
        for outer, inner in zip(optimizer.param_groups, local.param_groups, strict=True):
            inner.update({k: v for k, v in outer.items() if k != "params"})
    return local.state_dict()


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_state` (the same layout)."""
    local = _local(optimizer)
    local.load_state_dict(state)
    if local is not optimizer:  # the sharded wrapper copies its groups' lr onto the shard's at step
        for outer, inner in zip(optimizer.param_groups, local.param_groups, strict=True):
            outer.update({k: v for k, v in inner.items() if k != "params"})


#: The per-parameter tensors of torch's Adam / AdamW state (``max_exp_avg_sq`` only with amsgrad).
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _moment_names(optimizer: torch.optim.Optimizer) -> tuple[str, ...]:
    return MOMENTS if any(g.get("amsgrad") for g in optimizer.param_groups) else MOMENTS[:2]


def sharded_moments(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                    empty: bool = False) -> dict[str, Any] | None:
    """The Adam moments of this rank as megatron ``ShardedTensor`` s placed like their parameters
    (``optimizer.state.exp_avg.<parameter key>`` with the parameter's global shape and offsets), so
    that a checkpoint's optimizer state reshards across tensor- and pipeline-parallel layouts as
    its weights do. ``empty``: zero tensors of the current layout (the template to load into).
    ``None`` for a sharded optimizer (``ZeroRedundancyOptimizer``: its state stays per rank).
    """
    if is_sharded(optimizer):
        return None
    from megatron.core.dist_checkpointing.optimizer import (
        get_param_id_to_sharded_param_map,
        make_sharded_optimizer_tensor,
    )

    params = [p for g in optimizer.param_groups for p in g["params"]]
    placed = get_param_id_to_sharded_param_map(model.sharded_state_dict(), params)
    out: dict[str, Any] = {}
    for i, p in enumerate(params):
        state = optimizer.state.get(p, {})
        for name in _moment_names(optimizer):
            value = torch.zeros_like(p) if empty or name not in state else state[name]
            tensor = make_sharded_optimizer_tensor(placed[i], value, prefix=f"optimizer.state.{name}")
            out[f"{name}/{i}"] = tensor  # local name; the checkpoint key is tensor.key
    return out


def layout_free_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What a checkpoint keeps per rank beside :func:`sharded_moments`: the groups' settings and
    the step count (the same on every rank, whatever the layout)."""
    steps = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
    return {"layout_free": True, "step": max(steps, default=0.0),
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]}


def load_layout_free_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                           load: Any) -> None:
    """Inverse of :func:`layout_free_state` + :func:`sharded_moments` under any layout: ``load``
    maps the template of :func:`sharded_moments` to its tensors (``checkpoint.load_optimizer_tensors``)."""
    template = sharded_moments(model, optimizer, empty=True)
    assert template is not None
    tensors = load(template)
    for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
        group.update(saved)
    # the parameters in sharded_moments' order (i), each with its group
    placed = [(g, p) for g in optimizer.param_groups for p in g["params"]]
    for i, (group, p) in enumerate(placed):
        on_device = group.get("fused") or group.get("capturable")
        entry: dict[str, Any] = {"step": torch.tensor(state["step"], dtype=torch.float32,
                                                      device=p.device if on_device else "cpu")}
        for name in _moment_names(optimizer):
            entry[name] = tensors[f"{name}/{i}"].to(device=p.device, dtype=p.dtype)
        optimizer.state[p] = entry


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the Adam moments this rank holds (two per parameter of its share, in the
    parameter's dtype), known before the first step creates them."""
    return 2 * sum(p.numel() * p.element_size() for g in _local(optimizer).param_groups for p in g["params"])


def _local(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer over this rank's share (the sharded wrapper's inner one), else ``optimizer``."""
    zero = sys.modules.get("torch.distributed.optim.zero_redundancy_optimizer")  # imported only to shard
    return optimizer.optim if zero and isinstance(optimizer, zero.ZeroRedundancyOptimizer) else optimizer  # type: ignore[return-value]


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


def _sum_in_place(grads: list[torch.Tensor], group: Any, divide_by: int = 1) -> None:
    """All-reduce (sum) ``grads`` over ``group`` as one flat buffer, divided by ``divide_by``, in place."""
    flat = torch._utils._flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat, group=group)
    if divide_by != 1:
        flat /= divide_by
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def allreduce_grads(model: torch.nn.Module, info: ParallelInfo, group: Any = None) -> None:
    """Average gradients over the data-parallel group (one flat buffer).

    ``group``: the process group of the ``info.dp`` data-parallel ranks; default :func:`_dp_group`.
    """
    if info.dp == 1:
        return
    _sum_in_place([p.grad for p in model.parameters() if p.grad is not None], _dp_group() if group is None else group,
                  divide_by=info.dp)


def allreduce_tensor_parallel_replicas(model: torch.nn.Module, info: ParallelInfo) -> None:
    """Sum over the tensor-parallel group the gradients of replicated weights that each rank saw
    only part of the work for (megatron's ``_allreduce_non_tensor_model_parallel_grads``): weights
    marked ``sequence_parallel`` (norms and row-parallel biases under sequence parallelism, each
    rank holding ``S / TP`` of the sequence) and the query/key layernorms (``model.qk_layernorm``:
    each rank normalizes only its own heads). Without it those replicas drift apart across ranks.
    """
    if info.tp == 1:
        return
    grads = [p.grad for name, p in model.named_parameters() if p.grad is not None and (
        getattr(p, "sequence_parallel", False) or "q_layernorm" in name or "k_layernorm" in name)]
    if grads:
        from megatron.core import parallel_state

        _sum_in_place(grads, parallel_state.get_tensor_model_parallel_group())


def clip_grad_norm(model: torch.nn.Module, max_norm: float | None, info: ParallelInfo) -> float:
    """Global gradient norm across tensor-parallel shards and pipeline stages (replicated parameters
    counted once); clips in place.

    Accumulated in float64 in one pass per tensor (no float64 copy of the gradients).
    """
    params = [p for p in model.parameters() if p.grad is not None]
    counted = [p.grad.detach() for p in params if info.tp_rank == 0 or getattr(p, "tensor_model_parallel", False)]
    total = torch.zeros((), dtype=torch.float64, device=info.device)
    if counted:
        total += torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in counted]).pow(2).sum()
    if info.tp > 1 or info.pp > 1:  # every tensor-parallel shard of every pipeline stage
        from megatron.core import parallel_state

        torch.distributed.all_reduce(total, group=parallel_state.get_model_parallel_group())
    norm = float(total.sqrt())
    if max_norm and math.isfinite(norm) and norm > max_norm:
        torch._foreach_mul_([p.grad for p in params], max_norm / (norm + 1e-6))
    return norm


class LossScaler:
    """Dynamic loss scaling for float16 compute (``trainer.precision=16-mixed``), megatron's rule.

    The loss is multiplied by :attr:`value` before backward so that small float16 gradients do not
    underflow; the accumulated (float32) gradients are divided by it again before clipping. A step
    whose gradient norm is not finite is skipped and the scale halved; after ``growth_interval``
    steps without overflow it doubles. The caller passes the *global* gradient norm (every
    tensor- and data-parallel rank sees the same one), so all ranks skip the same steps.
    torch's ``GradScaler`` decides per rank from the shards it holds, which can disagree under
    tensor parallelism.
    """

    def __init__(self, initial_scale: float = 2.0**16, *, growth_interval: int = 1000, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, min_scale: float = 1.0) -> None:
        self.value = float(initial_scale)
        self.growth_interval = growth_interval
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.min_scale = min_scale
        self._good_steps = 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss * scale`` (what backward runs on)."""
        return loss * self.value

    def unscale(self, grads: list[torch.Tensor]) -> None:
        """Divide accumulated gradients by the scale, in place."""
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.value)

    def update(self, grad_norm: float) -> bool:
        """Account for one step's (global) gradient norm; whether the optimizer may step."""
        if not math.isfinite(grad_norm):
            self.value = max(self.min_scale, self.value * self.backoff_factor)
            self._good_steps = 0
            return False
        self._good_steps += 1
        if self._good_steps % self.growth_interval == 0:
            self.value *= self.growth_factor
        return True

    def state_dict(self) -> dict[str, float | int]:
        return {"scale": self.value, "good_steps": self._good_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["scale"])
        self._good_steps = int(state["good_steps"])
