"""Pipeline parallelism (``model.pipeline_model_parallel_size > 1``) through megatron-core's own
schedules: ``get_forward_backward_func()`` (1F1B; the stages of
:mod:`rm_registry.engine.model._stages` exchange hidden states point to point).

In: one stage of a :class:`~rm_registry.engine.model.RewardModel` and the micro-batches of a step
(collated plugin batches, the same on every stage of a pipeline: all its ranks share one
data-parallel rank). Out: on the last stage, the loss of each micro-batch (training) or the
rewards (forward only); :func:`from_last_stage` hands the last stage's results to the others.

Every stage collates the batches itself: the first reads ``tokens``, the last the rest
(``lengths``, ``reward_positions`` and what the plugin's ``loss`` reads). Micro-batches keep their
own lengths (``variable_seq_lengths``: the schedules send each tensor's shape first), so nothing is
padded to ``model.encoder_seq_length`` for the pipeline.

Without CUDA (gloo), the schedules' few CUDA-only calls are redirected for the duration of
:func:`run_schedule` (:func:`_cpu_schedules`): ``torch.zeros(..., device="cuda")`` for the token
count, ``torch.cuda.current_device()`` for receive buffers and ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from . import _cpu_compat

__all__ = ["from_last_stage", "is_pipelined", "pipeline_rewards", "run_schedule"]

#: Batch key of the read positions of token-level plugins (``_contract.REWARD_POSITIONS``).
_POSITIONS = "reward_positions"


def is_pipelined() -> bool:
    """Whether megatron's parallel state has more than one pipeline stage."""
    from megatron.core import parallel_state

    return parallel_state.model_parallel_is_initialized() and parallel_state.get_pipeline_model_parallel_world_size() > 1


def is_last_stage() -> bool:
    from megatron.core import parallel_state

    return parallel_state.is_pipeline_last_stage()


class _TorchOnCPU(types.ModuleType):
    """``torch`` for the schedules module without CUDA: tensors asked for on ``"cuda"`` are made
    on the CPU; everything else is torch's own."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def zeros(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:
        return torch.zeros(*args, device="cpu" if str(device).startswith("cuda") else device, **kwargs)


@contextlib.contextmanager
def _cpu_schedules() -> Iterator[None]:
    """megatron's schedules runnable on the CPU for the block (a no-op with CUDA)."""
    if not _cpu_compat.cuda_absent():
        yield
        return
    from megatron.core.pipeline_parallel import schedules

    saved = schedules.torch
    schedules.torch = _TorchOnCPU()  # type: ignore[assignment]
    try:
        with _cpu_compat.cuda_device_shims():
            yield
    finally:
        schedules.torch = saved


def run_schedule(
    model: torch.nn.Module,
    batches: Sequence[Mapping[str, Any]],
    loss_fn: Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """One pass of megatron's pipeline schedule over ``batches`` (micro-batches on the model's device).

    Args:
        model: This rank's stage (a ``RewardModel`` built under the pipeline layout).
        batches: The micro-batches, in order; the same on every stage of this pipeline.
        loss_fn: Training: ``loss_fn(rewards, batch)`` on the last stage gives the scalar whose
            gradient that micro-batch contributes (already weighted, as without a pipeline; the
            schedule's division by the number of micro-batches is undone here). Forward and
            backward of every micro-batch run (1F1B). ``None``: forward only, no gradients.

    Returns:
        Forward only, on the last stage: the rewards of each micro-batch (detached). ``[]`` on the
        other stages and in training (the losses are where ``loss_fn`` put them).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    forward_only = loss_fn is None
    count = len(batches)
    results: list[torch.Tensor] = []

    def forward_step(data_iterator: Iterator[Mapping[str, Any]], stage: torch.nn.Module) -> tuple[Any, Any]:
        batch = next(data_iterator)
        positions = batch.get(_POSITIONS)
        output = stage(batch["tokens"], batch["lengths"]) if positions is None else \
            stage(batch["tokens"], batch["lengths"], positions=positions)

        def finish(out: torch.Tensor, non_loss_data: bool = False) -> Any:
            if forward_only:
                results.append(out.detach())
                return None
            return loss_fn(out, batch) * count, {}  # the schedule divides by the number of micro-batches

        return output, finish

    longest = max(int(b["tokens"].shape[1]) for b in batches)
    rows = max(int(b["tokens"].shape[0]) for b in batches)
    with _cpu_schedules():
        get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(batches),
            model=[model],
            num_microbatches=count,
            seq_length=longest,  # shapes travel with each tensor (variable_seq_lengths)
            micro_batch_size=rows,
            forward_only=forward_only,
            collect_non_loss_data=forward_only,
        )
    return results


def from_last_stage(value: Any) -> Any:
    """``value`` of the last pipeline stage, on every stage of this rank's pipeline (any picklable
    object; tensors arrive on the CPU). Without pipeline parallelism, ``value`` itself."""
    if not is_pipelined():
        return value
    from megatron.core import parallel_state

    if isinstance(value, torch.Tensor):
        value = value.cpu()
    elif isinstance(value, list):
        value = [v.cpu() if isinstance(v, torch.Tensor) else v for v in value]
    box = [value]
    torch.distributed.broadcast_object_list(box, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                                            group=parallel_state.get_pipeline_model_parallel_group())
    return box[0]


def pipeline_rewards(model: torch.nn.Module, batches: Sequence[Mapping[str, Any]]) -> list[torch.Tensor]:
    """The rewards of each batch through every stage (forward only, the batches as the schedule's
    micro-batches, so the stages work at once), on every stage, each on the device of its batch's
    tokens: what ``model(tokens, lengths[, positions])`` gives without a pipeline."""
    if not batches:
        return []
    out = run_schedule(model, batches)
    rewards = from_last_stage(out if out else None)
    return [r.to(b["tokens"].device) for r, b in zip(rewards, batches, strict=True)]
