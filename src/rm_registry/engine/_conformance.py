"""Behavioural conformance checks, run by :func:`rm_registry.testing.check_plugin`.

Each check builds what a real run builds (a tiny megatron-core model, the plugin's datasets from
its sample data) and fails with an ``AssertionError`` that names the plugin and what went wrong.
Nothing assumes pairs: batches of 1, 2, 3 and 4 samples (whatever number of sequences each
makes), the empty batch, and the empty evaluation set are all exercised, through the same
engine functions that train, evaluate and score (:mod:`._contract`).
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from .._errors import ConfigError
from . import _contract

if TYPE_CHECKING:  # pragma: no cover
    from omegaconf import DictConfig

    from .._protocol import RewardModelPlugin

#: Relative and absolute tolerance when the same samples are evaluated in different batchings.
_EVAL_TOL = 1e-4

__all__ = ["TINY_OVERRIDES", "check_behaviour"]

#: The tiny model every check uses (2 layers, hidden 32): seconds on one CPU core.
TINY_OVERRIDES = (
    "model.num_layers=2",
    "model.hidden_size=32",
    "model.num_attention_heads=4",
    "model.micro_batch_size=4",
    "model.global_batch_size=4",
    "model.tensor_model_parallel_size=1",
    "model.optim.lr=3e-3",
    "model.optim.sched.warmup_steps=0",
    "model.optim.sched.name=constant",
)


def _fail(plugin: RewardModelPlugin, message: str) -> AssertionError:
    return AssertionError(f"plugin {plugin.name!r}: {message}")


def check_behaviour(plugin: RewardModelPlugin, *, checkpoint: bool = True, export: bool = True) -> dict[str, Any]:
    """Build, forward, loss, backward, learning, evaluation, scoring and a checkpoint round trip,
    on batches of 1 to 4 samples and on the empty batch; determinism; the optional members the
    plugin defines; the Hugging Face export round trip (export, import, same rewards).

    Needs the plugin's :meth:`sample_data` (a ``train`` file with at least 4 usable samples).

    Returns:
        ``{"checks": [names of the checks that ran], "skipped": {name: why}}``.

    Raises:
        AssertionError: naming the plugin and the failed property.
    """
    from . import parallel
    from .config import build_config
    from .tokenizer import load_tokenizer

    report: dict[str, Any] = {"checks": [], "skipped": {}}
    done = report["checks"].append
    cfg = build_config(plugin, overrides=TINY_OVERRIDES)
    sample = dict(plugin.sample_data())
    if "train" not in sample:
        raise _fail(plugin, "sample_data() has no 'train' file; the behavioural checks need one")
    tokenizer = load_tokenizer(cfg)
    datasets = plugin.build_datasets({"train": sample["train"]}, tokenizer, cfg)
    train = datasets.get("train")
    if train is None or len(train) < 4:
        raise _fail(plugin, f"build_datasets() gave {0 if train is None else len(train)} training samples from "
                            f"{sample['train']}; need at least 4")
    _check_stats(plugin, train)
    done("datasets")
    for name, check in (("config_types", _check_config_types), ("resolve_config", _check_resolve_config)):
        if hasattr(plugin, name):
            check(plugin)
            done(name)
    if hasattr(plugin, "text_samples") or hasattr(plugin, "sample_from_tokens"):
        _check_token_samples(plugin, cfg, tokenizer, str(sample["train"]), train)
        done("text_samples / sample_from_tokens (the token cache gives build_datasets' batches)")

    info = parallel.initialize(tensor_model_parallel_size=1, seed=int(cfg.seed))
    parallel.manual_seed(int(cfg.seed))
    model = plugin.model_class.from_config(cfg, vocab_size=tokenizer.vocab_size)
    if not isinstance(model, torch.nn.Module):
        raise _fail(plugin, f"model_class.from_config() returned {type(model).__name__}, not a torch.nn.Module")
    samples = [train[i] for i in range(4)]
    batch = plugin.collate(samples, tokenizer.pad_id)
    tokens, lengths = _check_batch(plugin, batch, "collate() of 4 samples")

    model.train()
    rewards = _forward(model, batch)
    rows = _expected_rows(batch)
    if rewards.ndim != 2 or rewards.shape[0] != rows:
        raise _fail(plugin, f"forward gave rewards {tuple(rewards.shape)}, expected [{rows}, K]")
    loss, metrics = _checked_loss(plugin, rewards, batch, cfg, "a batch of 4 samples")
    loss.backward()
    # "Reaches" means connected to the loss: a pairwise loss depends only on r_chosen - r_rejected,
    # so the head's bias (and the final layernorm's bias) get an exactly-zero gradient, legitimately.
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise _fail(plugin, f"no gradient reaches {len(missing)} trainable parameters, e.g. {missing[:3]}")
    if not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters()):
        raise _fail(plugin, "the loss gradient is zero for every parameter: nothing would be learned")
    done("forward, loss and gradients")

    _check_batch_sizes(plugin, model, train, cfg, tokenizer.pad_id, set(metrics))
    done("batches of 1, 2 and 3 samples (same metric names)")
    _check_empty_batch(plugin, model, batch, cfg, tokenizer.pad_id, set(metrics))
    done("empty batch (finite loss, connected, same metric names)")

    # Learns: a few AdamW steps on one batch lower the loss.
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(cfg.model.optim.lr))
    first = float(loss.detach())
    for _ in range(15):
        optimizer.zero_grad()
        loss, _ = plugin.loss(_forward(model, batch), batch, cfg)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        last = float(plugin.loss(_forward(model, batch), batch, cfg)[0])
    if not last < first:
        raise _fail(plugin, f"the loss did not decrease when fitting one batch ({first:.4f} -> {last:.4f})")
    done("learning")

    model.eval()
    with torch.no_grad():
        rewards = _forward(model, batch)
    _check_evaluation(plugin, model, samples, cfg, tokenizer.pad_id, rewards, batch)
    done("evaluation (empty set, batching does not change the metrics)")
    _check_scoring(plugin, rewards, cfg)
    if _contract.REWARD_POSITIONS in batch:
        _check_score_sequences(plugin, model, cfg, tokenizer, sample["train"])
        done("score_sequences (records scored at the plugin's positions)")
    done("scoring (score_outputs, score_records, scalar_rewards)")
    _check_determinism(plugin, cfg, tokenizer, samples, rewards)
    done("determinism")

    if checkpoint:
        _check_checkpoint(plugin, model, cfg, tokenizer, batch, rewards)
        done("checkpoint round trip")
    if export:
        _check_export(plugin, cfg, tokenizer, model, info, batch, rewards)
        done("Hugging Face export round trip")
    else:
        report["skipped"]["Hugging Face export round trip"] = "export=False"
    return report


def _forward(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """The model on one batch as training runs it (at the batch's ``reward_positions`` when it has them)."""
    return _contract.batch_rewards(model, batch, None)


def _expected_rows(batch: Mapping[str, Any]) -> int:
    """Rows of the rewards of ``batch``: N sequences, or M ``reward_positions``."""
    positions = batch.get(_contract.REWARD_POSITIONS)
    return int(batch["tokens"].shape[0]) if positions is None else int(positions.shape[0])


def _check_score_sequences(plugin: RewardModelPlugin, model: torch.nn.Module, cfg: DictConfig, tokenizer: Any,
                           path: Any) -> None:
    """A token-level plugin (batches with ``reward_positions``) scores records through
    ``score_sequences``: every line of its sample file gives sequences with positions inside them,
    and ``score_records`` makes one JSON object of each record's rows."""
    from .data import read_jsonl

    if not _contract.is_token_level(plugin):
        raise _fail(plugin, f"collate() gives {_contract.REWARD_POSITIONS!r} but the plugin has no score_sequences(): "
                            "score and serve could not tell where to read its rewards")
    groups = []
    for line, record in itertools.islice(read_jsonl(path), 4):
        try:
            groups.append(_contract.score_sequences(plugin, record, tokenizer, cfg, path=path, line=line))
        except Exception as exc:
            raise _fail(plugin, f"score_sequences() on {path} line {line} failed: {type(exc).__name__}: {exc}") from None
    ids = [seq for group in groups for seq, _ in group]
    from .data import pad_batch

    tokens, lengths = pad_batch(ids, tokenizer.pad_id)
    points = torch.tensor([(row, p) for row, (_, pos) in enumerate(s for g in groups for s in g) for p in pos])
    with torch.no_grad():
        rows = model(tokens, lengths, positions=points)
    sizes = [sum(len(pos) for _, pos in group) for group in groups]
    records = _contract.score_records(plugin, rows, sizes, cfg)
    try:
        json.dumps(records, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail(plugin, f"score_records() of score_sequences() rows is not JSON without NaN: {exc}") from None


def _check_stats(plugin: RewardModelPlugin, dataset: Any) -> None:
    stats = getattr(dataset, "stats", None)
    if stats is None:
        raise _fail(plugin, "the dataset returned by build_datasets() has no 'stats' (read/kept/truncated/dropped)")
    counts = stats.as_dict() if hasattr(stats, "as_dict") else stats
    if not isinstance(counts, Mapping) or not {"read", "kept", "truncated", "dropped"} <= set(counts):
        raise _fail(plugin, f"dataset.stats must be a DatasetStats or a dict with read, kept, truncated and dropped; "
                            f"got {stats!r}")


def _check_batch(plugin: RewardModelPlugin, batch: Mapping[str, Any], what: str) -> tuple[torch.Tensor, torch.Tensor]:
    for key in ("tokens", "lengths"):
        if key not in batch:
            raise _fail(plugin, f"{what} returned no {key!r} (keys: {sorted(batch)})")
    tokens, lengths = batch["tokens"], batch["lengths"]
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
        raise _fail(plugin, f"{what}: tokens {tuple(tokens.shape)} and lengths {tuple(lengths.shape)} "
                            "must be [N, S] and [N]")
    positions = batch.get(_contract.REWARD_POSITIONS)
    if positions is not None:
        from .model import check_positions

        try:
            check_positions(positions, lengths)
        except ValueError as exc:
            raise _fail(plugin, f"{what}: {_contract.REWARD_POSITIONS} {exc}") from None
    if tokens.shape[0] and int(lengths.max()) != tokens.shape[1]:
        raise _fail(plugin, f"{what} pads to {tokens.shape[1]} but the longest sequence has {int(lengths.max())} "
                            "tokens: pad to the longest sequence of the batch")
    return tokens, lengths


def _checked_loss(plugin: RewardModelPlugin, rewards: torch.Tensor, batch: Mapping[str, Any], cfg: DictConfig,
                  what: str) -> tuple[torch.Tensor, dict[str, float]]:
    loss, metrics = plugin.loss(rewards, batch, cfg)
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0 or not torch.isfinite(loss):
        raise _fail(plugin, f"loss() on {what} must return a finite 0-dim tensor, got {loss!r}")
    if not loss.requires_grad or loss.grad_fn is None:
        raise _fail(plugin, f"loss() on {what} is not connected to the model's outputs (no grad_fn)")
    if not all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()):
        raise _fail(plugin, f"loss() metrics on {what} must be finite floats, got {metrics}")
    weight = _contract.metric_weight(plugin, batch, cfg)
    if not math.isfinite(weight):
        raise _fail(plugin, f"metric_weight() on {what} is {weight}")
    return loss, metrics


def _same_names(plugin: RewardModelPlugin, names: set[str], expected: set[str], what: str) -> None:
    if names != expected:
        extra, lacking = sorted(names - expected), sorted(expected - names)
        raise _fail(plugin, f"loss() metric names differ on {what}: {sorted(names)} vs {sorted(expected)} "
                            f"(extra: {extra or 'none'}, missing: {lacking or 'none'}); the engine averages metrics "
                            "by name over batches and ranks, so every batch must return the same names")


def _check_batch_sizes(plugin: RewardModelPlugin, model: torch.nn.Module, train: Sequence[Any], cfg: DictConfig,
                       pad_id: int, names: set[str]) -> None:
    """Batches of 1, 2 and 3 samples taken at different places (so their group sizes vary)."""
    n = len(train)
    for size in (1, 2, 3):
        picked = [train[(size * 7 + j * (n // 3 + 1)) % n] for j in range(size)]
        batch = plugin.collate(picked, pad_id)
        tokens, lengths = _check_batch(plugin, batch, f"collate() of {size} sample(s)")
        rewards = _forward(model, batch)
        loss, metrics = _checked_loss(plugin, rewards, batch, cfg, f"a batch of {size} sample(s)")
        _same_names(plugin, set(metrics), names, f"a batch of {size} sample(s)")
        loss.backward()


def _check_empty_batch(plugin: RewardModelPlugin, model: torch.nn.Module, full: Mapping[str, Any], cfg: DictConfig,
                       pad_id: int, names: set[str]) -> None:
    """``collate([])`` and a loss on zero rows of real outputs: finite, connected, same names."""
    try:
        empty = plugin.collate([], pad_id)
    except Exception as exc:
        raise _fail(plugin, f"collate([]) raised {type(exc).__name__}: {exc}; an empty batch must give tokens [0, 0] "
                            "and lengths [0] (and loss() a finite 0 on it)") from None
    tokens, _ = _check_batch(plugin, empty, "collate([])")
    if tokens.shape[0] != 0:
        raise _fail(plugin, f"collate([]) gave {tokens.shape[0]} sequences; expected none")
    rewards = _forward(model, full)[:0]  # [0, K], connected to the parameters
    loss, metrics = _checked_loss(plugin, rewards, empty, cfg, "the empty batch")
    _same_names(plugin, set(metrics), names, "the empty batch")
    if hasattr(plugin, "metric_weight") and _contract.metric_weight(plugin, empty, cfg) != 0:
        raise _fail(plugin, "metric_weight() of the empty batch must be 0, so that it counts in no mean")
    loss.backward()


def _numbers(value: Any, prefix: str = "") -> dict[str, float | None]:
    """Every number of a nested metrics dict, by dotted name (``None`` kept as such)."""
    if isinstance(value, Mapping):
        out: dict[str, float | None] = {}
        for k, v in value.items():
            out.update(_numbers(v, f"{prefix}{k}."))
        return out
    if isinstance(value, (list, tuple)):
        return {f"{prefix}{i}": x for i, x in enumerate(value) if isinstance(x, (int, float)) or x is None}
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return {prefix.rstrip("."): None if value is None else float(value)}
    return {}


def _json_metrics(plugin: RewardModelPlugin, metrics: Any, what: str) -> None:
    if not isinstance(metrics, Mapping) or "loss" not in metrics:
        raise _fail(plugin, f"evaluation_metrics() over {what} must be a dict with 'loss' "
                            f"(keys: {sorted(metrics) if isinstance(metrics, Mapping) else metrics!r})")
    try:
        json.dumps(metrics, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail(plugin, f"evaluation_metrics() over {what} is not JSON-serialisable without NaN: {exc}") from None


def _check_evaluation(plugin: RewardModelPlugin, model: torch.nn.Module, samples: list[Any], cfg: DictConfig,
                      pad_id: int, rewards: torch.Tensor, batch: Mapping[str, Any]) -> None:
    """Metrics over the empty set; over 4 samples in one batch and in batches of 1 and 3 (equal)."""
    try:
        empty = plugin.evaluation_metrics([], cfg)
    except Exception as exc:
        raise _fail(plugin, f"evaluation_metrics([]) (an empty set) raised {type(exc).__name__}: {exc}") from None
    _json_metrics(plugin, empty, "the empty set")
    whole = plugin.evaluation_metrics([(rewards.float(), _contract.evaluation_batch(plugin, batch))], cfg)
    _json_metrics(plugin, whole, "one batch")
    parts = []
    with torch.no_grad():
        for chunk in (samples[:1], samples[1:]):
            b = plugin.collate(chunk, pad_id)
            parts.append((_forward(model, b).float(), _contract.evaluation_batch(plugin, b)))
    split = plugin.evaluation_metrics(parts, cfg)
    a, b = _numbers(whole), _numbers(split)
    if set(a) != set(b):
        raise _fail(plugin, f"evaluation_metrics() gives different keys for the same samples in 1 and in 2 batches: "
                            f"{sorted(set(a) ^ set(b))}")
    for key in a:
        x, y = a[key], b[key]
        if (x is None) != (y is None) or (x is not None and y is not None and not math.isclose(
                x, y, rel_tol=_EVAL_TOL, abs_tol=_EVAL_TOL)):
            raise _fail(plugin, f"evaluation_metrics()[{key!r}] is {x} for 4 samples in one batch but {y} for the "
                                "same samples in batches of 1 and 3: weight every sample, not every batch, equally")


def _check_scoring(plugin: RewardModelPlugin, rewards: torch.Tensor, cfg: DictConfig) -> None:
    scored = plugin.score_outputs(rewards, cfg)
    if len(scored) != rewards.shape[0] or not all(isinstance(s.get("reward"), float) for s in scored):
        raise _fail(plugin, "score_outputs() must give one dict per row with a float 'reward'")
    json.dumps(scored, allow_nan=False)
    if rewards.dim() == 2:  # what benchmarks compare (evaluate --benchmark); checked by scalar_rewards itself
        _contract.scalar_rewards(plugin, rewards, cfg)
    n = rewards.shape[0]
    for sizes in ([1] * n, [n], [1, n - 1]):
        try:
            records = _contract.score_records(plugin, rewards, sizes, cfg)
            json.dumps(records, allow_nan=False)
        except Exception as exc:
            raise _fail(plugin, f"scoring records of {sizes} texts failed: {type(exc).__name__}: {exc}") from None
        if len(records) != len(sizes) or not all(isinstance(r, dict) for r in records):
            raise _fail(plugin, f"score_records() must give one dict per record ({len(sizes)}), got {records!r}")


def _check_determinism(plugin: RewardModelPlugin, cfg: DictConfig, tokenizer: Any, samples: list[Any],
                       rewards: torch.Tensor) -> None:
    """The same seed and samples give the same batch, weights, rewards and loss."""
    from . import parallel

    first, second = plugin.collate(samples, tokenizer.pad_id), plugin.collate(samples, tokenizer.pad_id)
    for key in first:
        a, b = first[key], second.get(key)
        same = torch.equal(a, b) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) else a == b
        if not same:
            raise _fail(plugin, f"collate() of the same samples differs between two calls in {key!r}")
    outputs = []
    for _ in range(2):
        parallel.manual_seed(int(cfg.seed))
        model = plugin.model_class.from_config(cfg, vocab_size=tokenizer.vocab_size).eval()
        with torch.no_grad():
            r = _forward(model, first)
            outputs.append((r, float(plugin.loss(r, first, cfg)[0])))
    if not torch.equal(outputs[0][0], outputs[1][0]) or outputs[0][1] != outputs[1][1]:
        raise _fail(plugin, "two models built with the same seed give different rewards or losses on the same batch")


_WRONG_VALUES: tuple[Any, ...] = ("not-a-value", 12345, [1, 2], {"a": 1}, True)


def _check_token_samples(plugin: RewardModelPlugin, cfg: DictConfig, tokenizer: Any, path: str,
                         train: Sequence[Any]) -> None:
    """Both members or neither; the dataset the token cache makes (written, then mapped back) collates
    to the very batches of ``build_datasets``' samples, one row per text of each sample."""
    import tempfile

    from omegaconf import OmegaConf

    from .data._cache import split_dataset
    from .data._tokens import describes_samples

    if not describes_samples(plugin):
        have = "text_samples" if hasattr(plugin, "text_samples") else "sample_from_tokens"
        raise _fail(plugin, f"defines {have} but not its partner; text_samples and sample_from_tokens go together")
    with tempfile.TemporaryDirectory(prefix="rm-conformance-cache-") as tmp:
        local = OmegaConf.merge(cfg, {"model": {"data": {"cache": True, "cache_dir": tmp}}})
        for attempt in ("written", "mapped"):
            cached = split_dataset(plugin, path, tokenizer, local)
            if len(cached) != len(train):
                raise _fail(plugin, f"the token cache ({attempt}) holds {len(cached)} samples of {path}, "
                                    f"build_datasets() {len(train)}")
            rows, longest = cached.sequence_counts()
            for i in range(len(train)):
                ours, theirs = plugin.collate([cached[i]], tokenizer.pad_id), plugin.collate([train[i]], tokenizer.pad_id)
                if int(ours["lengths"].numel()) != rows[i]:
                    raise _fail(plugin, f"sample {i}: collate() gives {int(ours['lengths'].numel())} rows but "
                                        f"text_samples() gave {rows[i]} texts; the rows must be the texts")
                if rows[i] and int(ours["lengths"].max()) != longest[i]:
                    raise _fail(plugin, f"sample {i}: collate()'s longest row has {int(ours['lengths'].max())} tokens, "
                                        f"the stored texts {longest[i]}; the rows must be the texts' token ids")
                for key in set(ours) | set(theirs):
                    a, b = ours.get(key), theirs.get(key)
                    same = (torch.equal(a, b) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                            else a == b)
                    if not same:
                        raise _fail(plugin, f"sample {i} of {path}: collate()[{key!r}] of the token cache's sample "
                                            f"({attempt}) differs from build_datasets()'s")


def _check_config_types(plugin: RewardModelPlugin) -> None:
    """Every declared key exists; a value of another type is refused naming the key."""
    from .config import build_config
    from .config._checks import flatten, type_ok
    from omegaconf import OmegaConf

    types = _contract.config_types(plugin)
    known = flatten(OmegaConf.to_container(build_config(plugin, overrides=TINY_OVERRIDES), resolve=True))
    for key, spec in types.items():
        if key not in known:
            raise _fail(plugin, f"config_types() declares {key!r}, which is not a config key")
        wrong = next((v for v in _WRONG_VALUES if not type_ok(v, spec)), None)
        if wrong is None:
            continue
        override = f"{key}={json.dumps(wrong).replace(' ', '')}"
        try:
            build_config(plugin, overrides=[*TINY_OVERRIDES, override])
        except ConfigError as exc:
            if key not in str(exc):
                raise _fail(plugin, f"{override} was refused, but the message does not name {key}: {exc}") from None
            continue
        raise _fail(plugin, f"config_types() declares {key!r} as {spec}, yet {override} was accepted")


def _check_resolve_config(plugin: RewardModelPlugin) -> None:
    """The resolved config, saved and read back as a checkpoint stores it, validates and resolves to itself."""
    from .config import build_config, load_saved_config, to_yaml

    cfg = build_config(plugin, overrides=TINY_OVERRIDES)
    saved = load_saved_config(to_yaml(cfg), "resolved config")
    plugin.validate_config(saved)
    _contract.resolve_config(plugin, saved)
    if to_yaml(saved) != to_yaml(cfg):
        raise _fail(plugin, "resolve_config() is not stable: resolving the saved, resolved config changes it")


def _same_rewards(plugin: RewardModelPlugin, rewards: torch.Tensor, model: torch.nn.Module, batch: Mapping[str, Any],
                  what: str) -> None:
    model.eval()
    with torch.no_grad():
        again = _forward(model, batch)
    if not torch.equal(rewards, again):
        diff = float((rewards - again).abs().max()) if rewards.shape == again.shape else float("nan")
        raise _fail(plugin, f"{what} changed the rewards (max difference {diff:g})")


def _check_checkpoint(plugin: RewardModelPlugin, model: torch.nn.Module, cfg: DictConfig, tokenizer: Any,
                      batch: Mapping[str, Any], rewards: torch.Tensor) -> None:
    from . import checkpoint as ckpt

    with tempfile.TemporaryDirectory() as tmp:
        path = ckpt.save_checkpoint(Path(tmp) / "step_0000001", model, state={"step": 1})
        reloaded = plugin.model_class.from_config(cfg, vocab_size=tokenizer.vocab_size)
        ckpt.load_checkpoint(path, reloaded)
        _same_rewards(plugin, rewards, reloaded, batch, "checkpoint round trip")


def _check_export(plugin: RewardModelPlugin, cfg: Any, tokenizer: Any, model: torch.nn.Module, info: Any,
                  batch: Mapping[str, Any], rewards: torch.Tensor) -> None:
    """Export to a Hugging Face folder, import it back the way ``--checkpoint <folder>`` does, and
    compare the rewards (1e-5: the head's bias is folded into the final norm on export)."""
    from omegaconf import OmegaConf

    from .._errors import ConfigError
    from .api import LoadedRewardModel
    from .hf import apply_pretrained, export_model, load_hf_weights

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hf"
        loaded = LoadedRewardModel(plugin=plugin, cfg=cfg, tokenizer=tokenizer, model=model, checkpoint=folder, info=info)
        try:
            export_model(loaded, folder)
            again_cfg = OmegaConf.merge(cfg, {"pretrained_checkpoint": {"restore_from_path": str(folder)}})
            apply_pretrained(again_cfg, {})
            again = plugin.model_class.from_config(again_cfg, vocab_size=tokenizer.vocab_size)
            load_hf_weights(again, folder, again_cfg, load_head=True)
        except ConfigError as exc:
            raise _fail(plugin, f"Hugging Face export round trip failed: {exc}") from None
        again.eval()
        with torch.no_grad():
            imported = _forward(again, batch)
        if imported.shape != rewards.shape or not torch.allclose(imported, rewards, atol=1e-5, rtol=0):
            diff = float((imported - rewards).abs().max()) if imported.shape == rewards.shape else float("nan")
            raise _fail(plugin, f"Hugging Face export round trip changed the rewards (max difference {diff:g}; "
                                f"shapes {tuple(rewards.shape)} -> {tuple(imported.shape)})")
