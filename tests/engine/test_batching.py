"""Length-grouped steps, micro-batches under a token budget, and chunked forward passes."""

from __future__ import annotations

import random

import pytest
import torch

from rm_registry import ConfigError
from rm_registry.engine.data._batching import (
    SampleCosts,
    StepSampler,
    eval_batches,
    forward_in_chunks,
    micro_batches,
)


def _costs(n: int = 400, seed: int = 0, max_rows: int = 1) -> SampleCosts:
    rng = random.Random(seed)
    return SampleCosts([rng.randint(1, max_rows) for _ in range(n)],
                       [max(2, int(rng.lognormvariate(4, 0.7))) for _ in range(n)])


def _padded_total(costs: SampleCosts, batches: list[list[int]], size: int) -> int:
    return sum(costs.padded(b[i : i + size]) for b in batches for i in range(0, len(b), size))


def test_grouped_steps_are_seeded_partitions_with_less_padding() -> None:
    costs = _costs()
    grouped = StepSampler(costs, 16, seed=3, group_batches=5)
    again = StepSampler(costs, 16, seed=3, group_batches=5)
    steps = [grouped.batch(t) for t in range(grouped.steps_per_epoch)]
    assert steps == [again.batch(t) for t in range(again.steps_per_epoch)]  # seeded
    assert sorted(i for s in steps for i in s) == sorted(set(i for s in steps for i in s))  # no repeats
    assert len({i for s in steps for i in s}) == 400 // 16 * 16
    assert [grouped.batch(t + grouped.steps_per_epoch) for t in range(3)] != steps[:3]  # a new epoch reshuffles
    assert StepSampler(costs, 16, seed=4, group_batches=5).batch(0) != steps[0]
    plain = StepSampler(costs, 16, seed=3, group_batches=0)
    plain_steps = [plain.batch(t) for t in range(plain.steps_per_epoch)]
    assert _padded_total(costs, steps, 8) < 0.8 * _padded_total(costs, plain_steps, 8)


@pytest.mark.parametrize("max_tokens", [None, 600, 150])
def test_micro_batches_cover_the_step_the_same_way_under_every_layout(max_tokens) -> None:
    costs = _costs(max_rows=4)
    step = StepSampler(costs, 16, seed=1, group_batches=5).batch(7)
    for dp in (1, 2, 4):
        shares = [micro_batches(step, costs, dp=dp, dp_rank=r, micro_batch_size=4, max_tokens=max_tokens, sort=True)
                  for r in range(dp)]
        for share in shares:
            assert sum(len(m) for m in share) == 16 // dp  # every rank the same number of samples
            for m in share:
                assert len(m) <= 4
                assert max_tokens is None or len(m) == 1 or costs.padded(m) <= max_tokens
        assert sorted(i for share in shares for m in share for i in m) == sorted(step)


def test_token_budget_splits_micro_batches() -> None:
    costs = SampleCosts([2, 2, 2, 2, 9], [100, 90, 80, 10, 50])
    assert micro_batches(range(5), costs, dp=1, dp_rank=0, micro_batch_size=8, max_tokens=None, sort=True) == [
        [0, 1, 2, 4, 3]]
    # Longest first: [0, 1] is 4 rows x 100 = 400; [2] + [4] would be 11 x 80 = 880 > 500: 4 goes alone.
    assert micro_batches(range(5), costs, dp=1, dp_rank=0, micro_batch_size=8, max_tokens=500, sort=True) == [
        [0, 1], [2], [4], [3]]


def test_eval_batches_hold_every_sample_longest_first() -> None:
    costs = _costs(50)
    batches = eval_batches(costs, micro_batch_size=4, max_tokens=None, sort=True)
    assert sorted(i for b in batches for i in b) == list(range(50))
    assert all(len(b) <= 4 for b in batches)
    lengths = [costs.longest[i] for b in batches for i in b]
    assert lengths == sorted(lengths, reverse=True)


@pytest.mark.parametrize("pooling", [{}, {"output_sequence": True}])
def test_forward_in_chunks_respects_the_budget_and_gives_the_same_rewards(build_model, pooling) -> None:
    model = build_model(**pooling).eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (7, 30), generator=g)
    lengths = torch.tensor([30, 28, 20, 9, 9, 4, 2])
    calls: list[tuple[int, int]] = []

    def counting(t: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(t.shape))
        return model(t, n)

    with torch.no_grad():
        whole = model(tokens, lengths)
        chunked = forward_in_chunks(counting, tokens, lengths, 60)
    assert len(calls) > 1 and all(rows * width <= 60 for rows, width in calls)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def test_forward_in_chunks_with_positions_keeps_their_order(build_model) -> None:
    """Rows split into chunks, each chunk's points read there, the result in the points' own order."""
    model = build_model(num_outputs=2).eval()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (6, 30), generator=g)
    lengths = torch.tensor([30, 25, 20, 9, 6, 2])
    points = torch.tensor([[5, 1], [0, 29], [3, 8], [0, 3], [4, 5], [1, 0], [2, 19], [5, 0]])
    calls: list[int] = []

    def counting(t: torch.Tensor, n: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        calls.append(int(positions.shape[0]))
        return model(t, n, positions=positions)

    with torch.no_grad():
        whole = model(tokens, lengths, positions=points)
        chunked = forward_in_chunks(counting, tokens, lengths, 60, positions=points)
    assert len(calls) > 1 and sum(calls) == 8
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)


def test_micro_batch_weights_keep_the_step_gradient(build_model) -> None:
    """Loss weighted by each micro-batch's share of samples: the same gradient as one big batch."""
    from rm_binary_ranking import plugin
    from rm_binary_ranking._data import PreferencePair

    from rm_registry.engine.config import build_config

    cfg = build_config(plugin, overrides=["model.num_layers=2", "model.hidden_size=32", "model.encoder_seq_length=32"])
    rng = random.Random(0)
    samples = [PreferencePair([rng.randrange(256) for _ in range(rng.randint(2, 30))],
                              [rng.randrange(256) for _ in range(rng.randint(2, 30))]) for _ in range(6)]
    costs = SampleCosts([2] * 6, [max(len(s.chosen), len(s.rejected)) for s in samples])

    def grads(max_tokens: int | None, mbs: int) -> dict[str, torch.Tensor]:
        model = build_model()
        for micro in micro_batches(range(6), costs, dp=1, dp_rank=0, micro_batch_size=mbs, max_tokens=max_tokens,
                                   sort=True):
            batch = plugin.collate([samples[i] for i in micro], 257)
            loss, _ = plugin.loss(forward_in_chunks(model, batch["tokens"], batch["lengths"], max_tokens), batch, cfg)
            (loss * len(micro) / 6).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    want = grads(None, 6)
    for max_tokens, mbs in ((None, 4), (64, 6), (32, 6)):
        got = grads(max_tokens, mbs)
        for name, g in want.items():
            torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_budget_below_the_sequence_length_is_refused() -> None:
    from rm_binary_ranking import plugin

    from rm_registry.engine.config import build_config

    with pytest.raises(ConfigError, match="model.max_tokens_per_micro_batch=100 is smaller than"):
        build_config(plugin, overrides=["model.encoder_seq_length=128", "model.max_tokens_per_micro_batch=100"])
