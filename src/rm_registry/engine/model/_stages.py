"""Pipeline stages of the reward model (``model.pipeline_model_parallel_size > 1``), laid out as
NeMo-Aligner did: the embedding on the first stage, ``num_layers / PP`` transformer layers on each
stage (megatron's offsets, so layer keys in checkpoints keep their global numbers), the final
layernorm and the reward head on the last stage. Hidden states ``[S, N, H]`` travel between stages
(megatron's schedules send them, :mod:`rm_registry.engine.parallel._pipeline`).

What this module adds to megatron's ``GPTModel``:

* :func:`seeded_layers`: each transformer layer draws its initial weights from a generator seeded
  by the model's seed and the layer's *global* number, and the head from one of its own, so the
  initial weights are the same under every pipeline layout (megatron draws every layer in turn from
  one stream: a stage that does not build layers 1..k would start from another point of it);
* :func:`add_final_norm`: the last stage is built with ``post_process=False`` (no vocabulary
  projection, and no output-layer copy of the embedding, which megatron would allocate on a last
  stage that lacks the embedding) and gets the block's final layernorm here, under the name it has
  in a one-stage model (``decoder.final_layernorm``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_layer import TransformerLayer, get_transformer_layer_offset

__all__ = ["SeededTransformerLayer", "add_final_norm", "derived_seed", "seeded_layers"]

#: Tag of the head's generator in :func:`derived_seed` (layers use their 1-based global number).
HEAD_TAG = 0
#: Tag of the default generator's state after the model is built.
AFTER_TAG = -1


def derived_seed(base: int, tag: int) -> int:
    """A seed for one part of the model (``tag``: a global layer number, :data:`HEAD_TAG`, ...)."""
    return (int(base) * 1_000_003 + 7_919 * (int(tag) + 2)) % (2**63 - 1)


class SeededTransformerLayer(TransformerLayer):
    """megatron's ``TransformerLayer``, its weights drawn after seeding the default generator with
    ``derived_seed(init_seed, global layer number)``. Same parameters, names and forward."""

    def __init__(self, config: Any, submodules: Any, layer_number: int = 1, *args: Any, init_seed: int,
                 **kwargs: Any) -> None:
        offset = get_transformer_layer_offset(config, kwargs.get("vp_stage"))
        torch.manual_seed(derived_seed(init_seed, layer_number + offset))
        super().__init__(config, submodules, layer_number, *args, **kwargs)


def _seeded(spec: ModuleSpec, seed: int) -> ModuleSpec:
    if spec.module is not TransformerLayer:  # another layer class: left as it is
        return spec
    return dataclasses.replace(spec, module=SeededTransformerLayer, params={**spec.params, "init_seed": seed})


def seeded_layers(spec: Any, seed: int) -> Any:
    """``spec`` (a layer ``ModuleSpec`` or ``TransformerBlockSubmodules``) with its layers built by
    :class:`SeededTransformerLayer` seeded from ``seed``."""
    if isinstance(spec, TransformerBlockSubmodules):
        return dataclasses.replace(spec, layer_specs=[_seeded(s, seed) for s in spec.layer_specs])
    return _seeded(spec, seed)


def add_final_norm(block: torch.nn.Module) -> None:
    """Give a megatron ``TransformerBlock`` built with ``post_process=False`` its final layernorm
    (as ``post_process=True`` would), so that its output is the normalized last hidden states."""
    if getattr(block, "final_layernorm", None) is not None or not block.post_layer_norm:
        return
    norm = block.submodules.layer_norm
    if norm is None:
        return
    block.final_layernorm = build_module(norm, config=block.config, hidden_size=block.config.hidden_size,
                                         eps=block.config.layernorm_epsilon)
    block.post_process = True
