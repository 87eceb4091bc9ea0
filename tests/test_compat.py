"""NeMo-Aligner compatibility: RewardModelType and REWARD_MODEL_CLASS_DICT, fed by plugins."""

from __future__ import annotations

import enum
import pickle
import sys

import pytest

import rm_registry
from rm_registry import PluginNotFoundError, registered_reward_model

pytestmark = pytest.mark.usefixtures("clean_registry")


def test_enum_members_come_from_discovered_names(make_plugin_dist):
    make_plugin_dist("rm-alpha", "alpha_ranking")
    rm_type = rm_registry.RewardModelType
    assert issubclass(rm_type, enum.Enum)
    member = rm_type("alpha_ranking")  # what NeMo-Aligner does with cfg.model.reward_model_type
    assert member is rm_type.ALPHA_RANKING
    assert member.value == "alpha_ranking"
    assert member.name == "ALPHA_RANKING"
    assert pickle.loads(pickle.dumps(member)) is member


def test_unknown_value_is_a_value_error_with_suggestion(make_plugin_dist):
    make_plugin_dist("rm-alpha", "alpha_ranking")
    with pytest.raises(ValueError, match="Did you mean 'alpha_ranking'") as info:
        rm_registry.RewardModelType("alpha_rankng")
    assert isinstance(info.value, PluginNotFoundError)


def test_class_dict_loads_lazily(make_plugin_dist):
    make_plugin_dist("rm-alpha", "alpha_ranking")
    module = make_plugin_dist.modules["alpha_ranking"]
    class_dict = rm_registry.REWARD_MODEL_CLASS_DICT
    member = rm_registry.RewardModelType.ALPHA_RANKING
    # Membership, len and iteration import nothing.
    assert member in class_dict and "alpha_ranking" in class_dict
    assert "nope" not in class_dict and 3 not in class_dict
    assert member in list(class_dict)
    assert len(class_dict) == len(rm_registry.RewardModelType)
    assert module not in sys.modules

    model_class = class_dict[member]
    assert module in sys.modules
    assert model_class.__module__ == f"{module}_model"
    assert class_dict["alpha_ranking"] is model_class
    assert class_dict.get("nope") is None


def test_class_dict_is_read_only_and_errors_are_ours(make_plugin_dist):
    make_plugin_dist("rm-alpha", "alpha_ranking")
    class_dict = rm_registry.REWARD_MODEL_CLASS_DICT
    with pytest.raises(TypeError):
        class_dict["alpha_ranking"] = dict  # type: ignore[index]
    with pytest.raises(PluginNotFoundError, match="Did you mean 'alpha_ranking'"):
        class_dict["alpha_rankin"]
    with pytest.raises(TypeError, match="RewardModelType members or names"):
        class_dict[1.5]


def test_enum_follows_rescans_and_registrations(make_plugin_dist, fake_plugin_cls):
    make_plugin_dist("rm-alpha", "alpha_ranking")
    old = rm_registry.RewardModelType
    assert rm_registry.RewardModelType is old  # cached while nothing changes
    old_member = old.ALPHA_RANKING
    with registered_reward_model(fake_plugin_cls("fake-compat")):
        new = rm_registry.RewardModelType
        assert new is not old
        assert new("fake-compat") is new.FAKE_COMPAT
        assert rm_registry.REWARD_MODEL_CLASS_DICT[new.FAKE_COMPAT] is dict
        # Members of an enum read before the change still work as keys.
        assert rm_registry.REWARD_MODEL_CLASS_DICT[old_member].__name__ == "Model"
    make_plugin_dist("rm-beta", "beta")  # installed at run time (rescans)
    latest = rm_registry.RewardModelType
    assert {"alpha_ranking", "beta"} <= {m.value for m in latest}
    assert "fake-compat" not in {m.value for m in latest}
