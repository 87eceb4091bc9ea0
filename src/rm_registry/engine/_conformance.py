"""Behavioural conformance checks, run by :func:`rm_registry.testing.check_plugin`.

Each check builds what a real run builds (a tiny megatron-core model, the plugin's datasets from
its sample data) and fails with an ``AssertionError`` that names the plugin and what went wrong.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .._protocol import RewardModelPlugin

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


def check_behaviour(plugin: RewardModelPlugin, *, checkpoint: bool = True, export: bool = True) -> None:
    """Build, forward, loss, backward, learning, evaluation, scoring, a checkpoint round trip and a
    Hugging Face export round trip (export, import, same rewards).

    Needs the plugin's :meth:`sample_data` (a ``train`` file at least).

    Raises:
        AssertionError: naming the plugin and the failed property.
    """
    from . import checkpoint as ckpt
    from . import parallel
    from .config import build_config
    from .tokenizer import load_tokenizer

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
    stats = getattr(train, "stats", None)
    if stats is None:
        raise _fail(plugin, "the dataset returned by build_datasets() has no 'stats' (read/kept/truncated/dropped)")

    info = parallel.initialize(tensor_model_parallel_size=1, seed=int(cfg.seed))
    model = plugin.model_class.from_config(cfg, vocab_size=tokenizer.vocab_size)
    if not isinstance(model, torch.nn.Module):
        raise _fail(plugin, f"model_class.from_config() returned {type(model).__name__}, not a torch.nn.Module")
    batch = plugin.collate([train[i] for i in range(4)], tokenizer.pad_id)
    for key in ("tokens", "lengths"):
        if key not in batch:
            raise _fail(plugin, f"collate() returned no {key!r} (keys: {sorted(batch)})")
    tokens, lengths = batch["tokens"], batch["lengths"]
    if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
        raise _fail(plugin, f"collate(): tokens {tuple(tokens.shape)} and lengths {tuple(lengths.shape)} "
                            "must be [N, S] and [N]")
    if int(lengths.max()) != tokens.shape[1]:
        raise _fail(plugin, f"collate() pads to {tokens.shape[1]} but the longest sequence has {int(lengths.max())} "
                            "tokens: pad to the longest sequence of the batch")

    model.train()
    rewards = model(tokens, lengths)
    if rewards.ndim != 2 or rewards.shape[0] != tokens.shape[0]:
        raise _fail(plugin, f"forward gave rewards {tuple(rewards.shape)}, expected [N={tokens.shape[0]}, K]")
    loss, metrics = plugin.loss(rewards, batch, cfg)
    if loss.ndim != 0 or not torch.isfinite(loss):
        raise _fail(plugin, f"loss() must return a finite scalar, got {loss}")
    if not all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()):
        raise _fail(plugin, f"loss() metrics must be finite floats, got {metrics}")
    loss.backward()
    # "Reaches" means connected to the loss: a pairwise loss depends only on r_chosen - r_rejected,
    # so the head's bias (and the final layernorm's bias) get an exactly-zero gradient, legitimately.
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise _fail(plugin, f"no gradient reaches {len(missing)} trainable parameters, e.g. {missing[:3]}")
    if not any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters()):
        raise _fail(plugin, "the loss gradient is zero for every parameter: nothing would be learned")

    # Learns: a few AdamW steps on one batch lower the loss.
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(cfg.model.optim.lr))
    first = float(loss.detach())
    for _ in range(15):
        optimizer.zero_grad()
        loss, _ = plugin.loss(model(tokens, lengths), batch, cfg)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        last = float(plugin.loss(model(tokens, lengths), batch, cfg)[0])
    if not last < first:
        raise _fail(plugin, f"the loss did not decrease when fitting one batch ({first:.4f} -> {last:.4f})")

    model.eval()
    with torch.no_grad():
        rewards = model(tokens, lengths)
    evaluation = plugin.evaluation_metrics([(rewards, batch)], cfg)
    if "loss" not in evaluation:
        raise _fail(plugin, f"evaluation_metrics() has no 'loss' (keys: {sorted(evaluation)})")
    try:
        json.dumps(evaluation, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail(plugin, f"evaluation_metrics() is not JSON-serialisable without NaN: {exc}") from None
    scored = plugin.score_outputs(rewards, cfg)
    if len(scored) != rewards.shape[0] or not all(isinstance(s.get("reward"), float) for s in scored):
        raise _fail(plugin, "score_outputs() must give one dict per row with a float 'reward'")
    json.dumps(scored)

    if checkpoint:
        with tempfile.TemporaryDirectory() as tmp:
            path = ckpt.save_checkpoint(Path(tmp) / "step_0000001", model, state={"step": 1})
            reloaded = plugin.model_class.from_config(cfg, vocab_size=tokenizer.vocab_size)
            ckpt.load_checkpoint(path, reloaded)
            reloaded.eval()
            with torch.no_grad():
                again = reloaded(tokens, lengths)
            if not torch.equal(rewards, again):
                diff = float((rewards - again).abs().max())
                raise _fail(plugin, f"checkpoint round trip changed the rewards (max difference {diff:g})")


    if export:
        _check_export(plugin, cfg, tokenizer, model, info, tokens, lengths, rewards)


def _check_export(plugin: RewardModelPlugin, cfg: Any, tokenizer: Any, model: torch.nn.Module, info: Any,
                  tokens: torch.Tensor, lengths: torch.Tensor, rewards: torch.Tensor) -> None:
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
            load_hf_weights(again, folder, again_cfg, require_head=True)
        except ConfigError as exc:
            raise _fail(plugin, f"Hugging Face export round trip failed: {exc}") from None
        again.eval()
        with torch.no_grad():
            imported = again(tokens, lengths)
        if imported.shape != rewards.shape or not torch.allclose(imported, rewards, atol=1e-5, rtol=0):
            diff = float((imported - rewards).abs().max()) if imported.shape == rewards.shape else float("nan")
            raise _fail(plugin, f"Hugging Face export round trip changed the rewards (max difference {diff:g}; "
                                f"shapes {tuple(rewards.shape)} -> {tuple(imported.shape)})")
