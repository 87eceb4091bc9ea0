"""RewardModel: shapes, pooling, padding invariance, fp32 head, gradients, input validation."""

from __future__ import annotations

import pytest
import torch

from rm_registry import ConfigError
from rm_registry.engine.model import RewardModel, padded_vocab_size


def _batch(n: int = 3, s: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 256, (n, s), generator=g)
    lengths = torch.tensor([s, max(1, s // 2), 1][:n])
    return tokens, lengths


def _pad(tokens: torch.Tensor, extra: int, value: int = 257) -> torch.Tensor:
    return torch.cat([tokens, torch.full((tokens.shape[0], extra), value, dtype=tokens.dtype)], dim=1)


@pytest.mark.parametrize("pooling, overrides", [
    ("last", {}),
    ("mean", {"use_avg_pool": True}),
])
def test_pooled_shapes_and_padding_invariance(build_model, pooling: str, overrides: dict) -> None:
    model = build_model(num_outputs=3, **overrides)
    assert model.pooling == pooling and model.num_outputs == 3
    tokens, lengths = _batch()
    rewards = model(tokens, lengths)
    assert rewards.shape == (3, 3) and rewards.dtype == torch.float32
    assert torch.isfinite(rewards).all()
    # Appending padding, or garbage after each row's length, does not change the rewards.
    torch.testing.assert_close(model(_pad(tokens, 7), lengths), rewards, rtol=1e-5, atol=1e-6)
    garbage = tokens.clone()
    garbage[1, lengths[1]:] = 3
    torch.testing.assert_close(model(garbage, lengths), rewards, rtol=1e-5, atol=1e-6)


def test_last_and_mean_pooling_differ(build_model) -> None:
    tokens, lengths = _batch()
    last, mean = build_model()(tokens, lengths), build_model(use_avg_pool=True)(tokens, lengths)
    assert not torch.allclose(last[:2], mean[:2])
    # A one-token sequence: mean over real tokens == last token.
    torch.testing.assert_close(last[2], mean[2])


def test_last_token_reward_equals_unpadded_single_sequence(build_model) -> None:
    model = build_model()
    tokens, lengths = _batch()
    batched = model(tokens, lengths)
    alone = model(tokens[1:2, : lengths[1]], lengths[1:2])
    torch.testing.assert_close(batched[1:2], alone, rtol=1e-5, atol=1e-6)


def test_output_sequence(build_model) -> None:
    model = build_model(num_outputs=2, output_sequence=True)
    tokens, lengths = _batch()
    out = model(tokens, lengths)
    assert out.shape == (3, 10, 2) and out.dtype == torch.float32
    assert (out[1, lengths[1]:] == 0).all() and (out[2, 1:] == 0).all()
    assert (out[0] != 0).any(dim=-1).all()
    torch.testing.assert_close(model(_pad(tokens, 4), lengths)[:, :10], out, rtol=1e-5, atol=1e-6)
    # The per-token value at length-1 is the last-token pooled reward of the same weights.
    pooled = build_model(num_outputs=2)(tokens, lengths)
    torch.testing.assert_close(out[torch.arange(3), lengths - 1], pooled, rtol=1e-5, atol=1e-6)


def test_positions_read_the_head_where_the_per_token_output_has_it(build_model) -> None:
    """``positions [M, 2]`` (a token-level plugin's reward_positions): the rows of the per-token
    output at those points, in the order given, with gradients; points outside real tokens refused."""
    tokens, lengths = _batch()
    per_token = build_model(num_outputs=2, output_sequence=True)(tokens, lengths)  # [3, 10, 2]
    model = build_model(num_outputs=2)
    points = torch.tensor([[1, 4], [0, 0], [0, 9], [2, 0], [1, 0]])
    out = model(tokens, lengths, positions=points)
    assert out.shape == (5, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, per_token[points[:, 0], points[:, 1]], rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert model.head.weight.grad is not None
    assert model(tokens, lengths, positions=torch.zeros(0, 2, dtype=torch.long)).shape == (0, 2)
    with pytest.raises(ValueError, match=r"positions\[0\] = \(1, 5\) is outside that row's 5 real tokens"):
        model(tokens, lengths, positions=torch.tensor([[1, 5]]))
    with pytest.raises(ValueError, match=r"positions\[1\] names row 3; the batch has rows 0..2"):
        model(tokens, lengths, positions=torch.tensor([[0, 0], [3, 0]]))
    with pytest.raises(ValueError, match=r"int64 tensor \[M, 2\]"):
        model(tokens, lengths, positions=torch.tensor([1, 2]))


def test_fp32_head_with_bf16_backbone(build_model) -> None:
    model = build_model(params_dtype="bfloat16", force_head_dtype="float32")
    assert model.head.weight.dtype == torch.float32 and model.head.bias.dtype == torch.float32
    assert model.backbone.embedding.word_embeddings.weight.dtype == torch.bfloat16
    tokens, lengths = _batch()
    rewards = model(tokens, lengths)
    assert rewards.dtype == torch.float32 and torch.isfinite(rewards).all()
    plain = build_model(params_dtype="bfloat16")
    assert plain.head.weight.dtype == torch.bfloat16


def test_gradient_reaches_every_parameter(build_model) -> None:
    model = build_model(num_outputs=2)
    tokens, lengths = _batch()
    model(tokens, lengths).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient for {missing}"


def test_same_seed_same_model_different_seed_differs(build_model) -> None:
    tokens, lengths = _batch()
    a, b, c = build_model(seed=5), build_model(seed=5), build_model(seed=6)
    assert torch.equal(a(tokens, lengths), b(tokens, lengths))
    assert not torch.equal(a(tokens, lengths), c(tokens, lengths))


def test_no_vocabulary_projection_and_padded_vocab(build_model) -> None:
    model = build_model()
    assert model.backbone.output_layer.weight is None
    assert model.backbone.embedding.word_embeddings.weight.shape == (256 + 128, 32)
    keys = set(model.sharded_state_dict())
    assert {"head.weight", "head.bias", "backbone.embedding.word_embeddings.weight"} <= keys
    assert not any(k.startswith("backbone.output_layer.weight") for k in keys)


@pytest.mark.parametrize("tokens, lengths, match", [
    (torch.zeros(2, 5, dtype=torch.long), torch.tensor([6, 2]), r"lengths must be in \[1, 5\].*max 6"),
    (torch.zeros(2, 5, dtype=torch.long), torch.tensor([0, 2]), r"lengths must be in \[1, 5\].*min 0"),
    (torch.zeros(2, 5, dtype=torch.long), torch.tensor([1, 2, 3]), r"lengths must have shape \[N\] = \[2\]"),
    (torch.zeros(2, 5), torch.tensor([1, 2]), r"tokens must be an int64 tensor"),
    (torch.zeros(5, dtype=torch.long), torch.tensor([1]), r"tokens must be an int64 tensor \[N, S\]"),
    (torch.zeros(1, 40, dtype=torch.long), torch.tensor([3]), r"sequence length 40 exceeds .* 32"),
    (torch.full((1, 4), 400, dtype=torch.long), torch.tensor([3]), r"token ids must be in \[0, 384\)"),
])
def test_bad_inputs_are_refused(build_model, tokens, lengths, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model()(tokens, lengths)


@pytest.mark.parametrize("overrides, match", [
    ({"hidden_size": 30}, r"model.hidden_size=30 is not divisible by model.num_attention_heads=4"),
    ({"num_layers": 0}, r"model.num_layers=0: expected a positive whole number"),
    ({"params_dtype": "float8"}, r"model.params_dtype='float8'"),
    ({"force_head_dtype": "int8"}, r"model.force_head_dtype='int8'"),
    ({"position_embedding_type": "alibi"}, r"model.position_embedding_type='alibi'"),
    ({"hidden_dropout": 1.5}, r"model.hidden_dropout=1.5"),
    ({"output_sequence": True, "use_avg_pool": True}, r"cannot both be true"),
    ({"tensor_model_parallel_size": 2}, r"tensor_model_parallel_size=2 but the parallel state .* 1"),
    ({"pipeline_model_parallel_size": 2}, r"pipeline_model_parallel_size=2 but the parallel state .* 1"),
    ({"pipeline_model_parallel_size": 3}, r"model.pipeline_model_parallel_size=3 does not divide model.num_layers=2"),
    ({"virtual_pipeline_model_parallel_size": 2}, r"virtual_pipeline_model_parallel_size=2: interleaved"),
    ({"max_position_embeddings": 8}, r"max_position_embeddings=8 is smaller than model.encoder_seq_length=32"),
])
def test_config_errors_name_the_key(build_model, overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(**overrides)


def test_padded_vocab_size() -> None:
    assert padded_vocab_size(258, 128, 1) == 384
    assert padded_vocab_size(258, 128, 2) == 384  # the same under every TP size
    assert padded_vocab_size(256, 128, 4) == 256
    with pytest.raises(ConfigError, match="make_vocab_size_divisible_by=100 is not a multiple of .*=3"):
        padded_vocab_size(258, 100, 3)


def test_from_config_returns_subclass(parallel_info, tiny_cfg) -> None:
    class MyModel(RewardModel):
        pass

    model = MyModel.from_config(tiny_cfg(), vocab_size=258, num_outputs=4)
    assert type(model) is MyModel and model.num_outputs == 4
