"""Memory a rank holds for a model and a layout, computed from the config alone (no torch).

What the engine keeps for every trained parameter:

=========================  ===================================  =================================
precision                  weights + gradients                  Adam moments (exp_avg, exp_avg_sq)
=========================  ===================================  =================================
``32`` / ``*-mixed``       float32: 4 + 4 bytes                  2 x 4 bytes (/ DP when sharded)
``params_dtype=bfloat16``  bfloat16: 2 + 2 bytes                 2 x 2 bytes (/ DP when sharded)
=========================  ===================================  =================================

Mixed precision computes in bf16/fp16 but holds float32 main weights (``trainer.precision``).
Parameters are counted as megatron-core's GPT layers lay them out: the embedding (and the
weights of attention and MLP) split over tensor-parallel ranks, norms and biases of row-parallel
layers replicated, the reward head row-parallel. Activations are not included: they depend on
the micro-batch and sequence lengths.

:func:`rank_memory` is what ``docs/scaling.md``'s table is computed with
(``benchmarks/memory_table.py``); ``tests/engine/test_memory.py`` checks it against the
parameters of real models.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._checks import ModelShape

__all__ = ["RankMemory", "rank_memory", "stage_parameters"]

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds (the largest pipeline stage's rank), before activations."""

    parameters: int  # parameters on the rank (its TP shard of its stage)
    weights: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer


def _layer_parameters(s: ModelShape, tp: int) -> int:
    """Parameters of one transformer layer on one tensor-parallel rank."""
    h, kv = s.hidden_size, s.kv_channels or s.hidden_size // s.num_attention_heads
    groups = s.num_query_groups or s.num_attention_heads
    norm = 2 * h if s.normalization == "LayerNorm" else h  # weight (+ bias)
    qkv_out = (s.num_attention_heads + 2 * groups) * kv
    total = 2 * norm  # input and pre-MLP layernorms (replicated)
    total += h * qkv_out // tp + (qkv_out // tp if s.add_bias_linear or s.add_qkv_bias else 0)  # column-parallel
    total += s.num_attention_heads * kv * h // tp + (h if s.add_bias_linear else 0)  # row-parallel proj
    fc1 = s.ffn_hidden_size * (2 if s.gated_linear_unit else 1)
    total += h * fc1 // tp + (fc1 // tp if s.add_bias_linear else 0)
    total += s.ffn_hidden_size * h // tp + (h if s.add_bias_linear else 0)
    if s.qk_layernorm:
        total += 2 * (2 * kv if s.normalization == "LayerNorm" else kv)
    return total


def stage_parameters(s: ModelShape, padded_vocab: int, num_outputs: int, *, tp: int, pp: int, stage: int) -> int:
    """Parameters on one rank of pipeline stage ``stage`` (0-based) under ``tp`` x ``pp``.

    Layers are split evenly over stages (megatron's default); the first stage holds the
    embedding, the last the final norm and the reward head.
    """
    h = s.hidden_size
    total = (s.num_layers // pp) * _layer_parameters(s, tp)
    if stage == 0:
        total += padded_vocab * h // tp
        if s.position_embedding_type == "learned_absolute":
            total += s.max_position_embeddings * h
    if stage == pp - 1:
        total += 2 * h if s.normalization == "LayerNorm" else h
        total += h * num_outputs // tp + (num_outputs if s.head_bias else 0)
    return total


def rank_memory(s: ModelShape, padded_vocab: int, *, num_outputs: int = 1, tp: int = 1, pp: int = 1, dp: int = 1,
                sharded_optimizer: bool = False) -> RankMemory:
    """What the most loaded rank holds for ``s`` under ``tp`` x ``pp`` x ``dp``.

    ``s.params_dtype`` is the dtype of weights, gradients and moments (float32 with mixed
    precision); ``sharded_optimizer`` divides the moments by ``dp``.
    """
    parameters = max(stage_parameters(s, padded_vocab, num_outputs, tp=tp, pp=pp, stage=k) for k in range(pp))
    width = _BYTES[s.params_dtype]
    moments = 2 * width * parameters
    if sharded_optimizer and dp > 1:
        moments = -(-moments // dp)
    return RankMemory(parameters=parameters, weights=width * parameters, gradients=width * parameters,
                      optimizer=moments)
