"""The engine's side of the optional plugin members: one place that applies each member or its
default (:class:`rm_registry.OptionalMembers` documents them), and the one rule for where batch
tensors live.

Train, evaluate and score all go through these functions, so that a plugin sees the same thing
wherever it is called from. Only the functions that handle tensors import torch (inside them).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from .._errors import DataError, PluginValidationError
from .._registry import IN_PROCESS, plugin_distribution

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from omegaconf import DictConfig

    from .._protocol import RewardModelPlugin

__all__ = [
    "REWARD_POSITIONS",
    "batch_rewards",
    "batch_to",
    "batches_rewards",
    "config_for_output_names",
    "config_types",
    "evaluation_batch",
    "is_token_level",
    "metric_weight",
    "output_names",
    "plugin_record",
    "resolve_config",
    "scalar_rewards",
    "score_records",
    "score_sequences",
    "score_texts",
]

#: The batch key of a token-level architecture: ``[M, 2]`` int64 ``(row, token index)`` points at
#: which the model's head is read. With it, ``loss`` and ``evaluation_metrics`` get rewards ``[M, K]``.
REWARD_POSITIONS = "reward_positions"


def batch_to(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The batch with **every** tensor on ``device`` (any first dimension); other values as they are.

    The one rule: the model and :meth:`~rm_registry.RewardModelPlugin.loss` get the batch on the
    model's device (training and evaluation), :meth:`~rm_registry.RewardModelPlugin.evaluation_metrics`
    and the scoring outputs get CPU tensors.
    """
    import torch

    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def batch_rewards(model: Any, batch: Mapping[str, Any], max_tokens: int | None) -> torch.Tensor:
    """The model's rewards for one collated batch (on the model's device): ``[N, K]`` (``[N, S, K]``
    per token), or ``[M, K]`` at the batch's :data:`REWARD_POSITIONS` when it has them. Training and
    evaluation both call this, so a plugin sees the same rewards in ``loss`` and ``evaluation_metrics``.

    Under pipeline parallelism the batch goes through every stage (megatron's schedule, forward
    only, one micro-batch) and every stage gets the last stage's rewards."""
    from .data._batching import forward_in_chunks

    if getattr(model, "pipelined", False):  # a RewardModel stage (parallel._pipeline runs the schedule)
        return model.pipeline_rewards([batch])[0]

    return forward_in_chunks(model, batch["tokens"], batch["lengths"], max_tokens,
                             positions=batch.get(REWARD_POSITIONS))


#: Batches that one forward-only pass of the pipeline schedule takes at a time, per stage: enough
#: for the stages to work at once (a pipeline of PP stages needs at least PP), few enough to bound
#: what is held.
PIPELINE_GROUP = 4


def batches_rewards(model: Any, batches: Iterable[dict[str, Any]],
                    max_tokens: int | None) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """``(batch, rewards)`` for each batch, lazily: :func:`batch_rewards` one batch at a time
    (evaluation and scoring, no gradients). Under pipeline parallelism :data:`PIPELINE_GROUP` x PP
    batches are taken at a time and go through the stages together (megatron's schedule, forward
    only), so that the stages work at once instead of in turn."""
    import itertools

    if not getattr(model, "pipelined", False):
        for batch in batches:
            yield batch, batch_rewards(model, batch, max_tokens)
        return
    it = iter(batches)
    size = PIPELINE_GROUP * int(model.config.pipeline_model_parallel_size)
    while group := list(itertools.islice(it, size)):
        yield from zip(group, model.pipeline_rewards(group))


def evaluation_batch(plugin: RewardModelPlugin, batch: Mapping[str, Any]) -> dict[str, Any]:
    """What :meth:`evaluation_metrics` gets of one batch: the declared keys, tensors on the CPU.

    ``plugin.evaluation_batch_keys`` when defined, else every key but ``tokens`` (``[N, S]``, by
    far the largest tensor and not needed by metrics). This is also all that is gathered across
    data-parallel ranks.
    """
    keys = getattr(plugin, "evaluation_batch_keys", None)
    if keys is None:
        chosen = {k: v for k, v in batch.items() if k != "tokens"}
    else:
        missing = [k for k in keys if k not in batch]
        if missing:
            raise PluginValidationError(
                f"plugin {plugin.name!r}: evaluation_batch_keys lists {', '.join(map(repr, missing))}, which "
                f"collate() did not return (batch keys: {', '.join(sorted(batch))})"
            )
        chosen = {k: batch[k] for k in keys}
    return batch_to(chosen, "cpu")


