"""The ``model.regression`` config section: defaults, NeMo-Aligner keys, validation messages."""

from __future__ import annotations

import pytest

from rm_registry import ConfigError
from rm_regression import HELPSTEER_ATTRIBUTES, RegressionSettings


def test_defaults_are_the_helpsteer_attributes_with_uniform_weights(plugin, make_cfg) -> None:
    cfg = make_cfg()
    plugin.validate_config(cfg)
    s = plugin.settings(cfg)
    assert s.attribute_names == HELPSTEER_ATTRIBUTES == (
        "helpfulness", "correctness", "coherence", "complexity", "verbosity"
    )
    assert s.attribute_weights == pytest.approx((0.2,) * 5)
    assert s.merge_attributes is False
    assert s.loss_mask_val == -100.0
    assert s.num_attributes == 5


def test_default_config_is_a_fresh_nested_dict(plugin) -> None:
    first = plugin.default_config()
    assert set(first["model"]["regression"]) == {
        "attribute_names", "num_attributes", "attribute_weights", "merge_attributes", "loss_mask_val",
        "loss_func",
    }
    first["model"]["regression"]["loss_mask_val"] = 7
    assert plugin.default_config()["model"]["regression"]["loss_mask_val"] == -100


def test_list_overrides_from_the_command_line(plugin, make_cfg) -> None:
    cfg = make_cfg(
        "model.regression.attribute_names=[helpfulness,correctness,coherence,complexity,verbosity]",
        "model.regression.attribute_weights=[0.3,0.74,0.46,0.47,-0.33]",
    )
    s = plugin.settings(cfg)
    assert s.attribute_weights == (0.3, 0.74, 0.46, 0.47, -0.33)
    # A list override replaces the default list (OmegaConf merges lists by replacement).
    s = plugin.settings(make_cfg("model.regression.attribute_names=[a,b]"))
    assert s.attribute_names == ("a", "b") and s.attribute_weights == (0.5, 0.5)


def test_num_attributes_alone_names_attr_i(plugin, make_cfg) -> None:
    s = plugin.settings(make_cfg("model.regression.num_attributes=3"))
    assert s.attribute_names == ("attr_0", "attr_1", "attr_2")


def test_num_attributes_agreeing_with_names(plugin, make_cfg) -> None:
    s = plugin.settings(make_cfg("model.regression.num_attributes=2", "model.regression.attribute_names=[x,y]"))
    assert s.attribute_names == ("x", "y")


def test_num_attributes_disagreeing_with_names_names_both_keys(make_cfg) -> None:
    with pytest.raises(ConfigError) as info:
        make_cfg("model.regression.num_attributes=3", "model.regression.attribute_names=[x,y]")
    message = str(info.value)
    assert "model.regression.num_attributes=3" in message
    assert "model.regression.attribute_names" in message and "2 names (x, y)" in message


BAD = [
    ("model.regression.attribute_weights=[1,2]", "model.regression.attribute_weights has 2 values"),
    ("model.regression.attribute_weights=[1,2,3,4,x]", "model.regression.attribute_weights[4]='x'"),
    ("model.regression.attribute_names=[]", "model.regression.attribute_names=[]"),
    ("model.regression.attribute_names=[a,a]", "'a' appears twice"),
    ("model.regression.attribute_names=[a,1]", "model.regression.attribute_names[1]=1"),
    ("model.regression.attribute_names='help:ful'", "model.regression.attribute_names='help:ful'"),
    ("model.regression.num_attributes=0", "model.regression.num_attributes=0"),
    ("model.regression.merge_attributes=maybe", "model.regression.merge_attributes"),
    ("model.regression.loss_mask_val=minus", "model.regression.loss_mask_val"),
    ("model.output_sequence=true", "model.output_sequence=true"),
]


@pytest.mark.parametrize(("override", "expected"), BAD)
def test_bad_values_are_refused_naming_the_key(make_cfg, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_cfg(override)
    assert expected in str(info.value)


def test_names_with_separators_are_refused(make_cfg) -> None:
    with pytest.raises(ConfigError, match=r"attribute_names\[1\]='b:c'.*may not contain"):
        make_cfg("model.regression.attribute_names=[a,'b:c']")


def test_unknown_key_in_the_section_is_refused(make_cfg) -> None:
    with pytest.raises(ConfigError, match="model.regression.loss_func"):
        make_cfg("model.regression.loss_func=mse")


def test_settings_from_a_plain_mapping_refuses_unknown_keys() -> None:
    section = {
        "attribute_names": None, "num_attributes": None, "attribute_weights": None,
        "merge_attributes": False, "loss_mask_val": -100, "typo": 1,
    }
    with pytest.raises(ConfigError, match="unknown config key model.regression.typo"):
        RegressionSettings.from_config({"model": {"regression": section}})
    with pytest.raises(ConfigError, match="model.regression is missing"):
        RegressionSettings.from_config({"model": {}})
