"""Causal core attention on ``torch.nn.functional.scaled_dot_product_attention`` (SDPA).

A drop-in megatron-core layer-spec submodule for the ``core_attention`` slot of the local GPT
layer spec (where megatron puts its ``DotProductAttention``). It computes the same thing for
the rows that matter without any mask tensor:

* batches are right-padded and attention is causal, so a real token (position < length) only
  ever sees real tokens: ``is_causal=True`` alone gives the rewards the old ``[N, 1, S, S]``
  mask gave (padded rows differ, and are never pooled);
* no ``[N, heads, S, S]`` score tensor is materialised by this module: SDPA picks the flash /
  memory-efficient kernel of the device (CPU and CUDA).

It has no parameters, so checkpoints are the same with either backend
(``model.attention_backend``: ``sdpa``, the default, or ``local`` for megatron's own).

Shapes (megatron's sequence-first layout, per tensor-parallel rank):
    query ``[Sq, N, heads/tp, D]``, key/value ``[Sk, N, groups/tp, D]``  ->  ``[Sq, N, heads/tp * D]``.
Grouped-query attention (``groups < heads``) repeats each key/value group for
``heads / groups`` consecutive query heads, as megatron's ``repeat_interleave`` does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from ..._errors import ConfigError
from ..config import ATTENTION_BACKENDS

__all__ = ["ATTENTION_BACKENDS", "SDPACausalAttention", "with_core_attention"]



class SDPACausalAttention(MegatronModule):
    """Causal self-attention core via SDPA; the signature is megatron's core-attention builder's.

    Args:
        config: The transformer config (heads, query groups, kv channels, dropout).
        layer_number: 1-based layer index (only used for query-key layer scaling).
        attn_mask_type: Must be causal (the GPT layer spec's); the mask tensor is ignored.
        softmax_scale: ``None``: ``1 / sqrt(D)``.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: Any,
        attention_type: str = "self",
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: Any = None,
    ) -> None:
        super().__init__(config=config)
        from megatron.core.transformer.enums import AttnMaskType

        if attn_mask_type != AttnMaskType.causal:
            raise ConfigError(
                f"model.attention_backend=sdpa implements causal attention only (got {attn_mask_type}); "
                "set model.attention_backend=local"
            )
        if getattr(config, "softmax_type", "vanilla") != "vanilla" or getattr(config, "window_size", None):
            raise ConfigError(
                "model.attention_backend=sdpa supports plain softmax attention without a window; "
                "set model.attention_backend=local"
            )
        if config.context_parallel_size != 1:
            raise ConfigError("model.attention_backend=sdpa does not support context parallelism")
        head_dim = config.kv_channels
        # With apply_query_key_layer_scaling megatron divides the scale by the layer number and
        # multiplies it back inside its softmax: the product is this plain scale.
        self.softmax_scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)
        self.dropout_p = float(config.attention_dropout if attention_dropout is None else attention_dropout)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: Any = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params: Any = None,
    ) -> torch.Tensor:
        """``[Sq, N, h, D]``, ``[Sk, N, g, D]`` x2 -> ``[Sq, N, h * D]``; ``attention_mask`` is ignored."""
        if attention_bias is not None or packed_seq_params is not None:
            raise NotImplementedError("SDPACausalAttention: attention bias and packed sequences are not supported")
        sq, n, heads, d = query.shape
        groups = key.shape[2]
        q = query.permute(1, 2, 0, 3)  # [N, h, Sq, D]
        k = key.permute(1, 2, 0, 3)  # [N, g, Sk, D]
        v = value.permute(1, 2, 0, 3)
        if groups != heads:
            # Same grouping as megatron (query head i reads group i // (h / g)); a view-free
            # repeat keeps every SDPA kernel available.
            k = k.repeat_interleave(heads // groups, dim=1)
            v = v.repeat_interleave(heads // groups, dim=1)
        dropout = self.dropout_p if self.training else 0.0
        # As megatron's DotProductAttention: under sequence parallelism the transformer block runs
        # inside the tracker's fork already (forking again would replay a stale state on recompute).
        if dropout and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True,
                                                     scale=self.softmax_scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale)
        return out.permute(2, 0, 1, 3).reshape(sq, n, heads * d)  # [Sq, N, h * D]


def with_core_attention(spec: Any, backend: str) -> Any:
    """The GPT layer ``spec`` with its self-attention ``core_attention`` set for ``backend``.

    ``local`` returns ``spec`` unchanged; ``sdpa`` returns a copy using
    :class:`SDPACausalAttention` (only megatron's own ``DotProductAttention`` is replaced: a
    Transformer Engine spec keeps its fused attention).

    Raises:
        ConfigError: an unknown backend.
    """
    if backend not in ATTENTION_BACKENDS:
        raise ConfigError(f"model.attention_backend={backend!r}: expected one of {', '.join(ATTENTION_BACKENDS)}")
    if backend == "local":
        return spec
    import copy

    from megatron.core.transformer.dot_product_attention import DotProductAttention

    spec = copy.deepcopy(spec)
    attention = spec.submodules.self_attention.submodules
    if attention.core_attention is DotProductAttention:
        attention.core_attention = SDPACausalAttention
    return spec
