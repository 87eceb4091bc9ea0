"""The checks of the model's shape and layout, in one torch-free place.

:func:`validate_engine_config` (at ``build_config`` time), the model builder
(:func:`rm_registry.engine.model.build_transformer_config`, for plugins that build a model from a
config of their own) and :func:`rm_registry.engine.parallel.initialize` all ask this module, so a
rule and its message exist once. :func:`model_shape` returns the validated values; the model reads
them and checks nothing again.

Nothing here imports torch: the CLI and ``rm-registry config`` validate without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from ..._errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "ATTENTION_BACKENDS",
    "DTYPES",
    "DTYPE_ALIASES",
    "MIXED_DTYPES",
    "NORMALIZATIONS",
    "OPTIMIZERS",
    "POOLINGS",
    "POSITION_EMBEDDINGS",
    "PRECISIONS",
    "SCHEDULERS",
    "TOKENIZER_LIBRARIES",
    "ModelShape",
    "check_parallel_sizes",
    "choice",
    "flatten",
    "model_shape",
    "positive",
    "precision_from",
    "precision_mode",
    "type_name",
    "type_ok",
]

#: ``model.params_dtype`` / ``model.force_head_dtype`` values a config may hold.
DTYPES = ("float32", "bfloat16", "float16")
#: Spellings the model builder accepts for a dtype (NeMo's precision names among them).
DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "32": "float32",
                 "bfloat16": "bfloat16", "bf16": "bfloat16",
                 "float16": "float16", "fp16": "float16", "16": "float16"}
TOKENIZER_LIBRARIES = ("byte", "huggingface")
POSITION_EMBEDDINGS = ("learned_absolute", "rope")
#: ``model.normalization`` values (megatron-core names).
NORMALIZATIONS = ("LayerNorm", "RMSNorm")
#: ``model.activation`` values (``gelu`` is exact, erf-based: megatron's default; ``gelu_tanh`` is
#: GPT-2's ``gelu_new``).
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
#: ``model.attention_backend``: ``sdpa`` (causal scaled_dot_product_attention, see
#: ``model/_attention.py``) or ``local`` (megatron's ``DotProductAttention``, which reads a mask).
ATTENTION_BACKENDS = ("sdpa", "local")
#: Pooling modes: ``last`` (last real token), ``mean`` (mean over real tokens), ``sequence``
#: (one reward per token, ``model.output_sequence``).
POOLINGS = ("last", "mean", "sequence")
SCHEDULERS = ("CosineAnnealing", "constant")
OPTIMIZERS = ("adamw", "adam")


#: ``trainer.precision`` spellings (NeMo / PyTorch Lightning's) and the mode each one means.
#: NeMo trains megatron models in mixed precision for ``bf16`` and ``16`` as well.
PRECISIONS = {"32": "32", "32-true": "32", "fp32": "32", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
              "16": "16-mixed", "16-mixed": "16-mixed", "fp16": "16-mixed"}
#: The compute dtype of each mixed mode (float32 main weights, gradients and optimizer state).
MIXED_DTYPES = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}


def precision_mode(cfg: DictConfig) -> str:
    """``trainer.precision`` as one of ``32``, ``bf16-mixed``, ``16-mixed`` (``32`` when absent).

    Raises:
        ConfigError: another value (``bf16-true`` / ``16-true`` name ``model.params_dtype`` instead).
    """
    return precision_from(OmegaConf.select(cfg, "trainer.precision", default=None))


def precision_from(value: Any) -> str:
    """One ``trainer.precision`` value (any spelling of :data:`PRECISIONS`, or None) as its mode.

    Raises:
        ConfigError: as :func:`precision_mode`.
    """
    if value is None:
        return "32"
    name = str(value).lower()
    if name in ("bf16-true", "16-true"):
        raise ConfigError(
            f"trainer.precision={value!r}: weights held in {name[:-5]} alone are model.params_dtype="
            f"{'bfloat16' if name.startswith('bf') else 'float16'} (with trainer.precision=32); "
            "bf16-mixed keeps float32 main weights and is what NeMo and megatron train with")
    if name not in PRECISIONS:
        raise ConfigError(f"trainer.precision={value!r}: expected 32, bf16-mixed or 16-mixed "
                          "(NeMo's bf16 and 16 mean the mixed modes)")
    return PRECISIONS[name]


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": leaf}`` for every leaf of a plain nested dict (lists are leaves)."""
    out: dict[str, Any] = {}
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, Mapping) and value:
                out.update(flatten(value, path))
            else:
                out[path] = value
    return out


