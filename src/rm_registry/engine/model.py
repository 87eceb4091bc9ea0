"""The reward model: a megatron-core ``GPTModel`` backbone, pooling, and a reward head.

Shapes:
    N: sequences in the batch, S: longest sequence (batches are padded to it), H: hidden size,
    K: reward outputs (``num_outputs``), V: padded vocabulary size.

Data flow of :meth:`RewardModel.forward`::

    tokens [N, S], lengths [N]
      -> GPTModel (embedding, transformer, final layernorm; no vocabulary projection)
      -> hidden [S, N, H]
      -> pooling: last real token (index length - 1)  -> [N, H]     (default)
                  mean over real tokens                -> [N, H]     (model.use_avg_pool)
                  every token                          -> [N, S, H]  (model.output_sequence)
      -> head (row-parallel linear H -> K with bias; all-reduced over tensor-parallel ranks)
      -> rewards [N, K] (or [N, S, K]), float32

Weights are initialized on the CPU with megatron's ``use_cpu_initialization``: every
tensor-parallel weight is drawn in full from the (identically seeded) default generator and then
sliced, so the un-sharded weights do not depend on the tensor-parallel size, and a TP=2 model
computes what the TP=1 model computes. For the same reason the vocabulary is padded to a multiple
of ``model.make_vocab_size_divisible_by`` alone (which must be a multiple of the tensor-parallel
size), not to ``make_vocab_size_divisible_by * tp`` as Megatron-LM does: the embedding keeps one
shape under every layout, so checkpoints reshard between layouts.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel import RowParallelLinear
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from omegaconf import DictConfig, OmegaConf

from .._errors import ConfigError
from . import parallel
from ._attention import with_core_attention
from ._nemo_compat import recompute_options

if TYPE_CHECKING:  # pragma: no cover
    from megatron.core.transformer.spec_utils import ModuleSpec

__all__ = [
    "ACTIVATIONS",
    "NORMALIZATIONS",
    "POOLINGS",
    "RewardModel",
    "build_transformer_config",
    "layer_spec",
    "padded_vocab_size",
    "parse_dtype",
]

#: Pooling modes: ``last`` (last real token), ``mean`` (mean over real tokens), ``sequence``
#: (one reward per token).
POOLINGS = ("last", "mean", "sequence")

#: ``model.normalization`` values (megatron-core names).
NORMALIZATIONS = ("LayerNorm", "RMSNorm")


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU (GPT-2's ``gelu_new``, megatron's ``fast_gelu``)."""
    return F.gelu(x, approximate="tanh")


#: ``model.activation`` values and their functions (``gelu`` is exact, erf-based: megatron's default).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": gelu_tanh,
    "silu": F.silu,
    "relu": F.relu,
}

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "16": torch.float16,
}


def parse_dtype(value: Any, key: str) -> torch.dtype:
    """Map a config value (``float32``, ``bf16``, ``16``, ...) to a torch dtype.

    Raises:
        ConfigError: naming ``key`` for anything else.
    """
    if isinstance(value, torch.dtype):
        return value
    name = str(value).lower().replace("torch.", "")
    if name not in _DTYPES:
        raise ConfigError(f"{key}={value!r}: expected one of float32, bfloat16, float16")
    return _DTYPES[name]


