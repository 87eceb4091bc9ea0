"""The config tree: layers, NeMo-Aligner keys, unknown keys and bad values refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rm_registry import ConfigError
from rm_registry.engine.config import build_config


class _Plugin:
    """Just enough of a plugin for config building (the config never touches the rest)."""

    name = "toy"
    description = "toy"

    def default_config(self) -> dict[str, Any]:
        return {"model": {"toy": {"alpha": 0.5, "names": ["a", "b"]}}, "trainer": {"rm": {"max_steps": 7}}}

    def validate_config(self, cfg: Any) -> None:
        if cfg.model.toy.alpha < 0:
            raise ConfigError(f"model.toy.alpha={cfg.model.toy.alpha}: must be >= 0")


def test_layers_merge_in_order(tmp_path: Path) -> None:
    yaml = tmp_path / "c.yaml"
    yaml.write_text("model:\n  hidden_size: 32\n  toy:\n    alpha: 0.25\ntrainer:\n  rm:\n    max_steps: 9\n")
    cfg = build_config(_Plugin(), config_file=yaml, overrides=["trainer.rm.max_steps=11", "model.optim.lr=1e-4"])
    assert cfg.model.reward_model_type == "toy"
    assert cfg.model.hidden_size == 32
    assert cfg.model.toy.alpha == 0.25
    assert cfg.trainer.rm.max_steps == 11  # command line over file over plugin over engine
    assert cfg.model.optim.lr == pytest.approx(1e-4)


def test_plugin_defaults_apply() -> None:
    cfg = build_config(_Plugin())
    assert cfg.trainer.rm.max_steps == 7
    assert list(cfg.model.toy.names) == ["a", "b"]


@pytest.mark.parametrize(
    "key",
    ["model.no_such_key", "trainer.rm.max_step", "model.optim.learning_rate", "model.toy.beta", "exp_manager.no_such_key"],
)
def test_unknown_override_is_refused_by_name(key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config(_Plugin(), overrides=[f"{key}=1"])


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path) -> None:
    yaml = tmp_path / "training_rm.yaml"
    yaml.write_text("model:\n  regression:\n    loss_fn: mse\n")  # (NeMo's loss_func is accepted and ignored)
    with pytest.raises(ConfigError) as info:
        build_config(_Plugin(), config_file=yaml)
    assert "model.regression" in str(info.value) and "training_rm.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("model.micro_batch_size=abc", "model.micro_batch_size"),
        ("model.micro_batch_size=0", "model.micro_batch_size=0"),
        ("model.global_batch_size=12", "model.global_batch_size=12"),  # not a multiple of 8
        ("model.num_attention_heads=3", "model.hidden_size=64 is not divisible"),
        ("model.data.overlong_policy=skip", "model.data.overlong_policy='skip'"),
        ("model.optim.lr=-1", "model.optim.lr=-1"),
        ("trainer.rm.max_steps=0", "trainer.rm.max_steps=0"),
        ("model.tokenizer.library=huggingface", "model.tokenizer.path"),
        ("model.toy.alpha=-1", "model.toy.alpha=-1"),
        ("model.hidden_size=64.5", "model.hidden_size=64.5"),
        ("trainer.rm.max_steps", "key=value"),
    ],
)
def test_bad_values_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(_Plugin(), overrides=[override])
    assert fragment in str(info.value)


def test_nemo_aligner_keys_are_accepted() -> None:
    keys = [
        "model.reward_model_type=toy",
        "model.micro_batch_size=2",
        "model.global_batch_size=4",
        "model.encoder_seq_length=128",
        "model.optim.lr=2e-4",
        "model.optim.weight_decay=0.0",
        "model.tensor_model_parallel_size=1",
        "trainer.rm.max_steps=5",
        "trainer.rm.max_epochs=2",
        "trainer.rm.val_check_interval=2",
        "trainer.rm.save_interval=5",
        "trainer.rm.gradient_clip_val=0.5",
        "model.data.data_prefix.train=x.jsonl",
    ]
    cfg = build_config(_Plugin(), overrides=keys)
    assert cfg.model.encoder_seq_length == 128 and cfg.trainer.rm.gradient_clip_val == 0.5
    assert cfg.model.data.data_prefix.train == "x.jsonl"


def test_file_naming_another_architecture_is_refused(tmp_path: Path) -> None:
    yaml = tmp_path / "c.yaml"
    yaml.write_text("model:\n  reward_model_type: regression\n")
    with pytest.raises(ConfigError, match="reward_model_type='regression'"):
        build_config(_Plugin(), config_file=yaml)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: no such file"):
        build_config(_Plugin(), config_file=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        build_config(_Plugin(), config_file=bad)


def test_data_paths_override_data_prefix() -> None:
    cfg = build_config(_Plugin(), overrides=["model.data.data_prefix.train=a.jsonl"],
                       data_paths={"train": "b.jsonl", "validation": None})
    assert cfg.model.data.data_prefix.train == "b.jsonl"
    assert cfg.model.data.data_prefix.validation is None


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("model.optim.betas=[0.9", "override 'model.optim.betas=[0.9': the value is not valid"),
        ("model.tokenizer=abc", "model.tokenizer is a section, not a value"),
        ("model.optim=1", "model.optim.lr"),
    ],
)
def test_malformed_values_are_one_line_errors(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(_Plugin(), overrides=[override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_plugin_default_config_raising_is_a_load_error_naming_the_plugin() -> None:
    from rm_registry import PluginLoadError

    class Broken(_Plugin):
        name = "broken"

        def default_config(self) -> dict[str, Any]:
            raise RuntimeError("boom")

    with pytest.raises(PluginLoadError, match=r"plugin 'broken': default_config\(\) raised RuntimeError: boom"):
        build_config(Broken())


@pytest.mark.parametrize(("overrides", "lr"), [
    ([], 4e-4),                                       # the default width, 64
    (["model.hidden_size=256"], 1e-4),                # null scales with 1 / width
    (["model.hidden_size=256", "model.optim.lr=1e-3"], 1e-3),  # an explicit value is kept
    (["model.hidden_size=4096", "model.num_attention_heads=32"], 6.25e-6),  # min_lr lowered below it
])
def test_null_learning_rate_scales_with_width(overrides: list[str], lr: float) -> None:
    cfg = build_config(_Plugin(), overrides=overrides)
    assert cfg.model.optim.lr == pytest.approx(lr)  # resolved into the config (and its saved copy)
    assert cfg.model.optim.sched.min_lr <= cfg.model.optim.lr


@pytest.mark.parametrize(("override", "fragment"), [
    ("model.optim.lr=abc", "model.optim.lr='abc': expected a positive learning rate"),
    ("model.optim.lr=1e-6", "model.optim.sched.min_lr=1e-05 is larger than model.optim.lr=1e-06"),
])
def test_bad_or_too_small_learning_rate_is_refused(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(_Plugin(), overrides=[override])
    assert fragment in str(info.value)
