"""Mixed precision (``trainer.precision``): bf16 / fp16 compute over float32 main weights.

The claims checked here: ``bf16-mixed`` keeps float32 weights, gradients and Adam moments and
computes in bfloat16; it trains like float32 where pure bfloat16 weights (``model.params_dtype=
bfloat16``) lose the small updates; ``16-mixed`` scales the loss and skips a step whose gradients
overflow; NeMo-Aligner's precision names map to these modes; bad combinations are refused by key.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rm_registry import ConfigError, get_reward_model
from test_trainer import _prefs

TINY = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4", "model.encoder_seq_length=96",
        "model.micro_batch_size=8", "model.global_batch_size=8", "trainer.rm.val_check_interval=1000",
        "trainer.rm.save_interval=1000", "model.optim.sched.name=constant", "model.optim.sched.warmup_steps=0",
        "trainer.rm.train_random_sampler=false"]


def _cfg(tmp_path: Path, *extra: str):
    from rm_registry.engine.config import build_config

    plugin = get_reward_model("binary_ranking")
    data = _prefs(tmp_path / "train.jsonl", 64)
    return plugin, build_config(plugin, overrides=[*TINY, *extra], data_paths={"train": data})


def _train_losses(tmp_path: Path, name: str, *extra: str) -> list[float]:
    from rm_registry.engine.trainer import train

    plugin, cfg = _cfg(tmp_path, *extra)
    train(plugin, cfg, tmp_path / name, progress=False)
    records = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["split"] == "train"]


@pytest.mark.slow
def test_bf16_mixed_follows_float32_where_pure_bf16_does_not(tmp_path: Path) -> None:
    # A small learning rate: Adam moves each weight by ~lr a step, below bfloat16's resolution at
    # the weights' size (0.02 * 2**-8 ~ 8e-5), so pure-bf16 weights round most updates away.
    common = ("trainer.rm.max_steps=24", "model.optim.lr=2e-5", "model.optim.weight_decay=0")
    fp32 = _train_losses(tmp_path, "fp32", *common)
    mixed = _train_losses(tmp_path, "mixed", *common, "trainer.precision=bf16-mixed")
    pure = _train_losses(tmp_path, "pure", *common, "model.params_dtype=bfloat16")
    progress = fp32[0] - fp32[-1]  # how far float32 training moved the loss
    assert progress > 0.02, fp32
    mixed_gap = max(abs(a - b) for a, b in zip(fp32, mixed))
    pure_gap = max(abs(a - b) for a, b in zip(fp32, pure))
    print(f"loss drop {progress:.4f}; largest gap to float32: bf16-mixed {mixed_gap:.4f}, pure bf16 {pure_gap:.4f}")
    tolerance = 0.1 * progress
    assert mixed_gap < tolerance, (fp32, mixed)
    assert pure_gap > tolerance, (fp32, pure)  # the tolerance is one that pure bf16 fails


def test_bf16_mixed_keeps_float32_weights_and_gradients_and_computes_in_bf16(tmp_path: Path) -> None:
    plugin, cfg = _cfg(tmp_path, "trainer.precision=bf16-mixed")
    from rm_registry.engine import parallel

    parallel.initialize(seed=1234)
    model = plugin.model_class.from_config(cfg, vocab_size=300)
    assert model.compute_dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    seen: list[torch.dtype] = []
    layer = model.backbone.decoder.layers[0].mlp.linear_fc1
    handle = layer.register_forward_hook(lambda mod, args, out: seen.append(out[0].dtype))
    tokens = torch.randint(0, 256, (4, 12))
    lengths = torch.tensor([12, 7, 3, 12])
    rewards = model(tokens, lengths)
    handle.remove()
    assert seen == [torch.bfloat16] and rewards.dtype == torch.float32
    rewards.sum().backward()  # megatron's linear layers' backward under CPU autocast (a shim)
    assert {p.grad.dtype for p in model.parameters() if p.grad is not None} == {torch.float32}
    with torch.no_grad():
        model.compute_dtype = None
        exact = model(tokens, lengths)
    assert torch.allclose(rewards.detach(), exact, atol=0.05), (rewards, exact)
    assert not torch.equal(rewards.detach(), exact)  # bf16 compute really ran


def test_fp16_loss_scaler_skips_overflowing_steps_and_grows_back() -> None:
    from rm_registry.engine.trainer._optim import LossScaler

    scaler = LossScaler(initial_scale=2.0**8, growth_interval=2)
    assert scaler.scale(torch.tensor(1.5)).item() == 1.5 * 256
    assert scaler.update(math.inf) is False and scaler.value == 128  # overflow: skip, back off
    assert scaler.update(float("nan")) is False and scaler.value == 64
    assert scaler.update(1.0) is True and scaler.value == 64
    assert scaler.update(1.0) is True and scaler.value == 128  # two good steps: grow
    restored = LossScaler()
    restored.load_state_dict(scaler.state_dict())
    assert restored.value == 128 and restored.state_dict() == scaler.state_dict()
    grads = [torch.full((3,), 256.0)]
    scaler.unscale(grads)
    assert grads[0].tolist() == [2.0, 2.0, 2.0]


@pytest.mark.slow
def test_fp16_mixed_trains_and_resumes_with_its_loss_scale(tmp_path: Path) -> None:
    from rm_registry.engine.checkpoint import find_latest, load_checkpoint
    from rm_registry.engine.trainer import train

    plugin, cfg = _cfg(tmp_path, "trainer.precision=16-mixed", "trainer.rm.max_steps=4", "trainer.rm.save_interval=2")
    result = train(plugin, cfg, tmp_path / "run", progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    assert len(train_records) == 4 and all(math.isfinite(r["loss"]) for r in train_records)
    assert all(r["loss_scale"] > 0 for r in train_records)
    model = plugin.model_class.from_config(cfg, vocab_size=257)
    state = load_checkpoint(find_latest(result.output_dir), model)
    assert state["loss_scale"]["scale"] == train_records[-1]["loss_scale"]


@pytest.mark.parametrize("value, mode", [("bf16", "bf16-mixed"), ("bf16-mixed", "bf16-mixed"), (16, "16-mixed"),
                                         ("16-mixed", "16-mixed"), (32, "32"), ("32-true", "32")])
def test_precision_names_map_to_the_mixed_modes(value: object, mode: str) -> None:
    from omegaconf import OmegaConf

    from rm_registry.engine.config._checks import precision_mode

    assert precision_mode(OmegaConf.create({"trainer": {"precision": value}})) == mode


@pytest.mark.parametrize("extra, words", [
    (["trainer.precision=bf16-true"], ["trainer.precision='bf16-true'", "model.params_dtype=bfloat16"]),
    (["trainer.precision=64"], ["trainer.precision=64", "bf16-mixed"]),
    (["trainer.precision=bf16-mixed", "model.params_dtype=bfloat16"],
     ["model.params_dtype=bfloat16", "float32 main weights"]),
])
def test_bad_precision_settings_are_refused_by_key(tmp_path: Path, extra: list[str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, *extra)
    for word in words:
        assert word in str(err.value)