def metric_weight(plugin: RewardModelPlugin, batch: Mapping[str, Any], cfg: DictConfig, *,
                  default: float = 1.0) -> float:
    """The weight of one batch's training metrics: ``plugin.metric_weight(batch, cfg)``, else ``default``.

    The trainer passes the micro-batch's number of samples as ``default``: micro-batches cut by
    ``model.max_tokens_per_micro_batch`` differ in size, and a plugin without ``metric_weight``
    gets metrics averaged over samples, as its loss is.
    """
    method = getattr(plugin, "metric_weight", None)
    if method is None:
        return float(default)
    weight = float(method(batch, cfg))
    if not weight >= 0:  # also refuses NaN
        raise PluginValidationError(f"plugin {plugin.name!r}: metric_weight() returned {weight}; expected a number >= 0")
    return weight


def score_texts(plugin: RewardModelPlugin, record: Mapping[str, Any], *, path: str | Path, line: int) -> list[str]:
    """The texts of one ``score`` input line: the plugin's :meth:`score_texts`, or today's rule.

    Default: ``{"text": ...}``, or ``{"prompt": ..., "response": ...}`` joined as in training.

    Raises:
        DataError: naming the file, the line and the problem.
    """
    method = getattr(plugin, "score_texts", None) if plugin is not None else None
    if method is not None:
        texts = method(record, path=str(path), line=line)
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise DataError(path, line, f"plugin {plugin.name!r}: score_texts() must give a non-empty list of "
                                        f"strings, got {texts!r}")
        return list(texts)
    from .data import join_prompt_response, render_text

    if "text" in record:
        return [render_text(record["text"], path=path, line=line, key="text")]
    if "prompt" in record and "response" in record:
        return [join_prompt_response(record["prompt"], record["response"], path=path, line=line)]
    raise DataError(path, line, f"expected a 'text' key, or 'prompt' and 'response'; found {sorted(record)}")


def is_token_level(plugin: Any) -> bool:
    """Whether ``plugin`` is a token-level architecture: it defines :meth:`score_sequences` (and its
    batches carry :data:`REWARD_POSITIONS`). Score, serve, benchmarks and export ask this one question."""
    return getattr(plugin, "score_sequences", None) is not None


def score_sequences(plugin: RewardModelPlugin, record: Mapping[str, Any], tokenizer: Any, cfg: DictConfig, *,
                    path: str | Path, line: int) -> list[tuple[list[int], list[int]]] | None:
    """A token-level plugin's sequences for one ``score`` record: ``[(token ids, read positions), ...]``
    from its :meth:`score_sequences`, checked; ``None`` for a plugin without it (texts are scored).

    Raises:
        PluginValidationError: the hook gave something else than non-empty id lists with positions
            inside them.
    """
    method = getattr(plugin, "score_sequences", None)
    if method is None:
        return None
    out = method(record, tokenizer, cfg, path=str(path), line=line)
    if not isinstance(out, (list, tuple)) or not out:
        raise PluginValidationError(f"plugin {plugin.name!r}: score_sequences() must give a non-empty list of "
                                    f"(token ids, positions), got {out!r}")
    checked = []
    for ids, positions in out:
        ids, positions = [int(i) for i in ids], [int(p) for p in positions]
        if not ids or not positions or not all(0 <= p < len(ids) for p in positions):
            raise PluginValidationError(
                f"plugin {plugin.name!r}: score_sequences() gave positions {positions} for {len(ids)} token ids; "
                "each sequence needs ids and at least one position inside them")
        checked.append((ids, positions))
    return checked


def score_records(
    plugin: RewardModelPlugin, rewards: torch.Tensor, group_sizes: Sequence[int], cfg: DictConfig
) -> list[dict[str, Any]]:
    """One JSON object per scored record from rewards ``[N, K]`` (CPU) of all their texts.

    The plugin's :meth:`score_records` when defined; otherwise :meth:`score_outputs` per text,
    one object for a record of one text (today's output) and ``{"responses": [...]}`` for more.
    """
    if sum(group_sizes) != rewards.shape[0]:
        raise ValueError(f"group sizes {list(group_sizes)} do not add up to the {rewards.shape[0]} reward rows")
    method = getattr(plugin, "score_records", None)
    if method is not None:
        records = method(rewards, list(group_sizes), cfg)
        if not isinstance(records, list) or len(records) != len(group_sizes):
            raise PluginValidationError(
                f"plugin {plugin.name!r}: score_records() returned {len(records) if isinstance(records, list) else records!r} "
                f"objects for {len(group_sizes)} records; it must return one dict per record"
            )
        return records
    rows = plugin.score_outputs(rewards, cfg) if rewards.shape[0] else []
    out, start = [], 0
    for size in group_sizes:
        group = rows[start : start + size]
        out.append(group[0] if size == 1 else {"responses": group})
        start += size
    return out


