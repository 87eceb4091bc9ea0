"""The plugin object: cheap import, registry entry point, conformance kit, config checks, the model class."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rm_registry import ConfigError


def test_import_is_cheap() -> None:
    code = ("import sys, json, rm_process_reward; "
            "print(json.dumps(sorted(m for m in ('torch', 'megatron') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_entry_point_resolves_to_the_plugin(plugin) -> None:
    import rm_registry

    assert rm_registry.get_reward_model("process_reward") is plugin
    assert plugin.name == "process_reward" and plugin.description


def test_protocol(plugin) -> None:
    from rm_registry.testing import check_protocol

    check_protocol(plugin)


@pytest.mark.slow
def test_conformance_kit(plugin) -> None:
    # Behaviour on a tiny megatron-core model, token-level: the batches carry reward_positions, so
    # the kit also checks score_sequences and the *ForTokenClassification export round trip.
    from rm_registry.testing import check_plugin

    report = check_plugin(plugin)
    assert "score_sequences (records scored at the plugin's positions)" in report.checks
    assert "Hugging Face export round trip" in report.checks


@pytest.mark.parametrize(("override", "message"), [
    ("model.process_reward.loss=mse", r"model\.process_reward\.loss='mse': expected one of ce, bce"),
    ("model.process_reward.aggregate=max", r"model\.process_reward\.aggregate='max'"),
    ("model.process_reward.threshold=1.5", r"model\.process_reward\.threshold=1\.5: expected a number strictly"),
    ("model.process_reward.max_prompt_length=0", r"model\.process_reward\.max_prompt_length=0"),
    ("model.process_reward.step_tag=''", r"model\.process_reward\.step_tag='': expected a non-empty string"),
    ("model.process_reward.negative_label=+", r"positive_label and negative_label are both '\+'"),
    ("model.output_sequence=true", r"model\.output_sequence=true: process_reward reads its head"),
])
def test_bad_config_is_refused_naming_the_key(make_cfg, override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make_cfg(override)


def test_head_width_follows_the_loss(plugin, make_cfg, tokenizer) -> None:
    tiny = ("model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4")
    assert plugin.model_class.from_config(make_cfg(*tiny), vocab_size=tokenizer.vocab_size).num_outputs == 2
    bce = make_cfg(*tiny, "model.process_reward.loss=bce")
    assert plugin.model_class.from_config(bce, vocab_size=tokenizer.vocab_size).num_outputs == 1
    assert plugin.output_names(bce) == ["correct"] and plugin.output_names(make_cfg()) == ["incorrect", "correct"]
