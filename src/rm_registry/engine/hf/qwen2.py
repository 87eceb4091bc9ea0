"""Qwen2 (and Qwen2.5): the Llama layout with a bias on the q, k, v projections only.

``config.json`` as for Llama; Qwen2 has no ``attention_bias`` field: its q/k/v biases become
``model.add_qkv_bias=true`` with ``add_bias_linear=false``. ``use_sliding_window=true`` with a
window shorter than ``max_position_embeddings`` is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ._family import Family, llama_like_config, llama_like_mismatch, llama_like_rules, llama_like_settings


def _settings(hf: Mapping[str, Any], file: Path) -> dict[str, Any]:
    return llama_like_settings({**hf, "attention_bias": False, "mlp_bias": False}, file, qkv_bias=True)


def _config(m: Any) -> dict[str, Any]:
    return {"model_type": "qwen2", **llama_like_config(m), "use_sliding_window": False}


def _mismatch(m: Any) -> str | None:
    if not m.add_qkv_bias or m.add_bias_linear or m.qk_layernorm:
        return "Qwen2 needs model.add_qkv_bias=true, add_bias_linear=false, qk_layernorm=false"
    return llama_like_mismatch(m)


FAMILY = Family(
    name="qwen2",
    model_types=("qwen2",),
    architecture="Qwen2ForSequenceClassification",
    prefix="model.",
    settings=_settings,
    hf_config=_config,
    mismatch=_mismatch,
    rules=llama_like_rules,
)
