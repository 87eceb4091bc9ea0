"""Import: fill a :class:`~rm_registry.engine.RewardModel` from a Hugging Face folder.

Every tensor is checked (present, right shape) before the first one is copied; then each is read,
converted and sliced for this tensor-parallel rank, one at a time (see ``_io``).
"""

from __future__ import annotations

import re

from pathlib import Path

import torch
from omegaconf import DictConfig

from ..._errors import ConfigError
from ._convert import expected_hf_shapes, to_ours, tp_slice
from ._family import Family, Rule, Shapes
from ._config import CONFIG, is_token_classifier, read_config
from ._folder import family_for_config
from ._io import WeightFiles

__all__ = ["load_hf_weights", "shapes_of"]

HEAD = "score.weight"


def shapes_of(cfg: DictConfig, num_outputs: int) -> Shapes:
    """The converter sizes of ``cfg.model`` (HF vocabulary = ``model.vocab_size``)."""
    m = cfg.model
    heads = int(m.num_attention_heads)
    hidden = int(m.hidden_size)
    return Shapes(hidden=hidden, heads=heads, groups=int(m.num_query_groups or heads),
                  head_dim=int(m.kv_channels or hidden // heads), ffn=int(m.ffn_hidden_size or 4 * hidden),
                  vocab=int(m.vocab_size), layers=int(m.num_layers), outputs=num_outputs)


def _full_shape(param: torch.nn.Parameter, tp: int) -> tuple[int, ...]:
    shape = list(param.shape)
    if tp > 1 and getattr(param, "tensor_model_parallel", False):
        shape[int(getattr(param, "partition_dim", 0))] *= tp
    return tuple(shape)


def _tp() -> tuple[int, int]:
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 0, 1
    return parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size()


def _resolve(files: WeightFiles, family: Family, name: str) -> str | None:
    for candidate in (family.prefix + name, name):
        if candidate in files.names():
            return candidate
    return None


def load_hf_weights(model: torch.nn.Module, folder: str | Path, cfg: DictConfig, *, load_head: bool | None,
                    missing_head: str = "", progress: bool = False) -> bool:
    """Copy the weights of the Hugging Face folder into ``model`` (this rank's shards).

    Args:
        model: Built from ``cfg`` (whose ``model.*`` came from the folder's ``config.json``).
        load_head: The folder's ``score`` head (``pretrained_checkpoint.load_rm_head_weights``):
            ``True``: it must be a ``*ForSequenceClassification`` (scoring it); ``None``: its head
            if it has one; ``False``: never (its ``score.weight`` is not read). A head not read is
            drawn from ``N(0, init_method_std)`` (seeded).
        missing_head: What to do instead, for the message when ``load_head=True`` finds no head
            (default: train a reward model from this base model).

    Returns:
        Whether the head came from the folder (``score.weight``).

    Raises:
        ConfigError: a missing or mis-shaped tensor, a tensor the conversion does not use, or a
            model parameter with no HF counterpart; nothing is copied then.
    """
    folder = Path(folder).expanduser()
    hf = read_config(folder)
    family = family_for_config(hf, folder / CONFIG)
    files = WeightFiles(folder)
    params = stage_parameters(model)  # under pipeline parallelism: this stage's, by global layer number
    head = params.get("head.weight")
    num_outputs = int(getattr(model, "num_outputs", None) or _full_shape(head, 1)[0])
    shapes = shapes_of(cfg, num_outputs)
    rank, tp = _tp()
    rules = family.rules(shapes, cfg.model)
    token_head = is_token_classifier(hf)
    head_name = f"{family.token_head}.weight" if token_head else HEAD
    bias_name = f"{family.token_head}.bias" if token_head else None
    if token_head and head is not None and "head.bias" not in params and bias_name in files.names():
        raise ConfigError(f"{folder}: a *ForTokenClassification head has a bias ({bias_name}) and this model's head "
                          "has none; load it with model.head_bias=true")
    score = head_name if head_name in files.names() else None
    skipped = {score} if load_head is False and score is not None else set()
    if load_head is False:
        score = None
    if score is not None:
        rules.append(Rule("head.weight", (score,)))
        if bias_name is not None and bias_name in files.names():
            rules.append(Rule("head.bias", (bias_name,)))
    elif load_head:
        raise ConfigError(f"{folder}: no {head_name} tensor: this is a base model, not a reward model "
                          "(*ForSequenceClassification); "
                          + (missing_head or "train one with `rm-registry train NAME --pretrained DIR`"))

    uncovered = sorted(set(params) - {r.ours for r in rules} - {"head.weight", "head.bias"})
    if uncovered:
        raise ConfigError(f"the model has parameters with no Hugging Face counterpart in the {family.name} table "
                          f"({', '.join(uncovered[:3])}); a plugin whose model adds parameters cannot be imported")
    resolved: list[tuple[Rule, list[str]]] = []
    used: set[str] = set()
    for rule in rules:
        names = []
        here = rule.ours in params  # a tensor of another pipeline stage: checked there, counted as used here
        wants = expected_hf_shapes(rule, _full_shape(params[rule.ours], tp), shapes) if here else [None] * len(rule.hf)
        for name, want in zip(rule.hf, wants):
            real = name if rule.ours in ("head.weight", "head.bias") else _resolve(files, family, name)
            if real is None:
                raise ConfigError(f"{folder}: tensor {family.prefix + name!r} is missing from the weight files")
            if here and files.shape(real) != tuple(want):
                hint = ("; this architecture needs a head of that shape: start a new one with "
                        "pretrained_checkpoint.load_rm_head_weights=false" if rule.ours == "head.weight" and not load_head else "")
                raise ConfigError(f"{files.file_of(real)}: tensor {real!r} has shape {list(files.shape(real))}, "
                                  f"expected {list(want)} from {CONFIG}{hint}")
            names.append(real)
            used.add(real)
        if here:
            resolved.append((rule, names))
    extra = sorted(n for n in files.names() - used - skipped if not any(n.endswith(i) for i in family.ignored))
    if extra:
        raise ConfigError(f"{files.file_of(extra[0])}: tensor {extra[0]!r} is not used by the {family.name} conversion "
                          f"({len(extra)} such); the folder has an option this converter does not support")

    from ..progress import progress_bar as _progress

    bar = _progress(len(resolved), "import", enabled=progress)
    with torch.no_grad():
        for rule, names in resolved:
            param = params[rule.ours]
            if rule.kind == "embedding":  # vocabulary-parallel rows, read in blocks
                start = rank * param.shape[0]
                n = max(0, min(param.shape[0], shapes.vocab - start))
                files.copy_rows(names[0], param.data[:n], start)
                param.data[n:].zero_()
            else:
                full = to_ours(rule, [files.get(n) for n in names], shapes)
                param.data.copy_(tp_slice(rule, full, param, rank, tp))
                del full
            bar.update(1)
        bar.close()
        if score is None and head is not None:  # the head lives on the last pipeline stage
            _init_head(model, cfg, rank, tp)
        elif "head.bias" in params and not any(r.ours == "head.bias" for r in rules):
            params["head.bias"].data.zero_()
    return score is not None


_LAYER = re.compile(r"^(.*\.decoder\.layers\.)(\d+)(\..*)$")


def stage_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """``model.named_parameters()`` with transformer layers named by their global number: under
    pipeline parallelism a stage's layers are numbered from 0 locally, the conversion tables number
    the whole model's. Without pipeline parallelism, the names as they are."""
    config = getattr(model, "config", None)
    offset = 0
    if config is not None and getattr(config, "pipeline_model_parallel_size", 1) > 1:
        from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

        offset = get_transformer_layer_offset(config)
    out = {}
    for name, param in model.named_parameters():
        match = _LAYER.match(name) if offset else None
        out[f"{match[1]}{int(match[2]) + offset}{match[3]}" if match else name] = param
    return out


def _init_head(model: torch.nn.Module, cfg: DictConfig, rank: int, tp: int) -> None:
    """A new head, ``N(0, init_method_std)`` drawn in full from a seeded generator and sliced along H
    (identical under every tensor-parallel layout)."""
    weight = model.get_parameter("head.weight")
    k, h = _full_shape(weight, tp)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    full = torch.randn(k, h, generator=gen) * float(cfg.model.init_method_std)
    weight.data.copy_(torch.chunk(full, tp, dim=1)[rank] if tp > 1 and getattr(weight, "tensor_model_parallel", False)
                      else full)
    bias = dict(model.named_parameters()).get("head.bias")
    if bias is not None:
        bias.data.zero_()


