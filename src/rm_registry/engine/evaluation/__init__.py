"""Evaluation: a model's rewards over a labelled data set, turned into the plugin's metrics.

Used by validation during training, by ``rm-registry evaluate`` and by
:meth:`~rm_registry.engine.api.LoadedRewardModel.evaluate`; it knows nothing of optimizers or run
folders, so inference never imports the training loop.

Data flow of :func:`evaluate_dataset`::

    dataset (the plugin's samples)
      -> eval_batches: micro-batches of similar length, split across data-parallel ranks
      -> plugin.collate -> batch {tokens [N, S], lengths [N], ...} on the model's device
      -> model (in chunks of at most model.max_tokens_per_micro_batch tokens) -> rewards [N, K]
         (or [N, S, K] for a per-token model)
      -> (rewards, evaluation batch) per micro-batch, on the CPU, gathered from every DP rank
      -> plugin.evaluation_metrics(outputs, cfg) -> {name: value}, the same on every rank

:func:`gather_over_data_parallel` is the one gather of per-rank results (scoring uses it too);
:func:`finite_for_json` makes metrics JSON-safe (NaN and inf become null).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypeVar

from .. import _contract
from ..data._batching import eval_batches, group_by_length, max_tokens_per_micro_batch, sample_costs
from ..progress import progress_bar

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from omegaconf import DictConfig

    from ..._protocol import RewardModelPlugin, Tokenizer
    from ..parallel import ParallelInfo

__all__ = ["evaluate_dataset", "finite_for_json", "gather_over_data_parallel"]

T = TypeVar("T")


def gather_over_data_parallel(items: list[T], info: ParallelInfo) -> list[T]:
    """Every data-parallel rank's ``items`` (picklable, on the CPU), rank by rank, on every rank.

    One process (``info.dp == 1``): ``items`` itself.
    """
    if info.dp == 1:
        return items
    import torch
    from megatron.core import parallel_state

    gathered: list[Any] = [None] * info.dp
    torch.distributed.all_gather_object(gathered, items, group=parallel_state.get_data_parallel_group())
    return [item for part in gathered for item in part]


def evaluate_dataset(
    plugin: RewardModelPlugin,
    model: torch.nn.Module,
    dataset: Sequence[Any],
    cfg: DictConfig,
    tokenizer: Tokenizer,
    info: ParallelInfo,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """The plugin's evaluation metrics over ``dataset``; batches are split across data-parallel ranks.

    The batch goes to the model's device (:func:`~rm_registry.engine._contract.batch_to`, as in
    training); what ``evaluation_metrics`` reads (:func:`~rm_registry.engine._contract.evaluation_batch`:
    the rewards and the batch without ``tokens``, or the plugin's ``evaluation_batch_keys``) is kept
    on the CPU and, under data parallelism, gathered from the other ranks. Batches hold samples of
    similar length (with ``trainer.rm.group_by_length``) and respect
    ``model.max_tokens_per_micro_batch``. Every rank returns the same metrics.
    """
    import torch

    was_training = model.training
    model.eval()
    max_tokens = max_tokens_per_micro_batch(cfg)
    all_batches = eval_batches(sample_costs(plugin, dataset, tokenizer.pad_id),
                               micro_batch_size=int(cfg.model.micro_batch_size), max_tokens=max_tokens,
                               sort=group_by_length(cfg))
    mine = all_batches[info.dp_rank :: info.dp]
    outputs: list[tuple[int, torch.Tensor, dict[str, Any]]] = []
    bar = progress_bar(len(mine), "evaluate", enabled=progress and info.is_main)
    batches = (_contract.batch_to(plugin.collate([dataset[i] for i in idx], tokenizer.pad_id), info.device)
               for idx in mine)
    with torch.no_grad():
        for number, (batch, rewards) in zip(range(info.dp_rank, len(all_batches), info.dp),
                                            _contract.batches_rewards(model, batches, max_tokens)):
            outputs.append((number, rewards.float().cpu(), _contract.evaluation_batch(plugin, batch)))
            bar.update(1)
    bar.close()
    outputs = gather_over_data_parallel(outputs, info)
    outputs.sort(key=lambda item: item[0])
    metrics = plugin.evaluation_metrics([(r, b) for _, r, b in outputs], cfg)
    model.train(was_training)
    return metrics


def finite_for_json(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """NaN/inf become null so that every line stays valid JSON."""
    def fix(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        return v

    return {k: fix(v) for k, v in metrics.items()}
