"""What a model family module provides, and the pieces the decoder-only families share.

A family module (``llama``, ``qwen2``, ``qwen3``, ``gpt2``) is a table: how ``config.json`` maps to
``model.*`` settings (refusing what it cannot represent, naming the ``config.json`` field), how the
settings map back to ``config.json`` for export, and which Hugging Face tensors make each of our
parameters (a :class:`Rule` per parameter, with the conversion kind applied by ``_convert``).

Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..._errors import ConfigError

__all__ = ["Family", "Rule", "Shapes", "refuse", "rope_settings", "rope_config", "llama_like_rules",
           "llama_like_settings", "llama_like_config"]

#: Conversion kinds (see ``_convert``): ``copy``; ``embedding`` (rows padded / trimmed);
#: ``qkv`` (q, k, v interleaved per query group); ``gate_up`` (gate and up stacked);
#: ``conv1d`` (GPT-2 ``[in, out]`` transposed); ``conv1d_qkv`` (GPT-2 ``c_attn``: transposed,
#: split into q, k, v and interleaved per head).
KINDS = ("copy", "embedding", "qkv", "gate_up", "conv1d", "conv1d_qkv")


@dataclass(frozen=True)
class Rule:
    """One of our parameters (``ours``, a ``RewardModel`` state-dict name) made of HF tensors."""

    ours: str
    hf: tuple[str, ...]
    kind: str = "copy"


@dataclass(frozen=True)
class Shapes:
    """The sizes the converters need (from the ``model.*`` settings)."""

    hidden: int
    heads: int
    groups: int
    head_dim: int
    ffn: int
    vocab: int  # HF embedding rows (config.json vocab_size)
    layers: int
    outputs: int


@dataclass(frozen=True)
class Family:
    """A model family: its ``model_type`` names, HF classes and tables."""

    name: str
    model_types: tuple[str, ...]
    #: ``*ForSequenceClassification`` class written to ``architectures`` on export.
    architecture: str
    #: Prefix of the backbone's tensors in ``*ForSequenceClassification`` / ``*ForCausalLM`` files.
    prefix: str
    #: ``config.json`` -> ``{"model.key": value}`` (raises ConfigError naming the field).
    settings: Callable[[Mapping[str, Any], Path], dict[str, Any]]
    #: ``cfg.model`` -> the family's ``config.json`` fields.
    hf_config: Callable[[Any], dict[str, Any]]
    #: Whether the family can represent ``cfg.model`` exactly (export); ``None`` or why not.
    mismatch: Callable[[Any], str | None]
    #: The tensor table (without the head).
    rules: Callable[[Shapes, Any], list[Rule]]
    #: HF tensors that are not weights (buffers) and are skipped on import.
    ignored: tuple[str, ...] = ("lm_head.weight", "rotary_emb.inv_freq")
    #: The head of ``*ForTokenClassification`` (a linear layer with bias): ``score`` (transformers'
    #: generic token classifier) or ``classifier`` (GPT-2).
    token_head: str = "score"

    @property
    def token_architecture(self) -> str:
        """The ``*ForTokenClassification`` class of the family (token-level architectures export to it)."""
        return self.architecture.replace("ForSequenceClassification", "ForTokenClassification")


def refuse(file: Path, field: str, value: Any, why: str) -> ConfigError:
    """The one-line error for a ``config.json`` value we cannot convert exactly."""
    return ConfigError(f"{file}: {field}={value!r} is not supported ({why}); nothing was converted")


def _get(hf: Mapping[str, Any], file: Path, key: str) -> Any:
    if hf.get(key) is None:
        raise ConfigError(f"{file}: {key} is missing")
    return hf[key]


def rope_settings(hf: Mapping[str, Any], file: Path) -> dict[str, Any]:
    """Rotary settings from ``rope_theta``/``rope_scaling`` (transformers 4) or ``rope_parameters`` (5)."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or None
    if scaling and not params.get("rope_type"):
        params.update(scaling)
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    out: dict[str, Any] = {"model.position_embedding_type": "rope", "model.rotary_base": float(theta),
                           "model.rotary_percent": float(hf.get("partial_rotary_factor", 1.0) or 1.0),
                           "model.rope_scaling": False}
    field = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    if kind == "default":
        return out
    if kind != "llama3":
        raise refuse(file, f"{field}.rope_type", kind, "only the default rope and Llama 3 scaling are")
    fixed = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    for key, want in fixed.items():
        if float(params.get(key, want)) != want:
            raise refuse(file, f"{field}.{key}", params.get(key),
                         f"megatron-core's Llama 3 scaling fixes it to {want:g}")
    out.update({"model.rope_scaling": True, "model.rope_scaling_factor": float(params.get("factor", 8.0))})
    return out


