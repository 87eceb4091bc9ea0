"""The causal SDPA core attention computes what megatron's DotProductAttention computes."""

from __future__ import annotations

import pytest
import torch

from rm_registry import ConfigError


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 258, (6, 32), generator=g)
    return tokens, torch.tensor([32, 1, 17, 31, 25, 3])  # right-padded, one full row, one of 1 token


@pytest.mark.parametrize("pooling", [{}, {"use_avg_pool": True}, {"output_sequence": True}, {"num_query_groups": 2},
                                     {"position_embedding_type": "rope"}])
def test_sdpa_rewards_equal_local_attention(build_model, pooling) -> None:
    tokens, lengths = _batch()
    local = build_model(attention_backend="local", **pooling).eval()
    sdpa = build_model(attention_backend="sdpa", **pooling).eval()
    # No new parameters: the same checkpoint loads into either backend.
    assert local.state_dict().keys() == sdpa.state_dict().keys()
    sdpa.load_state_dict(local.state_dict())
    with torch.no_grad():
        want, got = local(tokens, lengths), sdpa(tokens, lengths)
    assert want.shape == got.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert want.std() > 1e-3  # rewards differ between rows: the comparison is not vacuous


def test_sdpa_gradients_equal_local_attention(build_model) -> None:
    tokens, lengths = _batch()
    grads = []
    for backend in ("local", "sdpa"):
        model = build_model(attention_backend=backend)
        model(tokens, lengths).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("groups", [4, 2, 1])
def test_grouped_query_attention_matches_megatron(parallel_info, groups: int) -> None:
    """Query groups < heads: each key/value group serves heads / groups consecutive query heads."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from rm_registry.engine.model._attention import SDPACausalAttention

    config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, num_query_groups=groups,
                               attention_dropout=0.0, use_cpu_initialization=True)
    g = torch.Generator().manual_seed(1)
    s, n, d = 12, 3, 8
    q = torch.randn(s, n, 4, d, generator=g)
    k, v = (torch.randn(s, n, groups, d, generator=g) for _ in range(2))
    mask = torch.ones(s, s, dtype=torch.bool).triu(1)[None, None]  # True = masked
    want = DotProductAttention(config, 1, AttnMaskType.causal, "self").eval()(q, k, v, mask)
    got = SDPACausalAttention(config, 1, AttnMaskType.causal, "self").eval()(q, k, v, None)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_unknown_backend_is_refused(build_model) -> None:
    with pytest.raises(ConfigError, match="model.attention_backend='flash'"):
        build_model(attention_backend="flash")


def test_spec_swap_keeps_the_local_spec_untouched() -> None:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from rm_registry.engine.model._attention import SDPACausalAttention, with_core_attention

    spec = get_gpt_layer_local_spec()
    swapped = with_core_attention(spec, "sdpa")
    assert swapped.submodules.self_attention.submodules.core_attention is SDPACausalAttention
    assert spec.submodules.self_attention.submodules.core_attention is DotProductAttention
    assert with_core_attention(spec, "local") is spec