_TYPE_NAMES = {int: "whole number", float: "number", str: "string", bool: "bool", list: "list", dict: "mapping"}


def type_ok(value: Any, spec: Any) -> bool:
    """Whether ``value`` fits a declared type (or tuple of types); ``float`` accepts whole numbers."""
    for t in spec if isinstance(spec, tuple) else (spec,):
        if t is bool and isinstance(value, bool):
            return True
        if isinstance(value, bool):
            continue
        if t is float and isinstance(value, (int, float)):
            return True
        if t is int and isinstance(value, float) and value.is_integer():
            return True
        if t in (list, tuple) and isinstance(value, (list, tuple)):
            return True
        if t is dict and isinstance(value, Mapping):
            return True
        if isinstance(t, type) and t not in (list, tuple, dict) and isinstance(value, t):
            return True
    return False


def type_name(spec: Any) -> str:
    """How a declared type reads in a message (``whole number or string``)."""
    return " or ".join(_TYPE_NAMES.get(t, getattr(t, "__name__", str(t))) for t in (spec if isinstance(spec, tuple) else (spec,)))


def positive(cfg: DictConfig, key: str, *, allow_minus_one: bool = False) -> int:
    """The whole number >= 1 at ``key`` (or -1 where allowed); a ConfigError naming it otherwise."""
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and not (allow_minus_one and value == -1)):
        extra = " or -1" if allow_minus_one else ""
        raise ConfigError(f"{key}={value!r}: expected a positive whole number{extra}")
    return value


def choice(cfg: DictConfig, key: str, choices: tuple[str, ...], default: Any = None) -> Any:
    """The value at ``key`` when it is one of ``choices``; a ConfigError listing them otherwise."""
    value = OmegaConf.select(cfg, key, default=default)
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(choices)}")
    return value


def _optional_positive(cfg: DictConfig, key: str) -> int | None:
    return None if OmegaConf.select(cfg, key, default=None) is None else positive(cfg, key)


def _probability(cfg: DictConfig, key: str) -> float:
    value = OmegaConf.select(cfg, key, default=0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}={value!r}: expected a probability in [0, 1)")
    return float(value)


