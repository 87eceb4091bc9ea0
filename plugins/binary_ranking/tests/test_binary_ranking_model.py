"""The plugin's model class on the tiny megatron-core model: forward, loss, backward on sample data."""

from __future__ import annotations

import pytest
import torch

TINY = ("model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4")


@pytest.fixture(scope="module")
def setup(plugin, tokenizer):
    from rm_registry.engine.config import build_config

    cfg = build_config(plugin, overrides=list(TINY))
    torch.manual_seed(0)
    model = plugin.model_class.from_config(cfg, vocab_size=tokenizer.vocab_size)
    train = plugin.build_datasets({"train": plugin.sample_data()["train"]}, tokenizer, cfg)["train"]
    return cfg, model, train


def test_model_class_is_the_engine_reward_model_with_one_output(plugin, setup) -> None:
    from rm_registry.engine.model import RewardModel

    _, model, _ = setup
    assert plugin.model_class.__name__ == "BinaryRankingRewardModel"
    assert issubclass(plugin.model_class, RewardModel) and isinstance(model, plugin.model_class)


def test_forward_loss_backward_on_sample_pairs(plugin, tokenizer, setup) -> None:
    from rm_registry.engine.config import build_config

    cfg, model, train = setup
    batch = plugin.collate([train[i] for i in range(4)], tokenizer.pad_id)
    model.zero_grad()
    rewards = model(batch["tokens"], batch["lengths"])
    assert rewards.shape == (8, 1) and rewards.dtype == torch.float32
    loss, metrics = plugin.loss(rewards, batch, cfg)
    assert torch.isfinite(loss) and set(metrics) >= {"loss", "accuracy", "reward_mean", "reward_std"}
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert not [n for n, g in grads.items() if g is None], "parameters outside the graph"
    assert all(torch.isfinite(g).all() for g in grads.values())
    # Bradley-Terry only sees r_c - r_r, so a shift of every reward (the head bias) gets no
    # gradient; everything else does.
    zero = [n for n, g in grads.items() if not g.abs().sum() and n != "head.bias"]
    assert not zero, f"no gradient reaches {zero}"
    assert grads["head.bias"].abs().max() < 1e-6
    # Reward centering pins the shift: now the bias learns too.
    centered = build_config(plugin, overrides=[*TINY, "model.binary_ranking.center_rewards_coefficient=0.1"])
    model.zero_grad()
    loss, _ = plugin.loss(model(batch["tokens"], batch["lengths"]), batch, centered)
    loss.backward()
    assert model.head.bias.grad.abs().max() > 1e-6


def test_padding_to_the_batch_does_not_change_rewards(plugin, tokenizer, setup) -> None:
    _, model, train = setup
    pairs = [train[i] for i in range(3)]
    model.eval()
    with torch.no_grad():
        together = plugin.collate(pairs, tokenizer.pad_id)
        r_all = model(together["tokens"], together["lengths"])[:, 0]
        alone = []
        for pair in pairs:
            b = plugin.collate([pair], tokenizer.pad_id)
            alone.append(model(b["tokens"], b["lengths"])[:, 0])
    model.train()
    chosen = torch.stack([a[0] for a in alone])
    rejected = torch.stack([a[1] for a in alone])
    torch.testing.assert_close(r_all, torch.cat([chosen, rejected]), rtol=1e-4, atol=1e-5)