def rope_config(m: Any) -> dict[str, Any]:
    """``config.json`` rope fields (transformers 4 spelling, which transformers 5 also reads)."""
    out: dict[str, Any] = {"rope_theta": float(m.rotary_base)}
    if m.rope_scaling:
        out["rope_scaling"] = {"rope_type": "llama3", "factor": float(m.rope_scaling_factor), "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    if float(m.rotary_percent) != 1.0:
        out["partial_rotary_factor"] = float(m.rotary_percent)
    return out


def _check_sliding_window(hf: Mapping[str, Any], file: Path) -> None:
    window = hf.get("sliding_window")
    used = hf.get("use_sliding_window", window is not None)
    if used and window is not None and int(window) < int(hf.get("max_position_embeddings") or 0):
        raise refuse(file, "sliding_window", window, "sliding-window attention is not converted; a window at "
                     "least max_position_embeddings long (or use_sliding_window=false) is")


def llama_like_settings(hf: Mapping[str, Any], file: Path, *, qkv_bias: bool = False,
                        qk_norm: bool = False) -> dict[str, Any]:
    """Settings shared by Llama, Mistral, Qwen2 and Qwen3 (RMSNorm, SwiGLU, GQA, rope)."""
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise refuse(file, "hidden_act", act, "these families are converted with a SiLU-gated MLP")
    if int(hf.get("pretraining_tp", 1) or 1) != 1:
        raise refuse(file, "pretraining_tp", hf["pretraining_tp"], "only 1 is")
    _check_sliding_window(hf, file)
    hidden, heads = int(_get(hf, file, "hidden_size")), int(_get(hf, file, "num_attention_heads"))
    head_dim = int(hf.get("head_dim") or hidden // heads)
    attention_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    if attention_bias != mlp_bias:
        field = "attention_bias" if attention_bias else "mlp_bias"
        raise refuse(file, field, True, "megatron-core puts a bias on every linear layer or on none "
                     "(attention_bias and mlp_bias must agree)")
    out = {
        "model.num_layers": int(_get(hf, file, "num_hidden_layers")),
        "model.hidden_size": hidden,
        "model.ffn_hidden_size": int(_get(hf, file, "intermediate_size")),
        "model.num_attention_heads": heads,
        "model.num_query_groups": int(hf.get("num_key_value_heads") or heads),
        "model.kv_channels": head_dim,
        "model.normalization": "RMSNorm",
        "model.layernorm_epsilon": float(hf.get("rms_norm_eps", 1e-6)),
        "model.activation": "silu",
        "model.gated_linear_unit": True,
        "model.add_bias_linear": attention_bias,
        "model.add_qkv_bias": qkv_bias,
        "model.qk_layernorm": qk_norm,
        "model.max_position_embeddings": int(_get(hf, file, "max_position_embeddings")),
    }
    out.update(rope_settings(hf, file))
    return out


def llama_like_config(m: Any) -> dict[str, Any]:
    """``config.json`` fields shared by the Llama-like families."""
    return {
        "hidden_size": int(m.hidden_size),
        "intermediate_size": int(m.ffn_hidden_size),
        "num_hidden_layers": int(m.num_layers),
        "num_attention_heads": int(m.num_attention_heads),
        "num_key_value_heads": int(m.num_query_groups or m.num_attention_heads),
        "head_dim": int(m.kv_channels or m.hidden_size // m.num_attention_heads),
        "hidden_act": "silu",
        "rms_norm_eps": float(m.layernorm_epsilon),
        "max_position_embeddings": int(m.max_position_embeddings or m.encoder_seq_length),
        **rope_config(m),
    }


def llama_like_mismatch(m: Any) -> str | None:
    """Why ``cfg.model`` is not a Llama-like model (``None`` when it is)."""
    wrong = {
        "position_embedding_type": (m.position_embedding_type, "rope"),
        "normalization": (m.normalization, "RMSNorm"),
        "activation": (m.activation, "silu"),
        "gated_linear_unit": (m.gated_linear_unit, True),
    }
    for key, (value, want) in wrong.items():
        if value != want:
            return f"model.{key}={value!r} (this family needs {want!r})"
    return None


def llama_like_rules(s: Shapes, m: Any) -> list[Rule]:
    """The Llama tensor table (also Mistral, Qwen2, Qwen3), HF names without the ``model.`` prefix."""
    bias = bool(m.add_bias_linear)
    qkv_bias = bias or bool(m.add_qkv_bias)
    rules = [Rule("backbone.embedding.word_embeddings.weight", ("embed_tokens.weight",), "embedding"),
             Rule("backbone.decoder.final_layernorm.weight", ("norm.weight",))]
    for i in range(s.layers):
        o, h = f"backbone.decoder.layers.{i}.", f"layers.{i}."
        attn = f"{h}self_attn."
        rules += [
            Rule(o + "input_layernorm.weight", (h + "input_layernorm.weight",)),
            Rule(o + "self_attention.linear_qkv.weight",
                 (attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"), "qkv"),
            Rule(o + "self_attention.linear_proj.weight", (attn + "o_proj.weight",)),
            Rule(o + "pre_mlp_layernorm.weight", (h + "post_attention_layernorm.weight",)),
            Rule(o + "mlp.linear_fc1.weight", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"), "gate_up"),
            Rule(o + "mlp.linear_fc2.weight", (h + "mlp.down_proj.weight",)),
        ]
        if qkv_bias:
            rules.append(Rule(o + "self_attention.linear_qkv.bias",
                              (attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"), "qkv"))
        if bias:
            rules += [Rule(o + "self_attention.linear_proj.bias", (attn + "o_proj.bias",)),
                      Rule(o + "mlp.linear_fc1.bias", (h + "mlp.gate_proj.bias", h + "mlp.up_proj.bias"), "gate_up"),
                      Rule(o + "mlp.linear_fc2.bias", (h + "mlp.down_proj.bias",))]
        if m.qk_layernorm:
            rules += [Rule(o + "self_attention.q_layernorm.weight", (attn + "q_norm.weight",)),
                      Rule(o + "self_attention.k_layernorm.weight", (attn + "k_norm.weight",))]
    return rules
