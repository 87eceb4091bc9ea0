"""pluggy hooks: plugin_loaded, allow_plugin, add_commands; in-process and from entry points."""

from __future__ import annotations

import itertools
import sys
import types
from pathlib import Path

import pytest

import rm_registry
from rm_registry import (
    PluginDisabledError,
    PluginValidationError,
    get_reward_model,
    hookimpl,
    list_reward_models,
    register_hooks,
    register_reward_model,
    rescan,
    unregister_hooks,
)
from rm_registry.testing import fake_distribution

pytestmark = pytest.mark.usefixtures("clean_registry")

_unique = itertools.count()


def _status(name: str) -> rm_registry.PluginInfo:
    (row,) = [r for r in list_reward_models() if r.name == name]
    return row


def _hook_dist(tmp_path: Path, dist: str, source: str, *, ep_name: str = "hooks") -> str:
    """A fake distribution declaring one ``rm_registry_hooks`` entry point; returns its module."""
    module = f"fake_hooks_{next(_unique)}"
    site = tmp_path / f"hooks_{module}"
    fake_distribution(
        site, dist, "3.2", {"rm_registry_hooks": {ep_name: module}}, {module: source}
    )
    sys.path.insert(0, str(site))
    rescan()
    return module


class Recorder:
    def __init__(self) -> None:
        self.loaded: list[tuple[object, rm_registry.PluginInfo]] = []

    @hookimpl
    def rm_registry_plugin_loaded(self, plugin, info):
        self.loaded.append((plugin, info))


# ------------------------------------------------------------------ plugin_loaded


def test_plugin_loaded_called_once_after_validation(make_plugin_dist):
    make_plugin_dist("rm-alpha", "alpha")
    recorder = Recorder()
    register_hooks(recorder)
    plugin = get_reward_model("alpha")
    get_reward_model("alpha")
    assert len(recorder.loaded) == 1
    seen, info = recorder.loaded[0]
    assert seen is plugin
    assert (info.name, info.distribution, info.status) == ("alpha", "rm-alpha", "loaded")


def test_plugin_loaded_not_called_for_invalid_plugin(make_plugin_dist):
    make_plugin_dist("rm-bad", "bad", extra="\nPlugin.loss = 3\n")
    recorder = Recorder()
    register_hooks(recorder)
    with pytest.raises(PluginValidationError):
        get_reward_model("bad")
    assert recorder.loaded == []


def test_plugin_loaded_for_in_process_registration(fake_plugin_cls):
    recorder = Recorder()
    register_hooks(recorder)
    plugin = register_reward_model(fake_plugin_cls("fake_hooked"))
    assert [(p, i.status) for p, i in recorder.loaded] == [(plugin, "registered")]


def test_failing_plugin_loaded_hook_is_only_a_warning(make_plugin_dist):
    make_plugin_dist("rm-alpha", "alpha")

    class Crashing:
        @hookimpl
        def rm_registry_plugin_loaded(self, plugin, info):
            raise RuntimeError("observer bug")

    register_hooks(Crashing(), name="crashing-observer")
    with pytest.warns(UserWarning, match="rm_registry_plugin_loaded hook of .*crashing.*observer bug"):
        plugin = get_reward_model("alpha")
    assert plugin.name == "alpha"


# ------------------------------------------------------------------ allow_plugin


def test_allow_hook_refuses_before_import(make_plugin_dist):
    make_plugin_dist("rm-blocked", "blocked", source="raise RuntimeError('imported!')\n")
    make_plugin_dist("rm-alpha", "alpha")
    module = make_plugin_dist.modules["blocked"]
    asked: list[str] = []

    class Policy:
        @hookimpl
        def rm_registry_allow_plugin(self, info):
            asked.append(info.name)
            return None if info.name == "alpha" else info.distribution != "rm-blocked"

    register_hooks(Policy(), name="allow-list")
    row = _status("blocked")
    assert row.status == "disabled" and "allow-list" in (row.error or "")
    with pytest.raises(PluginDisabledError, match="rm_registry_allow_plugin hook of .*allow-list"):
        get_reward_model("blocked")
    assert module not in sys.modules
    assert get_reward_model("alpha").name == "alpha"  # None leaves the decision to others
    assert "blocked" in asked and "alpha" in asked


def test_true_does_not_override_another_hooks_false(make_plugin_dist):
    make_plugin_dist("rm-alpha", "alpha")

    class No:
        @hookimpl
        def rm_registry_allow_plugin(self, info):
            return False

    class Yes:
        @hookimpl
        def rm_registry_allow_plugin(self, info):
            return True

    register_hooks(No(), name="deny-all")
    register_hooks(Yes(), name="allow-all")
    with pytest.raises(PluginDisabledError, match="deny-all"):
        get_reward_model("alpha")
    unregister_hooks("deny-all")
    assert get_reward_model("alpha").name == "alpha"


def test_crashing_allow_hook_fails_closed(make_plugin_dist):
    make_plugin_dist("rm-alpha", "alpha")

    class Broken:
        @hookimpl
        def rm_registry_allow_plugin(self, info):
            raise ValueError("policy file missing")

    register_hooks(Broken(), name="broken-policy")
    with pytest.raises(PluginDisabledError, match="broken-policy.*policy file missing"):
        get_reward_model("alpha")


# ------------------------------------------------------------------ entry-point hooks


POLICY_SOURCE = """\
from rm_registry import hookimpl

ASKED = []


@hookimpl
def rm_registry_allow_plugin(info):
    ASKED.append(info.name)
    return info.name != "alpha"
"""