def _req(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    if value is None:
        raise ConfigError(f"{key} is missing from the config")
    return value


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = _req(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r}: expected an integer >= 1")
    return int(value)


def _probability(cfg: DictConfig, key: str) -> float:
    value = OmegaConf.select(cfg, key, default=0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}={value!r}: expected a number in [0, 1)")
    return float(value)


def _optional_int(cfg: DictConfig, key: str) -> int | None:
    value = OmegaConf.select(cfg, key, default=None)
    return None if value is None else _positive_int(cfg, key)


def _flag(cfg: DictConfig, key: str, default: bool) -> bool:
    value = OmegaConf.select(cfg, key, default=default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected true or false")
    return value


def _number(cfg: DictConfig, key: str, default: float) -> float:
    value = OmegaConf.select(cfg, key, default=default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{key}={value!r}: expected a number > 0")
    return float(value)


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Round ``vocab_size`` up to a multiple of ``divisible_by`` (independent of ``tp``).

    Raises:
        ConfigError: ``divisible_by`` is not a multiple of ``tp``.
    """
    if vocab_size < 1:
        raise ConfigError(f"vocab_size={vocab_size}: expected >= 1 (from the tokenizer)")
    if divisible_by % tp != 0:
        raise ConfigError(
            f"model.make_vocab_size_divisible_by={divisible_by} is not a multiple of "
            f"model.tensor_model_parallel_size={tp}; the embedding is split over tensor-parallel "
            f"ranks, so use a multiple of {tp} (128 suits every power of two up to 128)"
        )
    return -(-vocab_size // divisible_by) * divisible_by


def build_transformer_config(cfg: DictConfig) -> TransformerConfig:
    """Validate ``cfg.model.*`` and build megatron's :class:`TransformerConfig` from it.

    Raises:
        ConfigError: naming the offending key and value.
    """
    num_layers = _positive_int(cfg, "model.num_layers")
    hidden = _positive_int(cfg, "model.hidden_size")
    heads = _positive_int(cfg, "model.num_attention_heads")
    tp = _positive_int(cfg, "model.tensor_model_parallel_size")
    pp = _positive_int(cfg, "model.pipeline_model_parallel_size")
    ffn = OmegaConf.select(cfg, "model.ffn_hidden_size", default=None)
    ffn = 4 * hidden if ffn is None else _positive_int(cfg, "model.ffn_hidden_size")
    kv_channels = _optional_int(cfg, "model.kv_channels")
    if kv_channels is None and hidden % heads:
        raise ConfigError(
            f"model.hidden_size={hidden} is not divisible by model.num_attention_heads={heads} "
            "(or set model.kv_channels, the head size)"
        )
    groups = _optional_int(cfg, "model.num_query_groups")
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
        raise ConfigError(
            f"model.ffn_hidden_size={ffn} is not divisible by model.tensor_model_parallel_size={tp}"
        )
    if pp != 1:
        raise ConfigError(
            f"model.pipeline_model_parallel_size={pp}: pipeline parallelism is not supported; "
            "use model.tensor_model_parallel_size and data parallelism"
        )
    std = OmegaConf.select(cfg, "model.init_method_std", default=0.02)
    if isinstance(std, bool) or not isinstance(std, (int, float)) or std <= 0:
        raise ConfigError(f"model.init_method_std={std!r}: expected a number > 0")
    dtype = parse_dtype(OmegaConf.select(cfg, "model.params_dtype", default="float32"), "model.params_dtype")
    norm = str(OmegaConf.select(cfg, "model.normalization", default="LayerNorm"))
    if norm not in NORMALIZATIONS:
        raise ConfigError(f"model.normalization={norm!r}: expected one of {', '.join(NORMALIZATIONS)}")
    act = str(OmegaConf.select(cfg, "model.activation", default="gelu"))
    if act not in ACTIVATIONS:
        raise ConfigError(f"model.activation={act!r}: expected one of {', '.join(ACTIVATIONS)}")
    eps = OmegaConf.select(cfg, "model.layernorm_epsilon", default=1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ConfigError(f"model.layernorm_epsilon={eps!r}: expected a number > 0")
    return TransformerConfig(
        num_layers=num_layers,
        hidden_size=hidden,
        ffn_hidden_size=ffn,
        num_attention_heads=heads,
        hidden_dropout=_probability(cfg, "model.hidden_dropout"),
        attention_dropout=_probability(cfg, "model.attention_dropout"),
        init_method_std=float(std),
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=1,
        # Full weights drawn on the CPU, then sliced: identical under every TP layout.
        use_cpu_initialization=True,
        # Weights loaded from a pretrained folder overwrite every tensor: drawing them first would
        # only cost time and a full-size float32 copy per tensor (see engine/hf).
        perform_initialization=not OmegaConf.select(cfg, "pretrained_checkpoint.restore_from_path", default=None),
        sequence_parallel=False,
        normalization=norm,
        layernorm_epsilon=float(eps),
        activation_func=ACTIVATIONS[act],
        gated_linear_unit=_flag(cfg, "model.gated_linear_unit", False),
        num_query_groups=groups,
        kv_channels=kv_channels,
        add_bias_linear=_flag(cfg, "model.add_bias_linear", True),
        add_qkv_bias=_flag(cfg, "model.add_qkv_bias", False),
        qk_layernorm=_flag(cfg, "model.qk_layernorm", False),
        **recompute_options(cfg),  # NeMo's activations_checkpoint_* keys
    )


def layer_spec(normalization: str = "LayerNorm", qk_layernorm: bool = False,
               attention_backend: str = "sdpa") -> ModuleSpec:
    """Transformer Engine layer spec when TE and CUDA are present, else megatron's local spec
    with the core attention of ``attention_backend`` (``model.attention_backend``).

    ``normalization`` is passed to the local spec so that it picks torch's ``RMSNorm`` /
    ``LayerNorm`` rather than apex's fused LayerNorm where apex is installed.
    """
    if torch.cuda.is_available():
        try:
            import transformer_engine  # noqa: F401
            from megatron.core.models.gpt.gpt_layer_specs import (
                get_gpt_layer_with_transformer_engine_spec,
            )

            return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
        except ImportError:
            pass
    return with_core_attention(
        get_gpt_layer_local_spec(qk_layernorm=qk_layernorm, normalization=normalization), attention_backend
    )


def _mark_tensor_parallel(module: torch.nn.Module) -> None:
    """Set the tensor-parallel attributes (``tensor_model_parallel``, ``partition_dim``) that
    megatron-core sets only while drawing initial weights (``perform_initialization``), so that
    models built to be filled from a pretrained folder carry them too (gradient-norm accounting
    and the weight loader read them)."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, VocabParallelEmbedding
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    for sub in module.modules():
        if isinstance(sub, (ColumnParallelLinear, VocabParallelEmbedding)):
            dim = 0
        elif isinstance(sub, RowParallelLinear):
            dim = 1
        else:
            continue
        weight = getattr(sub, "weight", None)
        if weight is not None and not hasattr(weight, "partition_dim"):
            set_tensor_model_parallel_attributes(weight, True, dim, 1)


class _HiddenStatesGPT(GPTModel):
    """``GPTModel`` built with ``post_process=True`` (so the final layernorm is kept) that returns
    the final hidden states ``[S, N, H]`` instead of vocabulary logits (as NeMo-Aligner does)."""

    def _postprocess(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


class RewardModel(MegatronModule):
    """GPT backbone + pooling + reward head. Plugins subclass it and normally only override
    :meth:`from_config` (to choose ``num_outputs``).

    ``sharded_state_dict()`` (inherited from ``MegatronModule``) covers the backbone and the
    head (``head.weight`` sharded along H, ``head.bias`` replicated): what
    :func:`rm_registry.engine.checkpoint.save_checkpoint` saves. ``backbone.output_layer`` has
    no weight (tied embeddings, never used).

    Args:
        config: megatron's transformer config (see :func:`build_transformer_config`).
        vocab_size: The tokenizer's vocabulary size (unpadded).
        padded_vocab_size: Rows of the embedding table (>= ``vocab_size``, divisible by TP).
        max_sequence_length: Longest sequence accepted (position embeddings).
        num_outputs: K, the width of the reward head.
        pooling: One of :data:`POOLINGS`.
        head_dtype: dtype of the head's weights and input (``None``: ``config.params_dtype``).
        position_embedding_type: ``learned_absolute`` or ``rope``.
        rotary_base, rotary_percent: Rotary embedding base (HF ``rope_theta``) and the share of
            each head that is rotated (HF ``partial_rotary_factor``).
        rope_scaling, rope_scaling_factor: Llama 3 rope scaling (megatron-core's fixed variant).
        head_bias: Whether the head has a bias (Hugging Face heads have none).
        attention_backend: ``sdpa`` (causal SDPA, no mask tensor) or ``local`` (megatron's
            ``DotProductAttention``); the same weights and rewards either way.
    """

    def __init__(
        self,
        config: TransformerConfig,
        *,
        vocab_size: int,
        padded_vocab_size: int,
        max_sequence_length: int,
        num_outputs: int = 1,
        pooling: str = "last",
        head_dtype: torch.dtype | None = None,
        position_embedding_type: str = "learned_absolute",
        rotary_base: float = 10000,
        rotary_percent: float = 1.0,
        rope_scaling: bool = False,
        rope_scaling_factor: float = 8.0,
        head_bias: bool = True,
        attention_backend: str = "sdpa",
    ) -> None:
        super().__init__(config=config)
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS)}")
        if num_outputs < 1:
            raise ConfigError(f"num_outputs={num_outputs}: expected >= 1")
        if position_embedding_type not in ("learned_absolute", "rope"):
            raise ConfigError(
                f"model.position_embedding_type={position_embedding_type!r}: "
                "expected learned_absolute or rope"
            )
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size
        self.max_sequence_length = max_sequence_length
        self.num_outputs = num_outputs
        self.pooling = pooling
        self.attention_backend = attention_backend
        self.head_dtype = head_dtype or config.params_dtype
        self.backbone = _HiddenStatesGPT(
            config=config,
            transformer_layer_spec=layer_spec(config.normalization, config.qk_layernorm, attention_backend),
            vocab_size=padded_vocab_size,
            max_sequence_length=max_sequence_length,
            pre_process=True,
            post_process=True,
            share_embeddings_and_output_weights=True,  # no vocabulary projection weights
            position_embedding_type=position_embedding_type,
            rotary_base=rotary_base,  # type: ignore[arg-type]  # megatron annotates int; floats work
            rotary_percent=rotary_percent,
            rope_scaling=rope_scaling,
            rope_scaling_factor=rope_scaling_factor,
        )
        if config.params_dtype != torch.float32:
            # Some local-spec modules (torch LayerNorm) are created in float32 whatever
            # params_dtype says; megatron's Float16Module casts the whole model likewise.
            self.backbone.to(config.params_dtype)
        head_config = config
        if self.head_dtype != config.params_dtype:
            head_config = dataclasses.replace(config, params_dtype=self.head_dtype)
        # Row-parallel: each TP rank multiplies its slice of H, the partial results are
        # all-reduced, then the bias is added: every TP rank holds the same [.., K] output.
        self.head = RowParallelLinear(
            config.hidden_size,
            num_outputs,
            config=head_config,
            init_method=config.init_method,
            bias=head_bias,
            input_is_parallel=False,
            skip_bias_add=False,
            tp_group=parallel_state.get_tensor_model_parallel_group(),
        )
        if not config.perform_initialization:
            _mark_tensor_parallel(self)

    @classmethod
    def from_config(cls, cfg: DictConfig, *, vocab_size: int, num_outputs: int = 1) -> RewardModel:
        """Build from the merged config tree (``cfg.model.*``).

        Initializes the parallel state for one process (seeded with ``cfg.seed``) when nothing
        has initialized it; otherwise it must match ``model.tensor_model_parallel_size``. The
        model is moved to the current CUDA device when there is one.

        Raises:
            ConfigError: naming the offending key and value.
        """
        config = build_transformer_config(cfg)
        tp = config.tensor_model_parallel_size
        if not parallel_state.model_parallel_is_initialized():
            parallel.initialize(tensor_model_parallel_size=tp, seed=int(OmegaConf.select(cfg, "seed", default=1234)))
        elif parallel_state.get_tensor_model_parallel_world_size() != tp:
            raise ConfigError(
                f"model.tensor_model_parallel_size={tp} but the parallel state was initialized "
                f"with {parallel_state.get_tensor_model_parallel_world_size()}; call "
                f"rm_registry.engine.parallel.initialize(tensor_model_parallel_size={tp}) first"
            )
        seq_len = _positive_int(cfg, "model.encoder_seq_length")
        max_pos = OmegaConf.select(cfg, "model.max_position_embeddings", default=None)
        max_pos = seq_len if max_pos is None else _positive_int(cfg, "model.max_position_embeddings")
        if max_pos < seq_len:
            raise ConfigError(
                f"model.max_position_embeddings={max_pos} is smaller than "
                f"model.encoder_seq_length={seq_len}"
            )
        output_sequence = bool(OmegaConf.select(cfg, "model.output_sequence", default=False))
        avg_pool = bool(OmegaConf.select(cfg, "model.use_avg_pool", default=False))
        if output_sequence and avg_pool:
            raise ConfigError("model.output_sequence and model.use_avg_pool cannot both be true")
        pooling = "sequence" if output_sequence else "mean" if avg_pool else "last"
        head = OmegaConf.select(cfg, "model.force_head_dtype", default=None)
        head_dtype = None if head is None else parse_dtype(head, "model.force_head_dtype")
        divisible = _positive_int(cfg, "model.make_vocab_size_divisible_by")
        # A pretrained embedding may have more rows than the tokenizer has tokens (Qwen2).
        vocab_size = max(vocab_size, _optional_int(cfg, "model.vocab_size") or 0)
        percent = _number(cfg, "model.rotary_percent", 1.0)
        if percent > 1:
            raise ConfigError(f"model.rotary_percent={percent}: expected a number in (0, 1]")
        model = cls(
            config,
            vocab_size=vocab_size,
            padded_vocab_size=padded_vocab_size(vocab_size, divisible, tp),
            max_sequence_length=max_pos,
            num_outputs=num_outputs,
            pooling=pooling,
            head_dtype=head_dtype,
            position_embedding_type=str(
                OmegaConf.select(cfg, "model.position_embedding_type", default="learned_absolute")
            ),
            rotary_base=_number(cfg, "model.rotary_base", 10000),
            rotary_percent=percent,
            rope_scaling=_flag(cfg, "model.rope_scaling", False),
            rope_scaling_factor=_number(cfg, "model.rope_scaling_factor", 8.0),
            head_bias=_flag(cfg, "model.head_bias", True),
            attention_backend=str(OmegaConf.select(cfg, "model.attention_backend", default="sdpa")),
        )
        if torch.cuda.is_available():
            model.cuda(torch.cuda.current_device())
        return model

    def _check_inputs(self, tokens: torch.Tensor, lengths: torch.Tensor) -> None:
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(
                f"tokens must be an int64 tensor [N, S], got {tokens.dtype} {tuple(tokens.shape)}"
            )
        if lengths.shape != (tokens.shape[0],):
            raise ValueError(
                f"lengths must have shape [N] = [{tokens.shape[0]}], got {tuple(lengths.shape)}"
            )
        n, s = tokens.shape
        if n == 0 or s == 0:
            raise ValueError(f"empty batch: tokens has shape {tuple(tokens.shape)}")
        if s > self.max_sequence_length:
            raise ValueError(
                f"sequence length {s} exceeds the model's max_sequence_length "
                f"{self.max_sequence_length} (model.max_position_embeddings)"
            )
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > s:
            raise ValueError(
                f"lengths must be in [1, {s}] (S = tokens.shape[1]); got min {lo}, max {hi}"
            )
        tmin, tmax = int(tokens.min()), int(tokens.max())
        if tmin < 0 or tmax >= self.padded_vocab_size:
            raise ValueError(
                f"token ids must be in [0, {self.padded_vocab_size}); got min {tmin}, max {tmax}"
            )

    def hidden_states(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Final hidden states after the final layernorm.

        Args:
            tokens: ``[N, S]`` int64, right-padded.
            lengths: ``[N]`` int64, real tokens per row (1..S).

        Returns:
            ``[S, N, H]`` in ``params_dtype`` (megatron's sequence-first layout).
        """
        self._check_inputs(tokens, lengths)
        n, s = tokens.shape
        positions = torch.arange(s, device=tokens.device)
        position_ids = positions.unsqueeze(0).expand(n, s)  # [N, S]
        if self.attention_backend == "sdpa":  # causal inside the kernel: no mask tensor
            return self.backbone(tokens, position_ids, None)
        padding = positions.unsqueeze(0) >= lengths.unsqueeze(1)  # [N, S], True = padding
        causal = torch.ones(s, s, dtype=torch.bool, device=tokens.device).triu(1)  # [S, S]
        # Megatron convention: True = masked. Right padding with a causal mask already keeps
        # real tokens from seeing padding; masking padded keys too keeps padded rows tidy.
        mask = causal[None, None, :, :] | padding[:, None, None, :]  # [N, 1, S, S]
        return self.backbone(tokens, position_ids, mask)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Rewards of right-padded token sequences.

        Args:
            tokens: ``[N, S]`` int64 token ids, right-padded (any id after ``length``).
            lengths: ``[N]`` int64, number of real tokens of each row, in ``[1, S]``.

        Returns:
            float32 ``[N, K]`` rewards, or ``[N, S, K]`` per-token values with
            ``model.output_sequence`` (zero at padding positions). Identical on every
            tensor-parallel rank.

        Raises:
            ValueError: bad shapes, lengths outside ``[1, S]``, S above the maximum length, or
                token ids outside the embedding table.
        """
        hidden = self.hidden_states(tokens, lengths)  # [S, N, H]
        if self.pooling == "sequence":
            out, _ = self.head(hidden.to(self.head_dtype))  # [S, N, K]
            out = out.transpose(0, 1).float()  # [N, S, K]
            padding = torch.arange(tokens.shape[1], device=tokens.device)[None, :] >= lengths[:, None]
            return out.masked_fill(padding.unsqueeze(-1), 0.0)
        if self.pooling == "last":
            rows = torch.arange(tokens.shape[0], device=tokens.device)
            pooled = hidden[lengths - 1, rows]  # [N, H]
        else:  # mean over real tokens
            keep = torch.arange(tokens.shape[1], device=tokens.device)[:, None] < lengths[None, :]
            summed = (hidden * keep.unsqueeze(-1).to(hidden.dtype)).sum(dim=0)  # [N, H]
            pooled = summed / lengths.unsqueeze(-1).to(hidden.dtype)
        # The megatron linear layers expect [S, N, H]: run the head on a length-1 "sequence".
        out, _ = self.head(pooled.unsqueeze(0).to(self.head_dtype))  # [1, N, K]
        return out.squeeze(0).float()  # [N, K]
