"""Tensor conversions between Hugging Face and megatron-core layouts, and tensor-parallel slicing.

Shapes: H hidden, nh heads, ng query groups (key/value heads), hpg = nh / ng, hd head size,
F ffn size, V HF vocabulary rows, Vp padded rows.

- ``qkv``: HF ``q [nh*hd, H]``, ``k [ng*hd, H]``, ``v [ng*hd, H]`` -> ours ``[ng*(hpg+2)*hd, H]``,
  per query group ``[its hpg query heads; its key head; its value head]`` (biases alike without H).
- ``gate_up``: ``gate [F, H]``, ``up [F, H]`` -> ``[2F, H]`` (gate first).
- ``conv1d``: GPT-2 ``[in, out]`` -> ``[out, in]``.
- ``conv1d_qkv``: GPT-2 ``c_attn [H, 3H]`` (bias ``[3H]``) -> transpose, split q, k, v, then ``qkv``.
- ``embedding``: ``[V, H]`` -> the first V of our Vp rows (the rest are zero; trimmed on export).
"""

from __future__ import annotations

import torch

from ._family import Rule, Shapes

__all__ = ["expected_hf_shapes", "to_hf", "to_ours", "tp_slice"]


def _interleave(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: Shapes) -> torch.Tensor:
    hpg = s.heads // s.groups
    tail = q.shape[1:]  # (H,) for weights, () for biases
    parts = [q.reshape(s.groups, hpg * s.head_dim, *tail), k.reshape(s.groups, s.head_dim, *tail),
             v.reshape(s.groups, s.head_dim, *tail)]
    return torch.cat(parts, dim=1).reshape(-1, *tail)


def _split(qkv: torch.Tensor, s: Shapes) -> list[torch.Tensor]:
    hpg = s.heads // s.groups
    tail = qkv.shape[1:]
    grouped = qkv.reshape(s.groups, (hpg + 2) * s.head_dim, *tail)
    q, k, v = torch.split(grouped, [hpg * s.head_dim, s.head_dim, s.head_dim], dim=1)
    return [q.reshape(-1, *tail), k.reshape(-1, *tail), v.reshape(-1, *tail)]


def expected_hf_shapes(rule: Rule, ours: tuple[int, ...], s: Shapes) -> list[tuple[int, ...]]:
    """The HF shapes ``rule`` needs, given our (full, unsharded) shape ``ours``."""
    tail = ours[1:]
    if rule.kind == "qkv":
        return [(s.heads * s.head_dim, *tail), (s.groups * s.head_dim, *tail), (s.groups * s.head_dim, *tail)]
    if rule.kind == "gate_up":
        return [(ours[0] // 2, *tail)] * 2
    if rule.kind == "conv1d":
        return [tuple(reversed(ours))]
    if rule.kind == "conv1d_qkv":
        return [(ours[1], ours[0])] if len(ours) == 2 else [ours]
    if rule.kind == "embedding":
        return [(s.vocab, *tail)]
    return [ours]


def to_ours(rule: Rule, hf: list[torch.Tensor], s: Shapes) -> torch.Tensor:
    """Our full (unsharded) tensor from the HF tensors of ``rule`` (embedding: only the V HF rows)."""
    kind = rule.kind
    if kind == "qkv":
        return _interleave(hf[0], hf[1], hf[2], s)
    if kind == "gate_up":
        return torch.cat([hf[0], hf[1]], dim=0)
    if kind == "conv1d":
        return hf[0].t().contiguous()
    if kind == "conv1d_qkv":
        w = hf[0].t() if hf[0].ndim == 2 else hf[0]
        q, k, v = torch.chunk(w, 3, dim=0)
        return _interleave(q, k, v, s)
    return hf[0]


def to_hf(rule: Rule, ours: torch.Tensor, s: Shapes) -> list[torch.Tensor]:
    """The HF tensors of ``rule`` from our full tensor (the reverse of :func:`to_ours`)."""
    kind = rule.kind
    if kind == "qkv":
        return [t.contiguous() for t in _split(ours, s)]
    if kind == "gate_up":
        return [t.contiguous() for t in torch.chunk(ours, 2, dim=0)]
    if kind == "conv1d":
        return [ours.t().contiguous()]
    if kind == "conv1d_qkv":
        w = torch.cat(_split(ours, s), dim=0)
        return [w.t().contiguous() if w.ndim == 2 else w.contiguous()]
    if kind == "embedding":
        return [ours[: s.vocab].contiguous()]
    return [ours.contiguous()]


def tp_slice(rule: Rule, full: torch.Tensor, param: torch.nn.Parameter, rank: int, size: int) -> torch.Tensor:
    """This tensor-parallel rank's part of our full tensor, as megatron-core shards ``param``.

    Column-parallel tensors are split along dim 0 (``qkv`` is group-major, so each rank gets whole
    query groups); the gated ``linear_fc1`` holds ``[its gate slice; its up slice]``; row-parallel
    weights are split along dim 1; replicated tensors are whole.
    """
    if size == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    dim = int(getattr(param, "partition_dim", 0))
    if rule.kind == "gate_up":
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([torch.chunk(gate, size, dim=0)[rank], torch.chunk(up, size, dim=0)[rank]], dim=0)
    return torch.chunk(full, size, dim=dim)[rank]
