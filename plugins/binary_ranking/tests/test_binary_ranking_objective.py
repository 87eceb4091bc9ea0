"""Batches, the Bradley-Terry loss, metrics and scoring, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from rm_binary_ranking._data import PreferencePair


def _nll(x: float) -> float:
    """-log(sigmoid(x)) computed by hand."""
    return math.log1p(math.exp(-x))


def _batch(margins: list[float | None]) -> dict[str, torch.Tensor]:
    from rm_binary_ranking import plugin

    return plugin.collate([PreferencePair([1, 2], [3, 4], m) for m in margins], pad_id=0)


def test_collate_layout_and_padding_to_longest(plugin) -> None:
    samples = [
        PreferencePair([5, 6, 7], [8, 9], 1.5),
        PreferencePair([10], [11, 12, 13, 14], None),
        PreferencePair([15, 16], [17], -2.0),
    ]
    batch = plugin.collate(samples, pad_id=99)
    assert set(batch) == {"tokens", "lengths", "margin", "has_margin"}
    assert batch["tokens"].dtype == torch.long and batch["lengths"].dtype == torch.long
    assert batch["tokens"].tolist() == [
        [5, 6, 7, 99],  # chosen rows first ...
        [10, 99, 99, 99],
        [15, 16, 99, 99],
        [8, 9, 99, 99],  # ... then the rejected rows, in the same pair order
        [11, 12, 13, 14],
        [17, 99, 99, 99],
    ]
    assert batch["lengths"].tolist() == [3, 1, 2, 2, 4, 1]
    assert batch["margin"].tolist() == [1.5, 0.0, -2.0]
    assert batch["has_margin"].tolist() == [True, False, True]
    # Padded to the longest row of this batch, not to model.encoder_seq_length.
    assert plugin.collate(samples[:1], pad_id=0)["tokens"].shape == (2, 3)


def test_plain_bradley_terry_loss_and_metrics(plugin, make_cfg) -> None:
    cfg = make_cfg()
    batch = _batch([None, None, None])
    rewards = torch.tensor([[2.0], [0.5], [-1.0], [1.0], [1.5], [-1.0]], requires_grad=True)
    loss, metrics = plugin.loss(rewards, batch, cfg)
    diffs = [1.0, -1.0, 0.0]
    expected = sum(_nll(d) for d in diffs) / 3
    assert loss.dim() == 0 and loss.item() == pytest.approx(expected, rel=1e-6)
    all_r = [2.0, 0.5, -1.0, 1.0, 1.5, -1.0]
    mean = sum(all_r) / 6
    assert metrics == pytest.approx(
        {
            "loss": expected,
            "accuracy": 1 / 3,  # a tie is not a win
            "chosen_reward_mean": 0.5,
            "rejected_reward_mean": 0.5,
            "reward_mean": mean,
            "reward_std": math.sqrt(sum((r - mean) ** 2 for r in all_r) / 6),
        }
    )
    assert all(type(v) is float for v in metrics.values())
    loss.backward()
    # d loss / d r_c = -sigmoid(-d) / P, and the opposite for r_r.
    sig = [1 / (1 + math.exp(d)) for d in diffs]
    assert rewards.grad[:, 0].tolist() == pytest.approx([-s / 3 for s in sig] + [s / 3 for s in sig], rel=1e-5)


def test_margin_is_subtracted(plugin, make_cfg) -> None:
    batch = _batch([1.0, None])
    rewards = torch.tensor([[3.0], [1.0], [0.5], [0.0]])
    loss, metrics = plugin.loss(rewards, batch, make_cfg())
    assert loss.item() == pytest.approx((_nll(2.5 - 1.0) + _nll(1.0)) / 2, rel=1e-6)
    assert metrics["accuracy"] == 1.0  # accuracy ignores the margin
    off, _ = plugin.loss(rewards, batch, make_cfg("model.binary_ranking.use_margin=false"))
    assert off.item() == pytest.approx((_nll(2.5) + _nll(1.0)) / 2, rel=1e-6)


def test_margin_scales_in_scale_mode(plugin, make_cfg) -> None:
    batch = _batch([2.0, None, 0.0])
    rewards = torch.tensor([[1.0], [0.0], [1.0], [0.0], [1.0], [3.0]])
    loss, _ = plugin.loss(rewards, batch, make_cfg("model.binary_ranking.margin_mode=scale"))
    expected = (2.0 * _nll(1.0) + 1.0 * _nll(-1.0) + 0.0 * _nll(-2.0)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_center_rewards_term(plugin, make_cfg) -> None:
    batch = _batch([None, None])
    rewards = torch.tensor([[1.0], [-0.5], [2.0], [0.5]])
    loss, metrics = plugin.loss(rewards, batch, make_cfg("model.binary_ranking.center_rewards_coefficient=0.01"))
    bt = (_nll(-1.0) + _nll(-1.0)) / 2
    center = 0.01 * ((1.0 + 2.0) ** 2 + (-0.5 + 0.5) ** 2) / 2
    assert loss.item() == pytest.approx(bt + center, rel=1e-6)
    assert metrics["loss"] == pytest.approx(bt + center, rel=1e-6)


def test_loss_accepts_flat_rewards_and_refuses_wrong_shapes(plugin, make_cfg) -> None:
    cfg = make_cfg()
    batch = _batch([None, None])
    flat, _ = plugin.loss(torch.tensor([1.0, 2.0, 0.0, 0.0]), batch, cfg)
    col, _ = plugin.loss(torch.tensor([[1.0], [2.0], [0.0], [0.0]]), batch, cfg)
    assert flat.item() == col.item()
    with pytest.raises(ValueError, match=r"rewards \[2P, 1\]"):
        plugin.loss(torch.zeros(4, 3), batch, cfg)
    with pytest.raises(ValueError, match="expected 4 rows"):
        plugin.loss(torch.zeros(6, 1), batch, cfg)


def test_loss_of_an_empty_batch_is_zero_and_connected(plugin, make_cfg) -> None:
    rewards = torch.zeros(0, 1, requires_grad=True)
    loss, _ = plugin.loss(rewards, plugin.collate([], pad_id=0), make_cfg())
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()


def test_loss_in_bfloat16_is_computed_in_float32(plugin, make_cfg) -> None:
    rewards = torch.tensor([[0.3], [0.1]], dtype=torch.bfloat16)
    loss, _ = plugin.loss(rewards, _batch([None]), make_cfg())
    assert loss.dtype == torch.float32


def test_evaluation_metrics_are_pair_weighted(plugin, make_cfg) -> None:
    cfg = make_cfg("model.binary_ranking.center_rewards_coefficient=0.1")
    # Batch sizes 1 and 3: a per-batch average would weigh the single pair like three.
    b1, r1 = _batch([0.5]), torch.tensor([[1.0], [0.25]])
    b2, r2 = _batch([None, 1.0, None]), torch.tensor([[0.5], [2.0], [-1.0], [1.0], [-0.5], [0.25]])
    metrics = plugin.evaluation_metrics([(r1, b1), (r2, b2)], cfg)
    # By hand, pair by pair (chosen, rejected, margin): -log sigmoid(c - r - m) + 0.1 * (c + r)^2.
    pairs = [(1.0, 0.25, 0.5), (0.5, 1.0, 0.0), (2.0, -0.5, 1.0), (-1.0, 0.25, 0.0)]
    losses = [_nll(c - r - m) + 0.1 * (c + r) ** 2 for c, r, m in pairs]
    rewards = [c for c, _, _ in pairs] + [r for _, r, _ in pairs]
    mean = sum(rewards) / 8
    assert metrics == pytest.approx({
        "loss": sum(losses) / 4,  # a per-batch mean would be (losses[0] + sum(losses[1:]) / 3) / 2
        "accuracy": 0.5,
        "chosen_reward_mean": 0.625,
        "rejected_reward_mean": 0.25,
        "reward_mean": mean,
        "reward_std": math.sqrt(sum((x - mean) ** 2 for x in rewards) / 8),
        "num_pairs": 4,
    }, rel=1e-6)
    assert metrics["num_pairs"] == 4 and type(metrics["num_pairs"]) is int
    assert plugin.evaluation_metrics([], cfg) == {
        "loss": None, "accuracy": None, "chosen_reward_mean": None, "rejected_reward_mean": None,
        "reward_mean": None, "reward_std": None, "num_pairs": 0,
    }


def test_score_outputs(plugin, make_cfg) -> None:
    out = plugin.score_outputs(torch.tensor([[0.25], [-1.5]]), make_cfg())
    assert out == [{"reward": 0.25}, {"reward": -1.5}]
    assert all(type(o["reward"]) is float for o in out)
    assert plugin.score_outputs(torch.zeros(0, 1), make_cfg()) == []
    with pytest.raises(ValueError, match=r"\[B, 1\]"):
        plugin.score_outputs(torch.zeros(2, 2), make_cfg())
