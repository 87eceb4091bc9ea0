"""Masked MSE, the all-masked batch, evaluation metrics against numpy, and scoring output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

M = -100.0
NAMES = "model.regression.attribute_names=[a,b,c]"


@pytest.fixture()
def cfg(make_cfg):  # type: ignore[no-untyped-def]
    return make_cfg(NAMES)


def test_masked_mse_by_hand(plugin, cfg) -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], requires_grad=True)  # [B=2, K=3]
    labels = torch.tensor([[2.0, M, 1.0], [M, M, 3.0]])
    loss, metrics = plugin.loss(rewards, {"labels": labels}, cfg)
    # Unmasked: (1-2)^2 + (3-1)^2 + (0-3)^2 = 1 + 4 + 9 = 14 over 3 entries.
    assert loss.item() == pytest.approx(14 / 3)
    assert metrics == {"loss": pytest.approx(14 / 3), "mse": pytest.approx(14 / 3), "labelled": 3.0}
    loss.backward()
    expected = torch.tensor([[2 * (1 - 2), 0, 2 * (3 - 1)], [0, 0, 2 * (0 - 3)]]) / 3
    assert torch.allclose(rewards.grad, expected)


def test_all_masked_batch_is_zero_finite_and_gives_zero_gradients(plugin, cfg) -> None:
    rewards = torch.tensor([[1e4, -3.0, 0.5], [2.0, 7.0, -1.0]], requires_grad=True)
    loss, metrics = plugin.loss(rewards, {"labels": torch.full((2, 3), M)}, cfg)
    assert loss.item() == 0.0 and torch.isfinite(loss)
    assert loss.requires_grad  # connected to the graph: backward works
    assert metrics == {"loss": 0.0, "mse": 0.0, "labelled": 0.0}
    loss.backward()
    assert rewards.grad is not None and torch.equal(rewards.grad, torch.zeros(2, 3))


def test_masked_entries_never_reach_the_gradient(plugin, cfg) -> None:
    # A huge prediction at a masked entry must not leak NaN or inf into the gradient.
    rewards = torch.tensor([[float("inf"), 1.0, 1.0]], requires_grad=True)
    loss, _ = plugin.loss(rewards, {"labels": torch.tensor([[M, 2.0, 1.0]])}, cfg)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert torch.isfinite(rewards.grad).all()


def test_shape_mismatch_is_an_error_not_a_broadcast(plugin, cfg) -> None:
    # NeMo-Aligner broadcast [B, 1] against [B, K] labels silently; we refuse.
    with pytest.raises(ValueError, match=r"rewards have shape \(2, 1\), expected \[B, 3\]"):
        plugin.loss(torch.zeros(2, 1), {"labels": torch.zeros(2, 3)}, cfg)
    with pytest.raises(ValueError, match="labels have shape"):
        plugin.loss(torch.zeros(2, 3), {"labels": torch.zeros(3, 3)}, cfg)
    with pytest.raises(KeyError, match="no 'labels'"):
        plugin.loss(torch.zeros(2, 3), {}, cfg)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def test_evaluation_metrics_against_numpy(plugin, make_cfg) -> None:
    cfg = make_cfg(NAMES, "model.regression.attribute_weights=[0.5,2,-1]")
    gen = np.random.default_rng(0)
    pred = gen.normal(size=(11, 3))
    labels = gen.integers(0, 5, size=(11, 3)).astype(float)
    labels[gen.random((11, 3)) < 0.25] = M
    labels[:, 2][:1] = M
    # Split into two batches, as the engine does.
    outputs = [
        (torch.tensor(pred[:6], dtype=torch.float32), {"labels": torch.tensor(labels[:6], dtype=torch.float32)}),
        (torch.tensor(pred[6:], dtype=torch.float32), {"labels": torch.tensor(labels[6:], dtype=torch.float32)}),
    ]
    got = plugin.evaluation_metrics(outputs, cfg)
    json.dumps(got, allow_nan=False)
    pred32 = pred.astype(np.float32).astype(float)
    mask = labels != M
    mse = float(((pred32 - labels) ** 2)[mask].mean())
    assert got["mse"] == pytest.approx(mse) and got["loss"] == pytest.approx(mse)
    assert got["count"] == int(mask.sum()) and got["num_samples"] == 11
    baseline = sum(((labels[mask[:, k], k] - labels[mask[:, k], k].mean()) ** 2).sum() for k in range(3))
    assert got["mse_baseline"] == pytest.approx(baseline / mask.sum())
    for k, name in enumerate("abc"):
        p, y = pred32[mask[:, k], k], labels[mask[:, k], k]
        assert got["attributes"][name] == {
            "mse": pytest.approx(float(((p - y) ** 2).mean())),
            "mae": pytest.approx(float(np.abs(p - y).mean())),
            "pearson": pytest.approx(_pearson(p, y)),
            "count": int(mask[:, k].sum()),
        }
    w = np.array([0.5, 2.0, -1.0])
    scalar = pred32 @ w
    full = mask.all(axis=1)
    assert got["reward"]["mean"] == pytest.approx(scalar.mean())
    assert got["reward"]["std"] == pytest.approx(scalar.std())
    assert got["reward"]["count"] == int(full.sum())
    assert got["reward"]["pearson"] == pytest.approx(_pearson(scalar[full], labels[full] @ w))


def test_pearson_is_null_when_undefined(plugin, cfg) -> None:
    rewards = torch.tensor([[1.0, 1.0, 0.0], [1.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    labels = torch.tensor([[0.0, 1.0, 4.0], [1.0, M, M], [2.0, M, M]])
    got = plugin.evaluation_metrics([(rewards, {"labels": labels})], cfg)
    text = json.dumps(got, allow_nan=False)  # valid JSON, no NaN
    assert got["attributes"]["a"]["pearson"] is None  # constant predictions
    assert got["attributes"]["b"]["pearson"] is None and got["attributes"]["b"]["count"] == 1  # one point
    assert got["attributes"]["b"]["mse"] == 0.0
    assert got["reward"]["pearson"] is None and got["reward"]["count"] == 1
    assert "NaN" not in text


def test_evaluation_with_nothing_labelled(plugin, cfg) -> None:
    got = plugin.evaluation_metrics([(torch.zeros(2, 3), {"labels": torch.full((2, 3), M)})], cfg)
    json.dumps(got, allow_nan=False)
    assert got["loss"] == 0.0 and got["mse"] is None and got["count"] == 0
    assert got["attributes"]["a"] == {"mse": None, "mae": None, "pearson": None, "count": 0}


def test_score_outputs_give_the_weighted_scalar_and_the_attributes(plugin, make_cfg) -> None:
    cfg = make_cfg(NAMES, "model.regression.attribute_weights=[0.3,0.74,-0.33]")
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    rows = plugin.score_outputs(rewards, cfg)
    assert rows == [
        {"reward": pytest.approx(0.3 + 1.48 - 0.99), "attributes": {"a": 1.0, "b": 2.0, "c": 3.0}},
        {"reward": pytest.approx(-0.74 - 1.32), "attributes": {"a": 0.0, "b": -1.0, "c": 4.0}},
    ]
    assert all(isinstance(r["reward"], float) for r in rows)
    json.dumps(rows)


def test_score_outputs_default_weights_are_the_mean(plugin, cfg) -> None:
    rows = plugin.score_outputs(torch.tensor([[1.0, 2.0, 6.0]]), cfg)
    assert rows[0]["reward"] == pytest.approx(3.0)


def test_merge_attributes_changes_the_served_shape_not_the_score_output(plugin, make_cfg) -> None:
    # docs/regression.md: merge_attributes switches RegressionRewardModel.infer to the weighted
    # scalar [N, 1]; `score` always writes both the scalar reward and the K attributes.
    weights = "model.regression.attribute_weights=[0.5,2,-1]"
    rewards = torch.tensor([[1.0, 2.0, 6.0], [-1.0, 0.5, 0.0]])
    expected = [{"reward": pytest.approx(0.5 + 4.0 - 6.0), "attributes": {"a": 1.0, "b": 2.0, "c": 6.0}},
                {"reward": pytest.approx(-0.5 + 1.0), "attributes": {"a": -1.0, "b": 0.5, "c": 0.0}}]
    for merge in ("true", "false"):
        assert plugin.score_outputs(rewards, make_cfg(NAMES, weights, f"model.regression.merge_attributes={merge}")) \
            == expected, merge
    with pytest.raises(ValueError, match=r"expected \[B, 3\]"):
        plugin.score_outputs(torch.zeros(1, 1), make_cfg(NAMES, "model.regression.merge_attributes=true"))

    tiny = ("model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4", "model.encoder_seq_length=16")
    tokens, lengths = torch.tensor([[5, 6, 7, 256], [8, 256, 257, 257]]), torch.tensor([4, 2])
    served = {}
    for merge in ("true", "false"):
        cfg = make_cfg(*tiny, NAMES, weights, f"model.regression.merge_attributes={merge}")
        model = plugin.model_class.from_config(cfg, vocab_size=258).eval()
        with torch.no_grad():
            full = model(tokens, lengths)  # [N, K] whatever the flag: what training, evaluate and score use
        assert full.shape == (2, 3)
        served[merge] = (model.infer(tokens, lengths), full)
    merged, full = served["true"]
    assert merged.shape == (2, 1)
    assert merged[:, 0].tolist() == pytest.approx((full @ torch.tensor([0.5, 2.0, -1.0])).tolist(), abs=1e-5)
    assert torch.equal(served["false"][0], served["false"][1])