def test_hooks_from_entry_points_are_loaded_lazily(make_plugin_dist, tmp_path):
    make_plugin_dist("rm-alpha", "alpha")
    module = _hook_dist(tmp_path, "rm-policy", POLICY_SOURCE)
    assert module not in sys.modules  # nothing asked yet
    assert _status("alpha").status == "disabled"
    assert module in sys.modules
    with pytest.raises(PluginDisabledError, match="rm_registry_hooks.*rm-policy 3.2"):
        get_reward_model("alpha")
    assert "alpha" in sys.modules[module].ASKED


def test_broken_hook_distribution_is_warned_about_and_skipped(make_plugin_dist, tmp_path):
    make_plugin_dist("rm-alpha", "alpha")
    _hook_dist(tmp_path, "rm-broken-hooks", "raise ImportError('hook deps missing')\n", ep_name="bh")
    with pytest.warns(UserWarning) as caught:
        assert get_reward_model("alpha").name == "alpha"
    message = " ".join(str(w.message) for w in caught)
    assert "rm-broken-hooks 3.2" in message and "entry point bh" in message
    assert "hook deps missing" in message and "RM_REGISTRY_DISABLE=rm-broken-hooks" in message


def test_hook_distribution_with_unknown_hook_is_skipped(make_plugin_dist, tmp_path):
    make_plugin_dist("rm-alpha", "alpha")
    source = (
        "from rm_registry import hookimpl\n"
        "@hookimpl\n"
        "def rm_registry_alow_plugin(info):\n"  # typo
        "    return False\n"
    )
    _hook_dist(tmp_path, "rm-typo-hooks", source)
    with pytest.warns(UserWarning, match="unknown hook.*rm_registry_alow_plugin"):
        assert _status("alpha").status == "available"


def test_disable_env_applies_to_hook_distributions(make_plugin_dist, tmp_path, monkeypatch):
    make_plugin_dist("rm-alpha", "alpha")
    monkeypatch.setenv("RM_REGISTRY_DISABLE", "rm-policy")
    module = _hook_dist(tmp_path, "rm-policy", POLICY_SOURCE)
    assert get_reward_model("alpha").name == "alpha"
    assert module not in sys.modules


def test_rescan_drops_hooks_of_uninstalled_distributions(make_plugin_dist, tmp_path, monkeypatch):
    make_plugin_dist("rm-alpha", "alpha")
    _hook_dist(tmp_path, "rm-policy", POLICY_SOURCE)
    assert _status("alpha").status == "disabled"
    monkeypatch.setenv("RM_REGISTRY_DISABLE", "rm-policy")  # as good as uninstalling it
    rescan()
    assert _status("alpha").status == "available"


# ------------------------------------------------------------------ register_hooks


def test_register_hooks_validates():
    module = types.ModuleType("fake_typo_hooks")

    @hookimpl
    def rm_registry_plugin_loadded(plugin, info):  # typo
        pass

    module.rm_registry_plugin_loadded = rm_registry_plugin_loadded  # type: ignore[attr-defined]
    with pytest.raises(PluginValidationError, match="unknown hook"):
        register_hooks(module)

    class WrongArgs:
        @hookimpl
        def rm_registry_allow_plugin(self, info, extra):
            return None

    with pytest.raises(PluginValidationError, match="extra"):
        register_hooks(WrongArgs())

    recorder = Recorder()
    register_hooks(recorder)
    with pytest.raises(PluginValidationError):
        register_hooks(recorder)  # already registered
    unregister_hooks(recorder)
    with pytest.raises(LookupError):
        unregister_hooks(recorder)


# ------------------------------------------------------------------ pluggy imported lazily


def _modules_after(code: str, *sites: Path) -> set[str]:
    import json
    import os
    import subprocess

    src = Path(rm_registry.__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "RM_REGISTRY_DISABLE"}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, sites), str(src)])
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_pluggy_is_imported_only_when_there_are_hooks(make_plugin_dist, tmp_path):
    site = make_plugin_dist("rm-alpha", "alpha")
    listing = "from rm_registry._cli import main\nassert main(['list']) == 0"
    assert "pluggy" not in _modules_after(listing, site)  # no hook implementation anywhere
    assert "pluggy" in _modules_after("from rm_registry import hookimpl", site)
    hooks = tmp_path / "hooks_site"
    fake_distribution(
        hooks, "rm-policy-lazy", "1.0", {"rm_registry_hooks": {"policy": "lazy_policy_hooks"}},
        {"lazy_policy_hooks": (
            "from rm_registry import hookimpl\n"
            "@hookimpl\n"
            "def rm_registry_allow_plugin(info):\n"
            "    return info.name != 'alpha'\n"
        )},
    )
    # An installed hook implementation is still asked during `list`: alpha is refused.
    code = (
        "import rm_registry\n"
        "(row,) = [r for r in rm_registry.list_reward_models() if r.name == 'alpha']\n"
        "assert row.status == 'disabled' and 'rm_registry_allow_plugin' in row.error, row"
    )
    assert {"pluggy", "lazy_policy_hooks"} <= _modules_after(code, site, hooks)


def test_hookspecs_are_marked_for_pluggy():
    import pluggy

    from rm_registry import _hooks

    pm = pluggy.PluginManager(_hooks.PROJECT_NAME)
    pm.add_hookspecs(_hooks.HookSpecs)
    assert {name for name in vars(pm.hook) if name.startswith("rm_registry_")} == _hooks._SPEC_NAMES
    assert rm_registry.hookspec is _hooks.hookspec and rm_registry.hookimpl is _hooks.hookimpl
