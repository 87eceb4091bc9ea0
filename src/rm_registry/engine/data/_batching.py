"""Which samples go into which optimizer step and which forward pass.

Three things, for every plugin (samples are opaque: their sequence lengths are read from the
plugin's own ``collate`` of each sample alone, once per dataset):

* :class:`StepSampler`: the samples of optimizer step ``t``. The epoch's shuffled order is cut
  into *mega-batches* of ``trainer.rm.length_group_batches`` global batches; inside each, samples
  are sorted by length and cut into global batches, whose order is then shuffled (seeded). A step
  thus holds samples of similar length, so little of a batch is padding. Everything depends only
  on the seed, the epoch and the dataset: never on the parallel layout.
* :func:`micro_batches`: one data-parallel rank's share of a step, split into micro-batches of at
  most ``model.micro_batch_size`` samples and at most ``model.max_tokens_per_micro_batch`` padded
  tokens (sequences x longest sequence). A sample above the budget on its own gets a micro-batch
  of its own, whose forward pass :func:`forward_in_chunks` splits by sequences.
* :func:`eval_batches`: evaluation batches of length-sorted samples (the same caps).

The config keys these read (``model.max_tokens_per_micro_batch``, ``trainer.rm.group_by_length``,
``trainer.rm.length_group_batches``) are read here only: :func:`max_tokens_per_micro_batch`,
:func:`group_by_length`, :func:`length_group_batches` (their defaults are ``defaults.yaml``'s).

The training loss of a micro-batch is weighted by its share of the rank's samples, so the step's
loss and gradient are still the mean over the step's samples, whatever the micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover
    from omegaconf import DictConfig

    from ..._protocol import RewardModelPlugin

__all__ = ["SampleCosts", "StepSampler", "epoch_order", "eval_batches", "forward_in_chunks", "group_by_length",
           "length_group_batches", "max_tokens_per_micro_batch", "micro_batches", "sample_costs"]


def max_tokens_per_micro_batch(cfg: DictConfig) -> int | None:
    """``model.max_tokens_per_micro_batch`` (padded tokens per forward pass), or ``None``: no cap."""
    value = cfg.model.max_tokens_per_micro_batch
    return None if value is None else int(value)


def group_by_length(cfg: DictConfig) -> bool:
    """``trainer.rm.group_by_length``: steps and evaluation batches of samples of similar length."""
    return bool(cfg.trainer.rm.group_by_length)


def length_group_batches(cfg: DictConfig) -> int:
    """Global batches per length-sorted mega-batch (:class:`StepSampler`); 0 when not grouping by length."""
    return int(cfg.trainer.rm.length_group_batches) if group_by_length(cfg) else 0


@dataclass(frozen=True)
class SampleCosts:
    """Per-sample sizes: ``sequences[i]`` rows and ``longest[i]`` tokens in its longest row."""

    sequences: list[int]
    longest: list[int]

    def padded(self, indices: Sequence[int]) -> int:
        """Padded tokens of one batch of these samples: all its rows times its longest row."""
        if not indices:
            return 0
        return sum(self.sequences[i] for i in indices) * max(self.longest[i] for i in indices)


def sample_costs(plugin: RewardModelPlugin, dataset: Sequence[Any], pad_id: int) -> SampleCosts:
    """Rows and longest row of every sample, from ``plugin.collate([sample])["lengths"]`` (from the
    offsets of a token dataset, whose rows are the sample's sequences, without making samples)."""
    counts = getattr(dataset, "sequence_counts", None)
    known = counts() if callable(counts) else None
    if known is not None:
        return SampleCosts(list(known[0]), list(known[1]))
    sequences, longest = [], []
    for i in range(len(dataset)):
        lengths = plugin.collate([dataset[i]], pad_id)["lengths"]
        sequences.append(int(lengths.numel()))
        longest.append(int(lengths.max()) if lengths.numel() else 0)
    return SampleCosts(sequences, longest)


def epoch_order(n: int, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """``range(n)`` in the seeded random order of ``epoch`` (or in order without ``shuffle``)."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


@dataclass
class StepSampler:
    """Sample indices of each optimizer step (see the module docstring).

    Args:
        costs: The training set's :class:`SampleCosts`.
        global_batch: Samples per step (``model.global_batch_size``).
        seed: The run's seed.
        shuffle: ``trainer.rm.train_random_sampler``; without it, the file order.
        group_batches: Global batches per length-sorted mega-batch; 0 or 1: no grouping.
    """

    costs: SampleCosts
    global_batch: int
    seed: int
    shuffle: bool = True
    group_batches: int = 0
    _epoch: int = field(default=-1, repr=False)
    _order: list[list[int]] = field(default_factory=list, repr=False)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.costs.sequences) // self.global_batch

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        gbs = self.global_batch
        order = epoch_order(len(self.costs.sequences), epoch, self.seed, self.shuffle)
        order = order[: self.steps_per_epoch * gbs]  # the last incomplete batch is dropped
        if not self.shuffle or self.group_batches <= 1:
            return [order[i : i + gbs] for i in range(0, len(order), gbs)]
        mega = gbs * self.group_batches
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.costs.longest[i])
            batches += [chunk[i : i + gbs] for i in range(0, len(chunk), gbs)]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 7_919)
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def batch(self, step: int) -> list[int]:
        """The ``global_batch`` sample indices of step ``step`` (0-based)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._order, self._epoch = self._epoch_batches(epoch), epoch
        return list(self._order[pos])


def _split(indices: Sequence[int], costs: SampleCosts, max_samples: int, max_tokens: int | None) -> list[list[int]]:
    """Consecutive runs of ``indices`` within both caps (a sample above ``max_tokens`` goes alone)."""
    out: list[list[int]] = []
    current: list[int] = []
    for i in indices:
        candidate = [*current, i]
        if current and (len(candidate) > max_samples or (max_tokens is not None and costs.padded(candidate) > max_tokens)):
            out.append(current)
            candidate = [i]
        current = candidate
    if current:
        out.append(current)
    return out


def micro_batches(step_indices: Sequence[int], costs: SampleCosts, *, dp: int, dp_rank: int,
                  micro_batch_size: int, max_tokens: int | None, sort: bool) -> list[list[int]]:
    """This data-parallel rank's micro-batches of one step.

    With ``sort`` the step's samples are first ordered by length (longest first; ties keep their
    order), so that each rank's micro-batches pad little. The rank's share is the same
    ``len(step_indices) / dp`` samples whatever the budget.
    """
    indices = list(step_indices)
    if sort:
        indices.sort(key=lambda i: -costs.longest[i])
    per_rank = len(indices) // dp
    mine = indices[dp_rank * per_rank : (dp_rank + 1) * per_rank]
    return _split(mine, costs, micro_batch_size, max_tokens)


def eval_batches(costs: SampleCosts, *, micro_batch_size: int, max_tokens: int | None, sort: bool) -> list[list[int]]:
    """All evaluation batches, in a layout-independent order (ranks take every ``dp``-th one):
    longest samples first with ``sort``, else in file order."""
    indices = list(range(len(costs.sequences)))
    if sort:
        indices.sort(key=lambda i: -costs.longest[i])
    return _split(indices, costs, micro_batch_size, max_tokens)


def forward_in_chunks(model: Callable[..., torch.Tensor], tokens: torch.Tensor, lengths: torch.Tensor,
                      max_tokens: int | None, positions: torch.Tensor | None = None) -> torch.Tensor:
    """``model(tokens [N, S], lengths [N])`` with at most ``max_tokens`` padded tokens per call.

    Rows are split into consecutive chunks, each trimmed to its own longest row; outputs are
    concatenated (per-token outputs ``[n, s, K]`` are zero-padded back to S). Gradients flow
    through every chunk. One row always fits: ``max_tokens`` is at least the longest sequence.

    With ``positions [M, 2]`` (a batch's ``reward_positions``: ``(row, token index)``) the model is
    called as ``model(tokens, lengths, positions=...)`` and the result is ``[M, K]`` in the order of
    ``positions``, whichever chunk each row falls in.
    """
    n, s = tokens.shape
    if max_tokens is None or n * s <= max_tokens:
        return model(tokens, lengths) if positions is None else model(tokens, lengths, positions=positions)
    outs = []
    order = []
    start = 0
    while start < n:
        end = start + 1
        while end < n and (end + 1 - start) * int(lengths[start : end + 1].max()) <= max_tokens:
            end += 1
        width = int(lengths[start:end].max())
        if positions is None:
            out = model(tokens[start:end, :width], lengths[start:end])
            if out.dim() == 3 and width < s:  # per-token outputs [n, width, K]
                out = torch.nn.functional.pad(out, (0, 0, 0, s - width))
        else:
            inside = ((positions[:, 0] >= start) & (positions[:, 0] < end)).nonzero().squeeze(1)
            order.append(inside)
            local = positions[inside] - torch.tensor([start, 0], device=positions.device)
            out = model(tokens[start:end, :width], lengths[start:end], positions=local)
        outs.append(out)
        start = end
    joined = torch.cat(outs, dim=0)
    if positions is None:
        return joined
    inverse = torch.empty_like(positions[:, 0])
    inverse[torch.cat(order)] = torch.arange(positions.shape[0], device=positions.device)
    return joined[inverse]
