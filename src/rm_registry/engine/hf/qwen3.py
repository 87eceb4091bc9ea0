"""Qwen3: the Llama layout with RMSNorm on queries and keys per head (``q_norm``, ``k_norm``) and a
``head_dim`` that may differ from ``hidden_size / num_attention_heads``.

``config.json`` as for Llama, plus ``q_norm``/``k_norm`` -> ``model.qk_layernorm=true``;
``attention_bias`` -> ``add_bias_linear`` (Qwen3's MLP has no bias, so ``attention_bias=true`` is refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ._family import Family, llama_like_config, llama_like_mismatch, llama_like_rules, llama_like_settings


def _settings(hf: Mapping[str, Any], file: Path) -> dict[str, Any]:
    return llama_like_settings({**hf, "mlp_bias": False}, file, qk_norm=True)


def _config(m: Any) -> dict[str, Any]:
    return {"model_type": "qwen3", **llama_like_config(m), "attention_bias": False, "use_sliding_window": False}


def _mismatch(m: Any) -> str | None:
    if not m.qk_layernorm or m.add_bias_linear or m.add_qkv_bias:
        return "Qwen3 needs model.qk_layernorm=true and no linear biases"
    return llama_like_mismatch(m)


FAMILY = Family(
    name="qwen3",
    model_types=("qwen3",),
    architecture="Qwen3ForSequenceClassification",
    prefix="model.",
    settings=_settings,
    hf_config=_config,
    mismatch=_mismatch,
    rules=llama_like_rules,
)