def _flag(cfg: DictConfig, key: str, default: bool) -> bool:
    value = OmegaConf.select(cfg, key, default=default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected true or false")
    return value


def _above_zero(cfg: DictConfig, key: str, default: float) -> float:
    value = OmegaConf.select(cfg, key, default=default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{key}={value!r}: expected a number > 0")
    return float(value)


def _dtype(cfg: DictConfig, key: str, default: str | None) -> str | None:
    value = OmegaConf.select(cfg, key, default=default)
    if value is None:
        return None
    name = str(value).lower().replace("torch.", "")
    if name not in DTYPE_ALIASES:
        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(DTYPES)}")
    return DTYPE_ALIASES[name]


def check_parallel_sizes(tp: Any, pp: Any, world_size: int | None = None) -> None:
    """Tensor- and pipeline-parallel sizes, and (when known) that they divide the world size.

    Raises:
        ConfigError: a size below 1, or a world size that ``tp * pp`` does not divide.
    """
    for key, value in (("model.tensor_model_parallel_size", tp), ("model.pipeline_model_parallel_size", pp)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key}={value!r}: expected a positive whole number")
    if world_size is not None and world_size % (tp * pp):
        raise ConfigError(
            f"model.tensor_model_parallel_size={tp} (x pipeline {pp}) does not divide the world "
            f"size {world_size}: launch a multiple of {tp * pp} processes "
            f"(torchrun --nproc-per-node ...) or change model.tensor_model_parallel_size"
            + (" / model.pipeline_model_parallel_size" if pp > 1 else "")
        )


@dataclass(frozen=True)
class ModelShape:
    """The validated ``model.*`` values the model is built from (see :func:`model_shape`)."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    kv_channels: int | None
    num_query_groups: int | None
    tensor_parallel: int
    pipeline_parallel: int
    #: ``model.sequence_parallel`` with tensor parallelism > 1 (no effect, and False, at TP = 1).
    sequence_parallel: bool
    seq_length: int
    max_position_embeddings: int
    hidden_dropout: float
    attention_dropout: float
    init_method_std: float
    params_dtype: str
    head_dtype: str | None
    #: ``trainer.precision``'s compute dtype (``bfloat16`` / ``float16``), None for float32.
    compute_dtype: str | None
    normalization: str
    activation: str
    layernorm_epsilon: float
    gated_linear_unit: bool
    add_bias_linear: bool
    add_qkv_bias: bool
    qk_layernorm: bool
    position_embedding_type: str
    pooling: str
    make_vocab_size_divisible_by: int
    vocab_size: int | None
    rotary_base: float
    rotary_percent: float
    rope_scaling: bool
    rope_scaling_factor: float
    head_bias: bool
    attention_backend: str


def model_shape(cfg: DictConfig) -> ModelShape:
    """Check every ``model.*`` key the model is built from and return the values.

    Keys a hand-made config may leave out take the engine's defaults (as ``defaults.yaml``).

    Raises:
        ConfigError: naming the offending key and value.
    """
    def required(key: str) -> int:
        if OmegaConf.select(cfg, key, default=None) is None:
            raise ConfigError(f"{key} is missing from the config")
        return positive(cfg, key)

    num_layers = required("model.num_layers")
    hidden = required("model.hidden_size")
    heads = required("model.num_attention_heads")
    tp = required("model.tensor_model_parallel_size")
    pp = required("model.pipeline_model_parallel_size")
    check_parallel_sizes(tp, pp)
    if num_layers % pp:
        raise ConfigError(
            f"model.pipeline_model_parallel_size={pp} does not divide model.num_layers={num_layers}: each pipeline "
            f"stage holds num_layers / pipeline_model_parallel_size layers; use a divisor of {num_layers}")
    vpp = OmegaConf.select(cfg, "model.virtual_pipeline_model_parallel_size", default=None)
    if vpp not in (None, 1):
        raise ConfigError(
            f"model.virtual_pipeline_model_parallel_size={vpp}: interleaved (virtual) pipeline stages are not "
            "supported yet; remove the key (megatron's 1F1B schedule runs model.pipeline_model_parallel_size stages)")
    seq_length = required("model.encoder_seq_length")
    if seq_length < 2:
        raise ConfigError(f"model.encoder_seq_length={seq_length}: need at least 2 (a token and EOS)")
    max_pos = _optional_positive(cfg, "model.max_position_embeddings") or seq_length
    if max_pos < seq_length:
        raise ConfigError(
            f"model.max_position_embeddings={max_pos} is smaller than model.encoder_seq_length={seq_length}"
        )
    sequence_parallel = _flag(cfg, "model.sequence_parallel", False) and tp > 1
    split_length = -(-seq_length // tp) * tp  # the longest batch, padded to split over TP ranks
    if sequence_parallel and split_length > max_pos:
        raise ConfigError(
            f"model.sequence_parallel=true splits each batch's sequence over the {tp} tensor-parallel ranks, so "
            f"a sequence of model.encoder_seq_length={seq_length} is padded to {split_length}, above "
            f"model.max_position_embeddings={max_pos}: use an encoder_seq_length divisible by {tp}")
    ffn = _optional_positive(cfg, "model.ffn_hidden_size") or 4 * hidden
    kv_channels = _optional_positive(cfg, "model.kv_channels")
    if kv_channels is None and hidden % heads:
        raise ConfigError(
            f"model.hidden_size={hidden} is not divisible by model.num_attention_heads={heads} "
            "(or set model.kv_channels, the head size)"
        )
    groups = _optional_positive(cfg, "model.num_query_groups")
    if groups is not None and (heads % groups or groups % tp):
        raise ConfigError(
            f"model.num_query_groups={groups} must divide model.num_attention_heads={heads} and be a multiple "
            f"of model.tensor_model_parallel_size={tp} (each tensor-parallel rank holds whole query groups)"
        )
    if heads % tp:
        raise ConfigError(
            f"model.num_attention_heads={heads} is not divisible by "
            f"model.tensor_model_parallel_size={tp} (heads are split over tensor-parallel ranks)"
        )
    if ffn % tp:
        raise ConfigError(f"model.ffn_hidden_size={ffn} is not divisible by model.tensor_model_parallel_size={tp}")
    std = _above_zero(cfg, "model.init_method_std", 0.02)
    params_dtype = _dtype(cfg, "model.params_dtype", "float32")
    assert params_dtype is not None
    mode = precision_mode(cfg)
    if mode != "32" and params_dtype != "float32":
        raise ConfigError(
            f"trainer.precision={mode} keeps float32 main weights (bf16/fp16 is the compute dtype), but "
            f"model.params_dtype={params_dtype}: set model.params_dtype=float32, or trainer.precision=32 for "
            f"weights held in {params_dtype} alone")
    output_sequence = _flag(cfg, "model.output_sequence", False)
    avg_pool = _flag(cfg, "model.use_avg_pool", False)
    if output_sequence and avg_pool:
        raise ConfigError("model.output_sequence and model.use_avg_pool cannot both be true")
    percent = _above_zero(cfg, "model.rotary_percent", 1.0)
    if percent > 1:
        raise ConfigError(f"model.rotary_percent={percent}: expected a number in (0, 1]")
    return ModelShape(
        num_layers=num_layers,
        hidden_size=hidden,
        ffn_hidden_size=ffn,
        num_attention_heads=heads,
        kv_channels=kv_channels,
        num_query_groups=groups,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        sequence_parallel=sequence_parallel,
        seq_length=seq_length,
        max_position_embeddings=max_pos,
        hidden_dropout=_probability(cfg, "model.hidden_dropout"),
        attention_dropout=_probability(cfg, "model.attention_dropout"),
        init_method_std=std,
        params_dtype=params_dtype,
        head_dtype=_dtype(cfg, "model.force_head_dtype", None),
        compute_dtype=MIXED_DTYPES.get(mode),
        normalization=choice(cfg, "model.normalization", NORMALIZATIONS, "LayerNorm"),
        activation=choice(cfg, "model.activation", ACTIVATIONS, "gelu"),
        layernorm_epsilon=_above_zero(cfg, "model.layernorm_epsilon", 1e-5),
        gated_linear_unit=_flag(cfg, "model.gated_linear_unit", False),
        add_bias_linear=_flag(cfg, "model.add_bias_linear", True),
        add_qkv_bias=_flag(cfg, "model.add_qkv_bias", False),
        qk_layernorm=_flag(cfg, "model.qk_layernorm", False),
        position_embedding_type=choice(cfg, "model.position_embedding_type", POSITION_EMBEDDINGS, "learned_absolute"),
        pooling="sequence" if output_sequence else "mean" if avg_pool else "last",
        make_vocab_size_divisible_by=required("model.make_vocab_size_divisible_by"),
        vocab_size=_optional_positive(cfg, "model.vocab_size"),
        rotary_base=_above_zero(cfg, "model.rotary_base", 10000),
        rotary_percent=percent,
        rope_scaling=_flag(cfg, "model.rope_scaling", False),
        rope_scaling_factor=_above_zero(cfg, "model.rope_scaling_factor", 8.0),
        head_bias=_flag(cfg, "model.head_bias", True),
        attention_backend=choice(cfg, "model.attention_backend", ATTENTION_BACKENDS, "sdpa"),
    )