def scalar_rewards(plugin: RewardModelPlugin, rewards: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    """One float per text ``[N]`` from head outputs ``rewards [N, K]`` (CPU): the plugin's
    :meth:`scalar_rewards`, else the ``reward`` of :meth:`score_outputs` (what ``score`` writes).

    Raises:
        PluginValidationError: the plugin's hook gave something else than N finite numbers.
    """
    import torch

    method = getattr(plugin, "scalar_rewards", None)
    if method is None:
        rows = plugin.score_outputs(rewards, cfg) if rewards.shape[0] else []
        return torch.tensor([float(r["reward"]) for r in rows], dtype=torch.float64)
    out = method(rewards, cfg)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (rewards.shape[0],):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PluginValidationError(f"plugin {plugin.name!r}: scalar_rewards() must return a tensor [N] for rewards "
                                    f"{tuple(rewards.shape)}, got {shape}")
    out = out.detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(out).all()):
        raise PluginValidationError(f"plugin {plugin.name!r}: scalar_rewards() returned NaN or inf for finite rewards")
    return out


def config_types(plugin: RewardModelPlugin) -> dict[str, Any]:
    """The plugin's declared types of null-default keys (``{}`` when it declares none)."""
    method = getattr(plugin, "config_types", None)
    if method is None:
        return {}
    types = method()
    if not isinstance(types, Mapping):
        raise PluginValidationError(f"plugin {plugin.name!r}: config_types() must return a mapping of key to type, "
                                    f"got {type(types).__name__}")
    return dict(types)


def resolve_config(plugin: RewardModelPlugin, cfg: DictConfig) -> None:
    """Let the plugin fill in values its defaults leave open (no-op when it has no resolve_config)."""
    method = getattr(plugin, "resolve_config", None)
    if method is not None:
        method(cfg)


def output_names(plugin: RewardModelPlugin, cfg: DictConfig, k: int) -> list[str]:
    """Names of the K head outputs: the plugin's :meth:`output_names` when it gives K of them, else
    ``reward`` for K = 1 and ``LABEL_0`` ... for more. The ``id2label`` of a Hugging Face export and
    the labels ``serve`` answers with are both these."""
    method = getattr(plugin, "output_names", None)
    if method is not None:
        names = [str(n) for n in method(cfg)]
        if len(names) == k:
            return names
    return ["reward"] if k == 1 else [f"LABEL_{i}" for i in range(k)]


def config_for_output_names(plugin: RewardModelPlugin, names: Sequence[str]) -> Mapping[str, Any]:
    """The config layer for a foreign Hugging Face reward model whose K > 1 outputs carry these
    names (the plugin's :meth:`config_for_output_names`; ``{}`` when it has none)."""
    method = getattr(plugin, "config_for_output_names", None)
    if method is None or len(names) < 2:
        return {}
    layer = method(list(names))
    if not isinstance(layer, Mapping):
        raise PluginValidationError(f"plugin {plugin.name!r}: config_for_output_names() must return a mapping, "
                                    f"got {type(layer).__name__}")
    return layer


def _distribution_of_module(module: str) -> tuple[str, str] | None:
    """The installed distribution that provides the top-level package of ``module``, if any."""
    top = module.split(".")[0]
    for dist in metadata.packages_distributions().get(top, []):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def plugin_record(plugin: RewardModelPlugin) -> dict[str, Any]:
    """``{"name", "distribution", "version", "module"}`` of ``plugin`` (what ``plugin.json`` holds).

    The registry knows the distribution of plugins it handed out; for an object used directly
    the distribution of its module's top-level package is looked up. ``distribution`` is
    ``None`` when there is none (a script's own class).
    """
    module = type(plugin).__module__
    found = plugin_distribution(plugin)
    if found is None or (found[0] == IN_PROCESS and _distribution_of_module(module) is not None):
        found = _distribution_of_module(module) or (found or (None, None))
    distribution, version = found
    return {"name": plugin.name, "distribution": distribution, "version": version or None, "module": module}
