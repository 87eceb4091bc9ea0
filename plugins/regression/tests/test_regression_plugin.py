"""The plugin object: cheap import, registry entry point, conformance kit, the model class."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rm_registry import ConfigError


def test_import_is_cheap() -> None:
    code = "import sys, rm_regression; print(json.dumps(sorted(m for m in ('torch', 'megatron') if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_entry_point_resolves_to_the_plugin(plugin) -> None:
    import rm_registry

    assert rm_registry.get_reward_model("regression") is plugin
    assert plugin.name == "regression" and plugin.description


def test_protocol(plugin) -> None:
    from rm_registry.testing import check_protocol

    check_protocol(plugin)


def test_conformance_kit(plugin) -> None:
    # Protocol, then behaviour on a tiny megatron-core model: build, forward, loss, backward,
    # learning, evaluation, scoring and a checkpoint round trip.
    from rm_registry.testing import check_plugin

    check_plugin(plugin)


TINY = (
    "model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4",
    "model.encoder_seq_length=64",
)


def test_model_has_one_output_per_attribute_and_trains(plugin, tokenizer, make_cfg, write_jsonl) -> None:
    import torch

    cfg = make_cfg(*TINY, "model.regression.attribute_names=[x,y,z]", "model.regression.attribute_weights=[1,2,3]")
    model = plugin.model_class.from_config(cfg, vocab_size=tokenizer.vocab_size)
    assert model.num_outputs == 3 and model.attribute_names == ("x", "y", "z")
    path = write_jsonl([
        {"text": "good answer", "label": [4, 3, 2]},
        {"text": "bad", "label": "x:0,z:1"},
        {"text": "meh answer here", "label": {"y": 2}},
    ])
    ds = plugin.build_datasets({"train": path}, tokenizer, cfg)["train"]
    batch = plugin.collate(list(ds), tokenizer.pad_id)
    rewards = model(batch["tokens"], batch["lengths"])
    assert rewards.shape == (3, 3) and rewards.dtype == torch.float32
    loss, _ = plugin.loss(rewards, batch, cfg)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.weight.grad.abs().sum() > 0

    # The served shape follows merge_attributes; the scalar is the weighted sum.
    model.eval()
    with torch.no_grad():
        full = model(batch["tokens"], batch["lengths"])
    assert model.infer(batch["tokens"], batch["lengths"]).shape == (3, 3)
    model.merge_attributes = True
    merged = model.infer(batch["tokens"], batch["lengths"])
    assert merged.shape == (3, 1)
    assert torch.allclose(merged[:, 0], full @ torch.tensor([1.0, 2.0, 3.0]), atol=1e-5)
    scored = plugin.score_outputs(full, cfg)
    assert [r["reward"] for r in scored] == pytest.approx(merged[:, 0].tolist(), abs=1e-5)


def test_all_masked_batch_through_the_model(plugin, tokenizer, make_cfg) -> None:
    import torch

    cfg = make_cfg(*TINY)
    model = plugin.model_class.from_config(cfg, vocab_size=tokenizer.vocab_size)
    tokens = torch.tensor([[1, 2, 3, tokenizer.eos_id], [4, tokenizer.eos_id, tokenizer.pad_id, tokenizer.pad_id]])
    batch = {"tokens": tokens, "lengths": torch.tensor([4, 2]), "labels": torch.full((2, 5), -100.0)}
    loss, metrics = plugin.loss(model(batch["tokens"], batch["lengths"]), batch, cfg)
    assert loss.item() == 0.0 and metrics["labelled"] == 0.0
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is None or (torch.isfinite(p.grad).all() and not p.grad.any()), name


def test_num_outputs_must_match_the_attributes(plugin, tokenizer, make_cfg) -> None:
    with pytest.raises(ConfigError, match="num_outputs=2 but model.regression has 5 attributes"):
        plugin.model_class.from_config(make_cfg(*TINY), vocab_size=tokenizer.vocab_size, num_outputs=2)
