"""Reduction of per-batch training metrics by name: over micro-batches, then data-parallel ranks.

Each batch's metrics count with the weight the plugin gives (``metric_weight(batch)``, 1 by
default), so ``mean = sum(weight * value) / sum(weight)`` over every batch of every rank, whatever
the number of micro-batches per rank. Every batch must report the same metric names: a batch or a
rank that differs stops training with an error naming the names that differ (a silent
misalignment would log one metric under another's name).
"""

from __future__ import annotations

import math
import zlib
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..._errors import TrainingError

if TYPE_CHECKING:  # pragma: no cover
    from ..parallel import ParallelInfo

__all__ = ["MetricMeans"]


def _difference(a: set[str], b: set[str]) -> str:
    parts = []
    if a - b:
        parts.append(f"only in the first: {', '.join(sorted(a - b))}")
    if b - a:
        parts.append(f"only in the other: {', '.join(sorted(b - a))}")
    return "; ".join(parts)


class MetricMeans:
    """Weighted sums of one optimizer step's metrics, by name.

    Args:
        where: What the metrics belong to, for messages (``"step 12"``).
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.order: list[str] | None = None  # names in the first batch's order (for the log line)
        self.sums: dict[str, float] = {}
        self.weight = 0.0

    def add(self, metrics: Mapping[str, Any], weight: float) -> None:
        """Add one batch's metrics with ``weight`` (0: checked for names, not counted).

        Raises:
            TrainingError: the names differ from the first batch's, naming the difference.
        """
        if self.order is None:
            self.order = list(metrics)
            self.sums = dict.fromkeys(self.order, 0.0)
        elif set(metrics) != set(self.order):
            raise TrainingError(
                f"{self.where}: loss() returned metrics {sorted(metrics)} for one micro-batch and "
                f"{sorted(self.order)} for another ({_difference(set(self.order), set(metrics))}); "
                "every batch must return the same metric names (the empty one too)"
            )
        if weight > 0:
            for name, value in metrics.items():
                self.sums[name] += weight * float(value)
            self.weight += weight

    def reduce(self, info: ParallelInfo, totals: Mapping[str, float] | None = None, *,
               group: Any = None) -> dict[str, float]:
        """Weighted means over this rank's batches and every data-parallel rank (same on all ranks).

        ``totals`` (``tokens``, ...) are summed over the ranks instead. A metric whose batches all
        had weight 0 is NaN (logged as null). ``group``: the data-parallel process group
        (default: megatron-core's).

        Raises:
            TrainingError: the ranks report different metric names, naming them per rank.
        """
        names = sorted(self.order or [])
        totals = dict(totals or {})
        vec = torch.tensor([*(self.sums[n] for n in names), self.weight, *totals.values()], dtype=torch.float64)
        if info.dp > 1:
            if group is None:
                from megatron.core import parallel_state

                group = parallel_state.get_data_parallel_group()
            self._same_names_on_every_rank(names, info, group)
            vec = vec.to(info.device)
            torch.distributed.all_reduce(vec, group=group)
            vec = vec.cpu()
        values = vec.tolist()
        weight = values[len(names)]
        means = {n: (values[i] / weight if weight > 0 else math.nan) for i, n in enumerate(names)}
        out = {n: means[n] for n in (self.order or [])}
        out.update(zip(totals, values[len(names) + 1 :]))
        return out

    def _same_names_on_every_rank(self, names: list[str], info: ParallelInfo, group: Any) -> None:
        """One tiny all-reduce of a checksum of the names; the names themselves only on a mismatch."""
        check = zlib.crc32("\0".join(names).encode("utf-8"))
        pair = torch.tensor([check, -check], dtype=torch.float64, device=info.device)
        torch.distributed.all_reduce(pair, op=torch.distributed.ReduceOp.MAX, group=group)
        if float(pair[0]) == -float(pair[1]):
            return
        gathered: list[Any] = [None] * info.dp
        torch.distributed.all_gather_object(gathered, names, group=group)
        per_rank = "; ".join(f"data-parallel rank {r}: {', '.join(n) or 'none'}" for r, n in enumerate(gathered))
        raise TrainingError(
            f"{self.where}: data-parallel ranks returned different metric names from loss() ({per_rank}); "
            "every batch must return the same metric names (the empty one too)"
        )
