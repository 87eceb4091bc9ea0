"""The reward model: a megatron-core ``GPTModel`` backbone, pooling, and a reward head.

In: a validated config (:func:`~rm_registry.engine.config._checks.model_shape`) and the tokenizer's
vocabulary size. Out: a ``MegatronModule`` mapping ``tokens [N, S]`` -> rewards ``[N, K]``.

Modules: this one (config -> ``TransformerConfig`` -> :class:`RewardModel`); ``_attention``
(causal SDPA core attention for megatron's local layer spec); ``_sequence_parallel``; ``_stages``
(pipeline stages: which stage holds what, layout-independent initial weights).

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
      -> or, with positions [M, 2] (row, index): the hidden state at each  -> [M, H]
      -> head (row-parallel linear H -> K with bias; all-reduced over tensor-parallel ranks)
      -> rewards [N, K] (or [N, S, K], or [M, K]), float32

Mixed precision (``trainer.precision=bf16-mixed`` / ``16-mixed``, :attr:`RewardModel.compute_dtype`):
the weights stay float32 (the main weights the optimizer updates, and what checkpoints hold) and
the forward pass runs under ``torch.autocast`` in bfloat16 / float16, so gradients arrive in
float32 too. The head (H -> K) runs outside autocast in its own dtype (float32 unless
``model.force_head_dtype`` says otherwise).

Weights are initialized on the CPU with megatron's ``use_cpu_initialization``: every
tensor-parallel weight is drawn in full from the (identically seeded) default generator and then
sliced, so the un-sharded weights do not depend on the tensor-parallel size, and a TP=2 model
computes what the TP=1 model computes. For the same reason the vocabulary is padded to a multiple
of ``model.make_vocab_size_divisible_by`` alone (which must be a multiple of the tensor-parallel
size), not to ``make_vocab_size_divisible_by * tp`` as Megatron-LM does: the embedding keeps one
shape under every layout, so checkpoints reshard between layouts.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.enums import ModelType
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel import RowParallelLinear
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from omegaconf import DictConfig, OmegaConf

from ..._errors import ConfigError
from .. import parallel
from ._attention import with_core_attention
from ._sequence_parallel import gather_sequence, pad_to_multiple, sequence_parallel_spec
from ._stages import AFTER_TAG, HEAD_TAG, add_final_norm, derived_seed, seeded_layers
from ..config._checks import ACTIVATIONS as ACTIVATION_NAMES
from ..config._checks import DTYPE_ALIASES, NORMALIZATIONS, POOLINGS, POSITION_EMBEDDINGS, ModelShape, model_shape
from ..config._nemo_compat import recompute_options

if TYPE_CHECKING:  # pragma: no cover
    from megatron.core.transformer.spec_utils import ModuleSpec

__all__ = [
    "ACTIVATIONS",
    "NORMALIZATIONS",
    "POOLINGS",
    "RewardModel",
    "build_transformer_config",
    "check_positions",
    "compile_backbone",
    "layer_spec",
    "padded_vocab_size",
    "parse_dtype",
]

def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU (GPT-2's ``gelu_new``, megatron's ``fast_gelu``)."""
    return F.gelu(x, approximate="tanh")


#: The function of each ``model.activation`` value (the names: ``config._checks.ACTIVATIONS``).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": gelu_tanh,
    "silu": F.silu,
    "relu": F.relu,
}
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES


def parse_dtype(value: Any, key: str) -> torch.dtype:
    """Map a config value (``float32``, ``bf16``, ``16``, ...) to a torch dtype.

    Raises:
        ConfigError: naming ``key`` for anything else.
    """
    if isinstance(value, torch.dtype):
        return value
    name = str(value).lower().replace("torch.", "")
    if name not in DTYPE_ALIASES:
        raise ConfigError(f"{key}={value!r}: expected one of float32, bfloat16, float16")
    return getattr(torch, DTYPE_ALIASES[name])


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


