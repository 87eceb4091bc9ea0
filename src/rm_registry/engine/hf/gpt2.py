"""GPT-2: LayerNorm with bias, learned absolute positions, biases everywhere, GELU (``gelu_new``
is the tanh approximation), and ``Conv1D`` weights stored ``[in, out]``.

``config.json`` -> ``model.*``: ``n_layer``, ``n_embd``, ``n_head``, ``n_inner`` (null: 4 x
``n_embd``), ``n_positions`` -> ``max_position_embeddings``, ``layer_norm_epsilon``,
``activation_function``. Tensors: ``wte``/``wpe`` embeddings, ``c_attn`` (transposed, q/k/v
interleaved per head), ``c_proj``/``c_fc`` (transposed), ``ln_1``/``ln_2``/``ln_f``; the causal-mask
buffers ``attn.bias``/``attn.masked_bias`` are skipped. This is also the family of the engine's
default model (which uses the exact ``gelu``), so every from-scratch run exports as GPT-2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ._family import Family, Rule, Shapes, refuse

#: HF ``activation_function`` -> ``model.activation``.
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
_BACK = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


def _settings(hf: Mapping[str, Any], file: Path) -> dict[str, Any]:
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise refuse(file, "activation_function", act, f"expected one of {', '.join(_ACTIVATIONS)}")
    for field, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                        ("add_cross_attention", False)):
        if bool(hf.get(field, want)) != want:
            raise refuse(file, field, hf.get(field), f"only {str(want).lower()} is")
    hidden = int(hf.get("n_embd") or hf.get("hidden_size") or 0)
    if not hidden:
        from ..._errors import ConfigError

        raise ConfigError(f"{file}: n_embd is missing")
    return {
        "model.num_layers": int(hf.get("n_layer", 12)),
        "model.hidden_size": hidden,
        "model.ffn_hidden_size": int(hf.get("n_inner") or 4 * hidden),
        "model.num_attention_heads": int(hf.get("n_head", 12)),
        "model.num_query_groups": None,
        "model.kv_channels": None,
        "model.normalization": "LayerNorm",
        "model.layernorm_epsilon": float(hf.get("layer_norm_epsilon", 1e-5)),
        "model.activation": _ACTIVATIONS[act],
        "model.gated_linear_unit": False,
        "model.add_bias_linear": True,
        "model.add_qkv_bias": False,
        "model.qk_layernorm": False,
        "model.position_embedding_type": "learned_absolute",
        "model.max_position_embeddings": int(hf.get("n_positions", 1024)),
    }


def _config(m: Any) -> dict[str, Any]:
    return {
        "model_type": "gpt2",
        "n_layer": int(m.num_layers),
        "n_embd": int(m.hidden_size),
        "n_head": int(m.num_attention_heads),
        "n_inner": int(m.ffn_hidden_size or 4 * m.hidden_size),
        "n_positions": int(m.max_position_embeddings or m.encoder_seq_length),
        "layer_norm_epsilon": float(m.layernorm_epsilon),
        "activation_function": _BACK[str(m.activation)],
        "scale_attn_weights": True,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
    }


def _mismatch(m: Any) -> str | None:
    heads = int(m.num_attention_heads)
    wrong = {
        "position_embedding_type": (m.position_embedding_type, "learned_absolute"),
        "normalization": (m.normalization, "LayerNorm"),
        "gated_linear_unit": (m.gated_linear_unit, False),
        "add_bias_linear": (m.add_bias_linear, True),
        "qk_layernorm": (m.qk_layernorm, False),
        "num_query_groups": (m.num_query_groups or heads, heads),
        "kv_channels": (m.kv_channels or m.hidden_size // heads, m.hidden_size // heads),
    }
    for key, (value, want) in wrong.items():
        if value != want:
            return f"model.{key}={value!r} (GPT-2 needs {want!r})"
    return None


def _rules(s: Shapes, m: Any) -> list[Rule]:
    rules = [Rule("backbone.embedding.word_embeddings.weight", ("wte.weight",), "embedding"),
             Rule("backbone.embedding.position_embeddings.weight", ("wpe.weight",)),
             Rule("backbone.decoder.final_layernorm.weight", ("ln_f.weight",)),
             Rule("backbone.decoder.final_layernorm.bias", ("ln_f.bias",))]
    for i in range(s.layers):
        o, h = f"backbone.decoder.layers.{i}.", f"h.{i}."
        for ours, theirs in (("input_layernorm", "ln_1"), ("pre_mlp_layernorm", "ln_2")):
            rules += [Rule(f"{o}{ours}.weight", (f"{h}{theirs}.weight",)), Rule(f"{o}{ours}.bias", (f"{h}{theirs}.bias",))]
        rules += [
            Rule(o + "self_attention.linear_qkv.weight", (h + "attn.c_attn.weight",), "conv1d_qkv"),
            Rule(o + "self_attention.linear_qkv.bias", (h + "attn.c_attn.bias",), "conv1d_qkv"),
            Rule(o + "self_attention.linear_proj.weight", (h + "attn.c_proj.weight",), "conv1d"),
            Rule(o + "self_attention.linear_proj.bias", (h + "attn.c_proj.bias",)),
            Rule(o + "mlp.linear_fc1.weight", (h + "mlp.c_fc.weight",), "conv1d"),
            Rule(o + "mlp.linear_fc1.bias", (h + "mlp.c_fc.bias",)),
            Rule(o + "mlp.linear_fc2.weight", (h + "mlp.c_proj.weight",), "conv1d"),
            Rule(o + "mlp.linear_fc2.bias", (h + "mlp.c_proj.bias",)),
        ]
    return rules


FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    architecture="GPT2ForSequenceClassification",
    prefix="transformer.",
    settings=_settings,
    hf_config=_config,
    mismatch=_mismatch,
    rules=_rules,
    ignored=("lm_head.weight", ".attn.bias", ".attn.masked_bias"),
    token_head="classifier",
)
