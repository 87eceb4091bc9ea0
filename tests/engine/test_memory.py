"""The memory estimate (``engine/config/_memory.py``) against the parameters of real models: the
numbers in ``docs/scaling.md``'s table come from it."""

from __future__ import annotations

import pytest

SHAPES = {
    "gpt2-like": {},
    "llama-like": {"normalization": "RMSNorm", "activation": "silu", "gated_linear_unit": True, "num_query_groups": 2,
                   "add_bias_linear": False, "position_embedding_type": "rope", "head_bias": False,
                   "ffn_hidden_size": 88},
    "qwen2-like": {"normalization": "RMSNorm", "activation": "silu", "gated_linear_unit": True, "add_bias_linear": False,
                   "add_qkv_bias": True, "position_embedding_type": "rope", "num_query_groups": 1},
    "qwen3-like": {"normalization": "RMSNorm", "qk_layernorm": True, "kv_channels": 16, "add_bias_linear": False},
}


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("num_outputs", [1, 3])
def test_estimate_counts_every_parameter_of_a_real_model(parallel_info, tiny_cfg, name: str, num_outputs: int) -> None:
    from rm_registry.engine.config._checks import model_shape
    from rm_registry.engine.config._memory import rank_memory
    from rm_registry.engine.model import RewardModel

    cfg = tiny_cfg(**SHAPES[name])
    model = RewardModel.from_config(cfg, vocab_size=300, num_outputs=num_outputs)
    real = sum(p.numel() for p in model.parameters())
    estimate = rank_memory(model_shape(cfg), model.padded_vocab_size, num_outputs=num_outputs)
    assert estimate.parameters == real
    assert estimate.weights == estimate.gradients == 4 * real and estimate.optimizer == 8 * real


def test_sharding_and_dtype_change_the_bytes_as_documented(tiny_cfg) -> None:
    from rm_registry.engine.config._checks import model_shape
    from rm_registry.engine.config._memory import rank_memory

    shape = model_shape(tiny_cfg())
    full = rank_memory(shape, 384, dp=4)
    sharded = rank_memory(shape, 384, dp=4, sharded_optimizer=True)
    assert sharded.weights == full.weights and sharded.optimizer * 4 == pytest.approx(full.optimizer, abs=4)
    bf16 = rank_memory(model_shape(tiny_cfg(params_dtype="bfloat16")), 384)
    assert bf16.total * 2 == full.total
    tp2 = rank_memory(shape, 384, tp=2)
    assert full.parameters / 2 < tp2.parameters < full.parameters  # norms and row-parallel biases are replicated
