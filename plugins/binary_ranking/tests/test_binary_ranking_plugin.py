"""The plugin object: cheap import, registry entry point, config keys, conformance kit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rm_registry import ConfigError


def test_import_is_cheap() -> None:
    code = "import sys, rm_binary_ranking; print(json.dumps(sorted(m for m in ('torch', 'megatron') if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_entry_point_resolves_to_the_plugin(plugin) -> None:
    import rm_registry

    assert rm_registry.get_reward_model("binary_ranking") is plugin
    assert plugin.name == "binary_ranking" and plugin.description


def test_default_config_shape(plugin) -> None:
    cfg = plugin.default_config()
    assert cfg["model"]["binary_ranking"] == {
        "center_rewards_coefficient": 0.0,
        "use_margin": True,
        "margin_mode": "subtract",
    }
    assert cfg is not plugin.default_config()  # a fresh copy each time


def test_defaults_validate(plugin, make_cfg) -> None:
    cfg = make_cfg()
    assert cfg.model.reward_model_type == "binary_ranking"
    assert cfg.model.binary_ranking.use_margin is True
    plugin.validate_config(cfg)


BAD_CONFIG = [
    ("model.binary_ranking.center_rewards_coefficient", -0.1, "finite number >= 0"),
    ("model.binary_ranking.center_rewards_coefficient", float("inf"), "finite number >= 0"),
    ("model.binary_ranking.center_rewards_coefficient", "a lot", "finite number >= 0"),
    ("model.binary_ranking.use_margin", "yes", "true or false"),
    ("model.binary_ranking.use_margin", 1, "true or false"),
    ("model.binary_ranking.margin_mode", "multiply", "subtract, scale"),
    ("model.output_sequence", True, "one reward per sequence"),
]


@pytest.mark.parametrize(("key", "value", "hint"), BAD_CONFIG, ids=[f"{k}={v!r}" for k, v, _ in BAD_CONFIG])
def test_validate_config_names_the_key(plugin, make_cfg, key: str, value, hint: str) -> None:
    from omegaconf import OmegaConf

    cfg = make_cfg()
    OmegaConf.set_struct(cfg, False)
    OmegaConf.update(cfg, key, value)
    with pytest.raises(ConfigError) as info:
        plugin.validate_config(cfg)
    assert key in str(info.value) and hint in str(info.value)


def test_validate_config_refuses_unknown_keys(plugin, make_cfg) -> None:
    from omegaconf import OmegaConf

    cfg = make_cfg()
    OmegaConf.set_struct(cfg, False)
    cfg.model.binary_ranking.margin_scale = 2.0
    with pytest.raises(ConfigError, match=r"model\.binary_ranking\.margin_scale: unknown key"):
        plugin.validate_config(cfg)
    # The engine refuses it on the command line already, naming the key.
    with pytest.raises(ConfigError, match="margin_scale"):
        make_cfg("model.binary_ranking.margin_scale=2")


def test_command_line_overrides_reach_the_plugin(make_cfg) -> None:
    cfg = make_cfg("model.binary_ranking.center_rewards_coefficient=0.01", "model.binary_ranking.margin_mode=scale")
    assert cfg.model.binary_ranking.center_rewards_coefficient == 0.01
    assert cfg.model.binary_ranking.margin_mode == "scale"
    with pytest.raises(ConfigError, match="margin_mode"):
        make_cfg("model.binary_ranking.margin_mode=bogus")


def test_conformance_kit(plugin) -> None:
    from rm_registry.testing import check_plugin

    check_plugin(plugin)
