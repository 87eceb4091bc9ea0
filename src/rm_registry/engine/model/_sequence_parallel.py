"""Sequence parallelism (``model.sequence_parallel=true`` with tensor parallelism > 1), megatron's way.

With it the layernorms, dropouts and residual adds of every layer run on ``S / TP`` of the sequence
on each tensor-parallel rank instead of on all of it: activation memory outside attention and the
MLP drops by ``TP``. megatron-core does the communication (the embedding scatters its output along
the sequence; column-parallel linears all-gather their input, row-parallel linears reduce-scatter
their output). What the reward model adds (:class:`~rm_registry.engine.model.RewardModel`):

* :func:`pad_to_multiple`: the sequence axis must split evenly, so a batch's ``S`` is padded on the
  right to a multiple of ``TP`` (causal attention: real tokens never see it; sliced off again);
* :func:`sequence_parallel_spec`: megatron's local layer spec refuses sequence parallelism for its
  torch norms (``WrappedTorchNorm`` asserts); the spec returned uses :class:`TorchNorm`, the same
  torch ``LayerNorm`` / ``RMSNorm`` with the weights marked ``sequence_parallel`` (the final norm
  of the block included) and, under mixed precision, outputs in the compute dtype (see
  :func:`_to_autocast_dtype`). Transformer Engine and apex norms support it themselves;
* :func:`gather_sequence`: the final hidden states ``[S / TP, N, H]`` are all-gathered to
  ``[S, N, H]`` before pooling, so the last real token is read wherever it landed;
* the gradients of the weights each rank saw only part of the sequence for are summed over the
  tensor-parallel group after backward (``trainer._optim.allreduce_tensor_parallel_replicas``).

Shapes: ``S`` sequence, ``N`` batch rows, ``H`` hidden size, ``TP`` tensor-parallel size.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

__all__ = ["TorchNorm", "gather_sequence", "pad_to_multiple", "sequence_parallel_spec"]


class TorchNorm:
    """torch's ``LayerNorm`` / ``RMSNorm`` (``config.normalization``) for megatron's layer specs,
    without ``WrappedTorchNorm``'s sequence-parallel refusal: under sequence parallelism its
    parameters carry ``sequence_parallel=True`` (megatron's mark: summed over tensor-parallel
    ranks after backward). Same parameters, names and results as ``WrappedTorchNorm``."""

    def __new__(cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_: Any) -> torch.nn.Module:  # type: ignore[misc]
        for flag in ("layernorm_zero_centered_gamma", "persist_layer_norm", "memory_efficient_layer_norm"):
            if getattr(config, flag, False):  # as WrappedTorchNorm
                raise ValueError(f"{flag} is not supported by torch's norms")
        norm: torch.nn.Module
        if config.normalization == "LayerNorm":
            norm = _AutocastLayerNorm(hidden_size, eps=eps)
        elif config.normalization == "RMSNorm":
            norm = _AutocastRMSNorm(hidden_size, eps=eps)
        else:
            raise ValueError(f"normalization {config.normalization!r}: expected LayerNorm or RMSNorm")
        for p in norm.parameters():
            p.sequence_parallel = bool(config.sequence_parallel)  # type: ignore[attr-defined]
        return norm


def _to_autocast_dtype(out: torch.Tensor) -> torch.Tensor:
    """Under autocast, ``out`` in the autocast dtype (torch's norms give float32 there).

    The sequence-parallel linear that reads a norm's output all-gathers it and, in backward,
    reduce-scatters the input gradient into a buffer of the input's dtype; the gradient comes back
    in the autocast dtype, and gloo and NCCL both refuse the mixed pair. A norm output in the
    compute dtype (what Transformer Engine's norms give) keeps the two equal; the linear would cast
    it to that dtype anyway.
    """
    kind = out.device.type
    if torch.is_autocast_enabled(kind):
        return out.to(torch.get_autocast_dtype(kind))
    return out


class _AutocastLayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` whose output is in the autocast dtype under autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_autocast_dtype(super().forward(x))


class _AutocastRMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm`` whose output is in the autocast dtype under autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_autocast_dtype(super().forward(x))


def _swap_norms(node: Any, old: type) -> int:
    """Replace ``old`` by :class:`TorchNorm` in a layer spec's submodule tree, in place; the number replaced."""
    if not dataclasses.is_dataclass(node):
        return 0
    swapped = 0
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if value is old:
            setattr(node, f.name, TorchNorm)
            swapped += 1
        elif hasattr(value, "submodules"):  # a ModuleSpec
            if getattr(value, "module", None) is old:
                value.module = TorchNorm
                swapped += 1
            swapped += _swap_norms(value.submodules, old)
        elif dataclasses.is_dataclass(value):
            swapped += _swap_norms(value, old)
    return swapped


def sequence_parallel_spec(spec: Any, config: TransformerConfig) -> Any:
    """The block spec for ``GPTModel(transformer_layer_spec=...)`` under sequence parallelism.

    ``spec`` is a transformer-layer ``ModuleSpec``. Where it uses megatron's ``WrappedTorchNorm``
    (the local spec without apex), a copy whose norms are :class:`TorchNorm`, as a
    ``TransformerBlockSubmodules`` whose final norm is :class:`TorchNorm` too (a bare layer spec
    would get megatron's default final norm, ``WrappedTorchNorm`` again). Any other spec
    (Transformer Engine, apex) is returned unchanged: its norms support sequence parallelism.
    """
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    spec = copy.deepcopy(spec)
    if not _swap_norms(spec.submodules, WrappedTorchNorm):
        return spec
    return TransformerBlockSubmodules(layer_specs=[spec] * get_num_layers_to_build(config), layer_norm=TorchNorm)


def pad_to_multiple(tokens: torch.Tensor, multiple: int) -> torch.Tensor:
    """``tokens [N, S]`` right-padded (with its last column's ids) to ``[N, S']``, ``S'`` the next
    multiple of ``multiple``; unchanged when ``S`` is one already."""
    extra = -tokens.shape[1] % multiple
    if not extra:
        return tokens
    return torch.cat([tokens, tokens[:, -1:].expand(-1, extra)], dim=1)


def gather_sequence(hidden: torch.Tensor) -> torch.Tensor:
    """``[S / TP, N, H]`` on each tensor-parallel rank -> ``[S, N, H]`` on every rank.

    Backward keeps each rank's own chunk of the incoming gradient (no sum): everything after the
    gather (pooling, the head's scatter over H and its all-gather back) gives every rank the same
    full gradient, so summing would count it ``TP`` times.
    """
    from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

    return gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