def build_transformer_config(cfg: DictConfig, shape: ModelShape | None = None) -> TransformerConfig:
    """Megatron's :class:`TransformerConfig` for ``cfg.model.*``.

    Args:
        cfg: The config tree.
        shape: Its validated values (:func:`~rm_registry.engine.config._checks.model_shape`),
            when the caller has them already.

    Raises:
        ConfigError: naming the offending key and value (the checks are ``model_shape``'s).
    """
    s = model_shape(cfg) if shape is None else shape
    dtype = parse_dtype(s.params_dtype, "model.params_dtype")
    compute = dtype if s.compute_dtype is None else parse_dtype(s.compute_dtype, "trainer.precision")
    return TransformerConfig(
        num_layers=s.num_layers,
        hidden_size=s.hidden_size,
        ffn_hidden_size=s.ffn_hidden_size,
        num_attention_heads=s.num_attention_heads,
        hidden_dropout=s.hidden_dropout,
        attention_dropout=s.attention_dropout,
        init_method_std=s.init_method_std,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        tensor_model_parallel_size=s.tensor_parallel,
        pipeline_model_parallel_size=s.pipeline_parallel,
        # Stages send hidden states [S, N, H] in the compute dtype; S differs per micro-batch
        # (no padding to encoder_seq_length), so the schedules exchange shapes first.
        pipeline_dtype=compute,
        variable_seq_lengths=s.pipeline_parallel > 1,
        moe_token_dispatcher_type="alltoall",  # no experts; megatron refuses its default with variable lengths
        # Full weights drawn on the CPU, then sliced: identical under every TP layout.
        use_cpu_initialization=True,
        # Weights loaded from a pretrained folder overwrite every tensor: drawing them first would
        # only cost time and a full-size float32 copy per tensor (see engine/hf).
        perform_initialization=not OmegaConf.select(cfg, "pretrained_checkpoint.restore_from_path", default=None),
        sequence_parallel=s.sequence_parallel,
        normalization=s.normalization,
        layernorm_epsilon=s.layernorm_epsilon,
        activation_func=ACTIVATIONS[s.activation],
        gated_linear_unit=s.gated_linear_unit,
        num_query_groups=s.num_query_groups,
        kv_channels=s.kv_channels,
        add_bias_linear=s.add_bias_linear,
        add_qkv_bias=s.add_qkv_bias,
        qk_layernorm=s.qk_layernorm,
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
        init_seed: Seed of the initial weights; ``None``: the default generator's
            ``torch.initial_seed()`` (the trainer seeds it with ``cfg.seed`` just before building).
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
        init_seed: int | None = None,
    ) -> None:
        super().__init__(config=config)
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS)}")
        if num_outputs < 1:
            raise ConfigError(f"num_outputs={num_outputs}: expected >= 1")
        if position_embedding_type not in POSITION_EMBEDDINGS:
            raise ConfigError(
                f"position_embedding_type={position_embedding_type!r}: expected one of {', '.join(POSITION_EMBEDDINGS)}"
            )
        self.vocab_size = vocab_size
        self.padded_vocab_size = padded_vocab_size
        self.max_sequence_length = max_sequence_length
        self.num_outputs = num_outputs
        self.pooling = pooling
        self.attention_backend = attention_backend
        self.head_dtype = head_dtype or config.params_dtype
        #: The autocast dtype of the forward pass (mixed precision), None: ``params_dtype`` throughout.
        self.compute_dtype: torch.dtype | None = None
        # Pipeline stage (one stage without pipeline parallelism): the first holds the embedding,
        # the last the final layernorm and the head (see _stages).
        pipelined = parallel_state.get_pipeline_model_parallel_world_size() > 1
        self.model_type = ModelType.encoder_or_decoder  # what megatron's schedules look up
        self.pre_process = parallel_state.is_pipeline_first_stage()
        self.post_process = parallel_state.is_pipeline_last_stage()
        # Each layer and the head draw from a generator of their own (see _stages).
        seed = torch.initial_seed() if init_seed is None else int(init_seed)
        spec = layer_spec(config.normalization, config.qk_layernorm, attention_backend)
        if config.sequence_parallel:
            spec = sequence_parallel_spec(spec, config)
        self.backbone = _HiddenStatesGPT(
            config=config,
            transformer_layer_spec=seeded_layers(spec, seed),
            vocab_size=padded_vocab_size,
            max_sequence_length=max_sequence_length,
            pre_process=self.pre_process,
            post_process=not pipelined,
            # One stage: tied, so that no vocabulary projection weights exist. Several: untied and
            # without post_process, so that none exist either (megatron would copy the embedding
            # to the last stage for the projection).
            share_embeddings_and_output_weights=not pipelined,
            position_embedding_type=position_embedding_type,
            rotary_base=rotary_base,  # type: ignore[arg-type]  # megatron annotates int; floats work
            rotary_percent=rotary_percent,
            rope_scaling=rope_scaling,
            rope_scaling_factor=rope_scaling_factor,
        )
        if pipelined and self.post_process:
            add_final_norm(self.backbone.decoder)
        if config.params_dtype != torch.float32:
            # Some local-spec modules (torch LayerNorm) are created in float32 whatever
            # params_dtype says; megatron's Float16Module casts the whole model likewise.
            self.backbone.to(config.params_dtype)
        head_config = config
        if self.head_dtype != config.params_dtype or config.sequence_parallel:
            # The head reads pooled (gathered) states, never a sequence split over ranks.
            head_config = dataclasses.replace(config, params_dtype=self.head_dtype, sequence_parallel=False)
        # Row-parallel: each TP rank multiplies its slice of H, the partial results are
        # all-reduced, then the bias is added: every TP rank holds the same [.., K] output.
        torch.manual_seed(derived_seed(seed, HEAD_TAG))
        head = RowParallelLinear(
            config.hidden_size,
            num_outputs,
            config=head_config,
            init_method=config.init_method,
            bias=head_bias,
            input_is_parallel=False,
            skip_bias_add=False,
            tp_group=parallel_state.get_tensor_model_parallel_group(),
        )
        if self.post_process:
            self.head = head
        else:
            # Pipeline stages before the last hold no head weights (not a parameter, not saved);
            # the attribute stays for plugins that read ``model.head.weight.device`` / ``.dtype``.
            self.__dict__["head"] = head
        # The default generator afterwards: the same under every layout for one stage, one per stage
        # under pipeline parallelism (so that the stages' dropout masks differ, as megatron's
        # 100 x pipeline rank seed offset does).
        torch.manual_seed(derived_seed(seed, AFTER_TAG - 100 * parallel_state.get_pipeline_model_parallel_rank()))
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
        shape = model_shape(cfg)
        config = build_transformer_config(cfg, shape)
        tp, pp = shape.tensor_parallel, shape.pipeline_parallel
        if not parallel_state.model_parallel_is_initialized():
            seed = OmegaConf.select(cfg, "seed", default=None)  # None: the engine's default seed
            parallel.initialize(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                seed=None if seed is None else int(seed))
        else:
            for key, want, have in (("tensor", tp, parallel_state.get_tensor_model_parallel_world_size()),
                                    ("pipeline", pp, parallel_state.get_pipeline_model_parallel_world_size())):
                if want != have:
                    raise ConfigError(
                        f"model.{key}_model_parallel_size={want} but the parallel state was initialized "
                        f"with {have}; call rm_registry.engine.parallel.initialize({key}_model_parallel_size={want}) "
                        "first")
        # A pretrained embedding may have more rows than the tokenizer has tokens (Qwen2).
        vocab_size = max(vocab_size, shape.vocab_size or 0)
        model = cls(
            config,
            vocab_size=vocab_size,
            padded_vocab_size=padded_vocab_size(vocab_size, shape.make_vocab_size_divisible_by, tp),
            max_sequence_length=shape.max_position_embeddings,
            num_outputs=num_outputs,
            pooling=shape.pooling,
            head_dtype=None if shape.head_dtype is None else parse_dtype(shape.head_dtype, "model.force_head_dtype"),
            position_embedding_type=shape.position_embedding_type,
            rotary_base=shape.rotary_base,
            rotary_percent=shape.rotary_percent,
            rope_scaling=shape.rope_scaling,
            rope_scaling_factor=shape.rope_scaling_factor,
            head_bias=shape.head_bias,
            attention_backend=shape.attention_backend,
        )
        if shape.compute_dtype is not None:
            model.compute_dtype = parse_dtype(shape.compute_dtype, "trainer.precision")
        if torch.cuda.is_available():
            model.cuda(torch.cuda.current_device())
        return model

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``.to()``, ``.cuda()``, dtype casts: also the head a stage before the last keeps outside
        its parameters."""
        out = super()._apply(fn, *args, **kwargs)
        if "head" in self.__dict__:
            self.__dict__["head"]._apply(fn, *args, **kwargs)
        return out

    @property
    def pipelined(self) -> bool:
        """Whether this model is one stage of several (pipeline parallelism)."""
        return not (self.pre_process and self.post_process)

    def pipeline_rewards(self, batches: Any) -> list[torch.Tensor]:
        """What ``self(tokens, lengths[, positions])`` gives without pipeline parallelism, for each
        collated batch, on every stage: megatron's schedule, forward only, through all stages."""
        from ..parallel._pipeline import pipeline_rewards

        return pipeline_rewards(self, batches)

    def set_input_tensor(self, input_tensor: Any) -> None:
        """Pipeline parallelism: the hidden states ``[S, N, H]`` received from the previous stage,
        set by megatron's schedules before each forward of a stage after the first."""
        self.backbone.set_input_tensor(input_tensor)

    def _autocast(self, device: torch.device, enabled: bool = True) -> Any:
        """``torch.autocast`` in :attr:`compute_dtype` (a no-op context without mixed precision)."""
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.compute_dtype, enabled=enabled)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """The reward head on ``[S', N, H]`` -> ``[S', N, K]`` (outside autocast for a float32 head)."""
        with self._autocast(x.device, enabled=self.head_dtype != torch.float32):
            out, _ = self.head(x.to(self.head_dtype))
        return out

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
            ``[S, N, H]`` in ``params_dtype`` (megatron's sequence-first layout), the whole
            sequence on every rank also under sequence parallelism (see ``_sequence_parallel``).
        """
        self._check_inputs(tokens, lengths)
        s = tokens.shape[1]
        if self.config.sequence_parallel:
            tokens = pad_to_multiple(tokens, self.config.tensor_model_parallel_size)
            if tokens.shape[1] > self.max_sequence_length:
                raise ValueError(
                    f"sequence length {s} rounded up to {tokens.shape[1]} (a multiple of the tensor-parallel size, "
                    f"for model.sequence_parallel) exceeds max_sequence_length {self.max_sequence_length}; raise "
                    "model.max_position_embeddings by one multiple of model.tensor_model_parallel_size")
        n, padded = tokens.shape
        positions = torch.arange(padded, device=tokens.device)
        position_ids = positions.unsqueeze(0).expand(n, padded)  # [N, S]
        mask = None  # sdpa: causal inside the kernel, no mask tensor
        if self.attention_backend != "sdpa":
            padding = positions.unsqueeze(0) >= lengths.unsqueeze(1)  # [N, S], True = padding
            causal = torch.ones(padded, padded, dtype=torch.bool, device=tokens.device).triu(1)  # [S, S]
            # Megatron convention: True = masked. Right padding with a causal mask already keeps
            # real tokens from seeing padding; masking padded keys too keeps padded rows tidy.
            mask = causal[None, None, :, :] | padding[:, None, None, :]  # [N, 1, S, S]
        with self._autocast(tokens.device):
            hidden = self.backbone(tokens, position_ids, mask)
        if not self.post_process:  # a pipeline stage before the last: what the next stage receives
            return hidden.to(self.config.pipeline_dtype)
        if self.config.sequence_parallel:
            hidden = gather_sequence(hidden)[:s]  # [S / TP, N, H] -> [S, N, H]
        return hidden

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rewards of right-padded token sequences.

        Args:
            tokens: ``[N, S]`` int64 token ids, right-padded (any id after ``length``).
            lengths: ``[N]`` int64, number of real tokens of each row, in ``[1, S]``.
            positions: ``[M, 2]`` int64 ``(row, token index)`` points to read the head at
                (a batch's ``reward_positions``: token-level architectures such as process
                reward models), each index below its row's length. ``None``: pooled as configured.

        Returns:
            float32 ``[N, K]`` rewards; ``[M, K]`` with ``positions`` (row ``m`` is the head at
            ``positions[m]``); or ``[N, S, K]`` per-token values with ``model.output_sequence``
            (zero at padding positions). Identical on every tensor-parallel rank. On a pipeline
            stage before the last: that stage's hidden states ``[S, N, H]`` (``[S / TP, N, H]``
            under sequence parallelism) in ``config.pipeline_dtype``.

        Raises:
            ValueError: bad shapes, lengths outside ``[1, S]``, S above the maximum length,
                token ids outside the embedding table, or positions outside the real tokens.
        """
        # Checked on every pipeline stage (only the last reads them), so that all stages refuse alike.
        rows, index = check_positions(positions, lengths) if positions is not None else (None, None)
        hidden = self.hidden_states(tokens, lengths)  # [S, N, H]
        if not self.post_process:
            return hidden  # pipeline parallelism: this stage's output, sent on by the schedule
        if positions is not None:
            return self._head(hidden[index, rows].unsqueeze(0)).squeeze(0).float()  # [1, M, K] -> [M, K]
        if self.pooling == "sequence":
            out = self._head(hidden).transpose(0, 1).float()  # [S, N, K] -> [N, S, K]
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
        return self._head(pooled.unsqueeze(0)).squeeze(0).float()  # [1, N, K] -> [N, K]


def check_positions(positions: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows [M], index [M])`` of ``positions [M, 2]``, checked against ``lengths [N]``.

    Raises:
        ValueError: not an int64 ``[M, 2]`` tensor, a row outside ``[0, N)``, or an index outside
            its row's real tokens ``[0, length)``.
    """
    if positions.dim() != 2 or positions.shape[1] != 2 or positions.dtype != torch.long:
        raise ValueError(f"positions must be an int64 tensor [M, 2] of (row, token index), got "
                         f"{positions.dtype} {tuple(positions.shape)}")
    rows, index = positions[:, 0], positions[:, 1]
    if positions.shape[0]:
        n = lengths.shape[0]
        bad_row = (rows < 0) | (rows >= n)
        if bool(bad_row.any()):
            m = int(bad_row.nonzero()[0])
            raise ValueError(f"positions[{m}] names row {int(rows[m])}; the batch has rows 0..{n - 1}")
        bad = (index < 0) | (index >= lengths[rows])
        if bool(bad.any()):
            m = int(bad.nonzero()[0])
            raise ValueError(f"positions[{m}] = ({int(rows[m])}, {int(index[m])}) is outside that row's "
                             f"{int(lengths[rows[m]])} real tokens")
    return rows, index


def _compiler_missing(device: torch.device) -> str | None:
    """Why torch.compile's default backend cannot run here (``None``: it can)."""
    import importlib.util
    import os
    import shutil

    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "triton is not installed"
    names = [os.environ.get("CXX") or "", "g++", "c++", "clang++"]
    return None if any(n and shutil.which(n) for n in names) else "no C++ compiler (g++, c++, clang++ or $CXX) found"


def compile_backbone(model: torch.nn.Module, cfg: DictConfig, device: torch.device) -> bool:
    """``model.compile=true``: compile ``model.backbone`` in place with ``torch.compile(dynamic=True)``
    (parameter names, and so checkpoints, stay as they are). Where the compiler cannot run, or the
    model has no ``backbone``, one warning and the model stays eager; a graph the compiler fails on
    runs eagerly too (torch's ``suppress_errors``). Returns whether it was compiled."""
    import warnings

    if not bool(OmegaConf.select(cfg, "model.compile", default=False)):
        return False
    backbone = getattr(model, "backbone", None)
    why = "the model has no .backbone" if not isinstance(backbone, torch.nn.Module) else _compiler_missing(device)
    if why is not None:
        warnings.warn(f"model.compile=true: {why}; running the model without compiling it", UserWarning, stacklevel=2)
        return False
    from torch import _dynamo

    _dynamo.config.suppress_errors = True
    backbone.compile(dynamic=True)
    return True

