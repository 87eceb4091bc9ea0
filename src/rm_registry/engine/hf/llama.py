"""Llama (1, 2, 3 with its rope scaling) and Mistral: RMSNorm, SwiGLU, grouped-query attention, rope.

``config.json`` -> ``model.*``: ``num_hidden_layers`` -> ``num_layers``, ``hidden_size``,
``intermediate_size`` -> ``ffn_hidden_size``, ``num_attention_heads``, ``num_key_value_heads`` ->
``num_query_groups``, ``head_dim`` -> ``kv_channels``, ``rms_norm_eps`` -> ``layernorm_epsilon``,
``rope_theta`` -> ``rotary_base``, ``rope_scaling`` (llama3) -> ``rope_scaling`` +
``rope_scaling_factor``, ``attention_bias`` = ``mlp_bias`` -> ``add_bias_linear``. Mistral's
``sliding_window`` is accepted when it is at least ``max_position_embeddings`` (never active).
Tensors: see :func:`~._family.llama_like_rules`. A model exported from scratch with these options
is written as Llama.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ._family import Family, llama_like_config, llama_like_mismatch, llama_like_rules, llama_like_settings


def _settings(hf: Mapping[str, Any], file: Path) -> dict[str, Any]:
    return llama_like_settings(hf, file)


def _config(m: Any) -> dict[str, Any]:
    bias = bool(m.add_bias_linear)
    return {"model_type": "llama", **llama_like_config(m), "attention_bias": bias, "mlp_bias": bias}


def _mismatch(m: Any) -> str | None:
    if m.qk_layernorm:
        return "model.qk_layernorm=true (Llama has no q/k norm; Qwen3 has)"
    if m.add_qkv_bias and not m.add_bias_linear:
        return "model.add_qkv_bias=true alone (Llama's attention_bias also biases o_proj; Qwen2 has q/k/v bias only)"
    return llama_like_mismatch(m)


FAMILY = Family(
    name="llama",
    model_types=("llama", "mistral"),
    architecture="LlamaForSequenceClassification",
    prefix="model.",
    settings=_settings,
    hf_config=_config,
    mismatch=_mismatch,
    rules=llama_like_rules,
)
