"""Discovery, loading, validation, conflicts, disabling and in-process registration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import rm_registry
from rm_registry import (
    PluginConflictError,
    PluginDisabledError,
    PluginLoadError,
    PluginNotFoundError,
    PluginValidationError,
    RMRegistryError,
    get_reward_model,
    list_reward_models,
    register_reward_model,
    registered_reward_model,
    rescan,
    unregister_reward_model,
)
from rm_registry import _discovery, _registry

pytestmark = pytest.mark.usefixtures("clean_registry")

REPO_SRC = Path(rm_registry.__file__).resolve().parents[1]


def _row(name: str, distribution: str | None = None) -> rm_registry.PluginInfo:
    rows = [
        r
        for r in list_reward_models()
        if r.name == name and (distribution is None or r.distribution == distribution)
    ]
    assert len(rows) == 1, rows
    return rows[0]


def _run(code: str, *sites: Path, env_extra: dict[str, str] | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RM_REGISTRY_DISABLE"}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, sites), str(REPO_SRC)])
    env.update(env_extra or {})
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ laziness


def test_import_and_list_import_neither_torch_nor_plugins(make_plugin_dist):
    site = make_plugin_dist("rm-alpha", "alpha")
    module = make_plugin_dist.modules["alpha"]
    result = _run(
        "import sys, json\n"
        "import rm_registry\n"
        "scanned_on_import = rm_registry._discovery._scan is not None\n"
        "rows = rm_registry.list_reward_models()\n"
        "print(json.dumps({'scanned_on_import': scanned_on_import,"
        " 'names': [r.name for r in rows], 'statuses': {r.name: r.status for r in rows},"
        " 'modules': sorted(sys.modules)}))",
        site,
    )
    assert result["scanned_on_import"] is False
    assert "alpha" in result["names"] and result["statuses"]["alpha"] == "available"
    leaked = {"torch", "megatron", "omegaconf", module, "rm_regression", "rm_binary_ranking"}
    assert leaked.isdisjoint(result["modules"])


def test_get_imports_only_the_plugin_asked_for(make_plugin_dist, tmp_path):
    site = tmp_path / "shared_site"
    make_plugin_dist("rm-alpha", "alpha", site=site)
    make_plugin_dist("rm-beta", "beta", site=site)
    alpha, beta = make_plugin_dist.modules["alpha"], make_plugin_dist.modules["beta"]
    result = _run(
        "import sys, json, rm_registry\n"
        "p = rm_registry.get_reward_model('alpha')\n"
        "print(json.dumps({'name': p.name, 'modules': sorted(sys.modules)}))",
        site,
    )
    assert result["name"] == "alpha"
    assert alpha in result["modules"]
    # Neither the other plugin, nor the lazily resolved model class (torch in real plugins).
    assert beta not in result["modules"]
    assert f"{alpha}_model" not in result["modules"]
    assert "torch" not in result["modules"]


def test_scan_happens_once_on_first_use(make_plugin_dist):
    make_plugin_dist("rm-alpha", "alpha")
    before = _discovery._scan_count
    assert _discovery._scan is None  # rescan() only forgets; nothing is read until first use
    list_reward_models()
    list_reward_models()
    get_reward_model("alpha")
    with pytest.raises(PluginNotFoundError):
        get_reward_model("nope")
    assert _discovery._scan_count == before + 1


def test_sixteen_threads_get_one_object_loaded_once(make_plugin_dist):
    # A class entry point, slow to instantiate: without the lock several threads would each
    # instantiate it (and the scan could run several times).
    make_plugin_dist("rm-slow", "slow", attr="Plugin", delay=0.2)
    module_name = make_plugin_dist.modules["slow"]
    before = _discovery._scan_count
    barrier = threading.Barrier(16)
    results: list[object] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            barrier.wait()
            results.append(get_reward_model("slow"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert len(results) == 16
    assert len({id(r) for r in results}) == 1
    assert sys.modules[module_name].INSTANCES == 1
    assert _discovery._scan_count == before + 1


# ------------------------------------------------------------------ broken plugins


def test_import_failure_is_isolated_and_named(make_plugin_dist, tmp_path):
    site = tmp_path / "site"
    make_plugin_dist(
        "rm-broken", "broken", version="0.3", site=site,
        source="import a_module_that_does_not_exist_xyz\n",
    )
    make_plugin_dist("rm-alpha", "alpha", site=site)
    module = make_plugin_dist.modules["broken"]

    with pytest.raises(PluginLoadError) as info:
        get_reward_model("broken")
    message = str(info.value)
    for part in ("'broken'", "rm-broken", "0.3", f"{module}:plugin", "RM_REGISTRY_DISABLE"):
        assert part in message
    assert isinstance(info.value.__cause__, ModuleNotFoundError)

    # The others are unaffected, and the broken one is listed as such.
    assert get_reward_model("alpha").name == "alpha"
    assert _row("broken").status == "broken"
    assert "a_module_that_does_not_exist_xyz" in (_row("broken").error or "")
    assert _row("alpha").status == "loaded"

    # Asking again raises again, with the cause chained again.
    with pytest.raises(PluginLoadError) as again:
        get_reward_model("broken")
    assert isinstance(again.value.__cause__, ModuleNotFoundError)


def test_exception_while_instantiating_is_a_load_error(make_plugin_dist):
    make_plugin_dist(
        "rm-raises", "raises", attr="Plugin",
        extra="\n    def __new__(cls):\n        raise RuntimeError('GPU required')\n",
    )
    with pytest.raises(PluginLoadError, match="GPU required") as info:
        get_reward_model("raises")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "rm-raises 1.0" in str(info.value)


def test_bad_entry_point_value_is_a_load_error(make_plugin_dist):
    make_plugin_dist("rm-typo", "typo", attr="no_such_attribute")
    with pytest.raises(PluginLoadError, match="no_such_attribute") as info:
        get_reward_model("typo")
    assert isinstance(info.value.__cause__, AttributeError)


# ------------------------------------------------------------------ not found


def test_unknown_name_lists_installed_and_suggests(make_plugin_dist):
    make_plugin_dist("rm-alpha", "alpha_ranking")
    with pytest.raises(PluginNotFoundError) as info:
        get_reward_model("alpha_rankin")
    message = str(info.value)
    assert "Did you mean 'alpha_ranking'?" in message
    installed = message.split("Installed:")[1]
    assert "alpha_ranking" in installed
    assert isinstance(info.value, LookupError) and isinstance(info.value, RMRegistryError)


def test_unknown_name_without_close_match_has_no_suggestion(make_plugin_dist):
    make_plugin_dist("rm-alpha", "alpha")
    with pytest.raises(PluginNotFoundError) as info:
        get_reward_model("zzzzzzzzzz")
    assert "Did you mean" not in str(info.value)
    assert "alpha" in str(info.value)


# ------------------------------------------------------------------ conflicts and duplicates


def test_two_distributions_same_name_never_resolve_silently(make_plugin_dist, monkeypatch):
    make_plugin_dist("rm-dup-one", "dup", version="1.0")
    one = make_plugin_dist.modules["dup"]
    make_plugin_dist("rm-dup-two", "dup", version="2.0")
    two = make_plugin_dist.modules["dup"]
    with pytest.raises(PluginConflictError) as info:
        get_reward_model("dup")
    message = str(info.value)
    assert "rm-dup-one 1.0" in message and "rm-dup-two 2.0" in message
    assert "distribution=" in message and "RM_REGISTRY_DISABLE" in message

    rows = [r for r in list_reward_models() if r.name == "dup"]
    assert sorted(r.distribution for r in rows) == ["rm-dup-one", "rm-dup-two"]
    assert {r.status for r in rows} == {"conflict"}

    # Choosing a distribution resolves it, each to its own object.
    first = get_reward_model("dup", distribution="rm-dup-one")
    second = get_reward_model("dup", distribution="rm_dup_two")  # normalised names match
    assert first is not second
    assert (type(first).__module__, type(second).__module__) == (one, two)
    with pytest.raises(PluginNotFoundError, match="rm-dup-one, rm-dup-two"):
        get_reward_model("dup", distribution="rm-other")

    # Disabling one resolves it too.
    monkeypatch.setenv("RM_REGISTRY_DISABLE", "rm-dup-two")
    assert get_reward_model("dup") is first
    assert _row("dup", "rm-dup-two").status == "disabled"


def test_same_distribution_twice_on_sys_path_is_not_a_conflict(make_plugin_dist, tmp_path):
    # An editable install shadowing a site install of the same distribution.
    make_plugin_dist("rm-twice", "twice", version="1.0", site=tmp_path / "editable")
    make_plugin_dist("rm-twice", "twice", version="0.9", site=tmp_path / "site")
    rows = [r for r in list_reward_models() if r.name == "twice"]
    assert len(rows) == 1
    assert rows[0].status == "available"
    # The first on sys.path wins, as for imports.
    assert rows[0].version == "0.9"
    assert get_reward_model("twice").name == "twice"


# ------------------------------------------------------------------ validation


def test_protocol_violations_are_all_named(make_plugin_dist):
    source = (
        "class Plugin:\n"
        "    name = 'other_name'\n"
        "    description = 'x'\n"
        "    model_class = None\n"
        "    collate = 42\n"
        "    def default_config(self): return {}\n"
        "    def validate_config(self, cfg): pass\n"
        "    def sample_data(self): return {}\n"
        "    def build_datasets(self, data_paths, tokenizer, cfg): return {}\n"
        "    def loss(self, rewards): return 0, {}\n"
        "    def evaluation_metrics(self, outputs, cfg): return {}\n"
        "plugin = Plugin()\n"
    )
    make_plugin_dist("rm-invalid", "invalid", version="2.1", source=source)
    module = make_plugin_dist.modules["invalid"]
    with pytest.raises(PluginValidationError) as info:
        get_reward_model("invalid")
    message = str(info.value)
    assert "rm-invalid 2.1" in message and f"invalid = {module}:plugin" in message
    assert "missing member(s): score_outputs" in message
    assert "'collate' must be a method" in message
    assert "name is 'other_name' but the entry point is named 'invalid'" in message
    assert "'loss' cannot be called as loss(rewards, batch, cfg)" in message
    assert _row("invalid").status == "broken"


def test_validation_does_not_resolve_model_class(make_plugin_dist):
    make_plugin_dist(
        "rm-lazy", "lazy",
        extra="\nPlugin.model_class = property(lambda self: 1 / 0)\n",
    )
    plugin = get_reward_model("lazy")  # would raise ZeroDivisionError if model_class were read
    with pytest.raises(ZeroDivisionError):
        plugin.model_class


def test_a_class_entry_point_is_instantiated_once(make_plugin_dist):
    make_plugin_dist("rm-cls", "cls_plugin", attr="Plugin")
    module = make_plugin_dist.modules["cls_plugin"]
    first = get_reward_model("cls_plugin")
    assert type(first).__name__ == "Plugin"
    assert get_reward_model("cls_plugin") is first
    assert sys.modules[module].INSTANCES == 1


# ------------------------------------------------------------------ disabling


@pytest.mark.parametrize("disable", ["gamma", "rm-gamma", "RM_Gamma", "other, gamma "])
def test_disabled_plugins_are_never_imported(make_plugin_dist, monkeypatch, disable):
    # The module raises on import: a disabled plugin must not be imported at all.
    make_plugin_dist("rm-gamma", "gamma", source="raise RuntimeError('imported!')\n")
    module = make_plugin_dist.modules["gamma"]
    monkeypatch.setenv("RM_REGISTRY_DISABLE", disable)
    row = _row("gamma")
    assert row.status == "disabled"
    with pytest.raises(PluginDisabledError) as info:
        get_reward_model("gamma")
    message = str(info.value)
    assert "RM_REGISTRY_DISABLE" in message and "re-enable" in message
    assert module not in sys.modules
    monkeypatch.delenv("RM_REGISTRY_DISABLE")
    with pytest.raises(PluginLoadError, match="imported!"):
        get_reward_model("gamma")


# ------------------------------------------------------------------ in-process registration


def test_register_get_unregister(fake_plugin_cls):
    plugin = register_reward_model(fake_plugin_cls("fake_inproc"))
    assert get_reward_model("fake_inproc") is plugin
    row = _row("fake_inproc")
    assert (row.status, row.distribution) == ("registered", "<in-process>")
    with pytest.raises(PluginConflictError, match="replace=True"):
        register_reward_model(fake_plugin_cls("fake_inproc"))
    replacement = register_reward_model(fake_plugin_cls("fake_inproc"), replace=True)
    assert get_reward_model("fake_inproc") is replacement
    unregister_reward_model("fake_inproc")
    with pytest.raises(PluginNotFoundError):
        get_reward_model("fake_inproc")
    with pytest.raises(PluginNotFoundError, match="registered in-process"):
        unregister_reward_model("fake_inproc")


def test_register_accepts_a_class(fake_plugin_cls):
    plugin = register_reward_model(fake_plugin_cls)
    assert isinstance(plugin, fake_plugin_cls)
    assert get_reward_model(plugin.name) is plugin


def test_register_validates(fake_plugin_cls):
    broken = fake_plugin_cls("fake_bad")
    broken.loss = "not callable"  # type: ignore[assignment]
    with pytest.raises(PluginValidationError, match="'loss' must be a method"):
        register_reward_model(broken)
    assert "fake_bad" not in {r.name for r in list_reward_models()}


def test_context_manager_undoes_and_restores(fake_plugin_cls):
    outer = register_reward_model(fake_plugin_cls("fake_ctx"))
    with registered_reward_model(fake_plugin_cls("fake_ctx"), replace=True) as inner:
        assert get_reward_model("fake_ctx") is inner
    assert get_reward_model("fake_ctx") is outer
    with registered_reward_model(fake_plugin_cls("fake_ctx2")) as temporary:
        assert get_reward_model("fake_ctx2") is temporary
    with pytest.raises(PluginNotFoundError):
        get_reward_model("fake_ctx2")
    with pytest.raises(KeyError), registered_reward_model(fake_plugin_cls("fake_ctx3")):
        raise KeyError("boom")
    assert "fake_ctx3" not in {r.name for r in list_reward_models()}


def test_shadowing_an_installed_plugin_needs_replace(make_plugin_dist, fake_plugin_cls):
    make_plugin_dist("rm-alpha", "alpha")
    with pytest.raises(PluginConflictError, match="rm-alpha 1.0"):
        register_reward_model(fake_plugin_cls("alpha"))
    with registered_reward_model(fake_plugin_cls("alpha"), replace=True) as mine:
        assert get_reward_model("alpha") is mine
        installed = get_reward_model("alpha", distribution="rm-alpha")
        assert installed is not mine and type(installed).__name__ == "Plugin"
        assert get_reward_model("alpha", distribution="<in-process>") is mine
        assert [r.status for r in list_reward_models() if r.name == "alpha"] == [
            "registered",
            "loaded",
        ]


# ------------------------------------------------------------------ rescan


def test_rescan_picks_up_installs_and_uninstalls(make_plugin_dist, tmp_path):
    site = tmp_path / "live_site"
    site.mkdir()
    sys.path.insert(0, str(site))
    list_reward_models()  # the scan happened before the "install"
    make_plugin_dist("rm-late", "late", site=site)  # rescans
    late = get_reward_model("late")
    rescan()
    assert get_reward_model("late") is late  # still installed: same object

    for dist_info in site.glob("rm_late-*.dist-info"):
        shutil.rmtree(dist_info)
    assert _row("late").status == "loaded"  # the scan is remembered until rescan()
    rescan()
    assert "late" not in {r.name for r in list_reward_models()}
    with pytest.raises(PluginNotFoundError):
        get_reward_model("late")


def test_rescan_retries_a_broken_plugin(make_plugin_dist):
    site = make_plugin_dist("rm-fixme", "fixme", extra="\nimport missing_dependency_abc\n")
    with pytest.raises(PluginLoadError, match="missing_dependency_abc"):
        get_reward_model("fixme")
    (site / "missing_dependency_abc.py").write_text("VALUE = 1\n")  # "pip install" the dependency
    with pytest.raises(PluginLoadError):  # the failure is remembered until rescan()
        get_reward_model("fixme")
    rescan()
    assert get_reward_model("fixme").name == "fixme"


# ------------------------------------------------------------------ conformance kit


def test_check_protocol_lists_every_problem(fake_plugin_cls, tmp_path):
    from rm_registry.testing import ConformanceError, check_protocol

    check_protocol(fake_plugin_cls("fake_ok"))
    check_protocol(fake_plugin_cls)  # a class is instantiated

    plugin = fake_plugin_cls("fake_kit")
    plugin.sample_data = lambda: {"train": tmp_path / "missing.jsonl"}  # type: ignore[method-assign]
    plugin.default_config = lambda: ["not", "a", "dict"]  # type: ignore[method-assign]
    plugin.description = ""
    with pytest.raises(ConformanceError) as info:
        check_protocol(plugin)
    assert isinstance(info.value, AssertionError) and isinstance(info.value, PluginValidationError)
    message = str(info.value)
    assert "'description' must be a non-empty str" in message
    assert "default_config() must return a dict, got list" in message
    assert "missing.jsonl' is not an existing file" in message


def test_check_plugin_skips_behaviour_when_engine_checks_are_missing(fake_plugin_cls, monkeypatch):
    from rm_registry.testing import ConformanceError, check_plugin

    check_plugin(fake_plugin_cls("fake_fast"), behaviour=False)
    monkeypatch.setitem(sys.modules, "rm_registry.engine._conformance", None)  # as if absent
    if _megatron_missing():
        with pytest.warns(UserWarning, match="megatron"):
            check_plugin(fake_plugin_cls("fake_nobehaviour"))
        return
    # model_class must be a class with from_config before behaviour checks can run.
    with pytest.raises(ConformanceError, match="from_config"):
        check_plugin(fake_plugin_cls("fake_dictmodel"))

    class WithModel(fake_plugin_cls):  # type: ignore[misc, valid-type]
        @property
        def model_class(self) -> type:
            class Model:
                @classmethod
                def from_config(cls, cfg, *, vocab_size):
                    return cls()

            return Model

    with pytest.warns(UserWarning, match="_conformance is not available"):
        check_plugin(WithModel("fake_withmodel"))


def _megatron_missing() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is None for m in ("torch", "megatron"))


def test_fake_distribution_is_a_real_installed_distribution(tmp_path, monkeypatch):
    import importlib.metadata

    from rm_registry.testing import fake_distribution

    site = fake_distribution(
        tmp_path, "rm-kit-demo", "4.5",
        {"kit_demo": "kit_demo_mod:plugin", "rm_registry_hooks": {"h": "kit_demo_hooks"}},
        {"kit_demo_mod": "plugin = None\n", "kit_demo_pkg/__init__.py": ""},
    )
    monkeypatch.syspath_prepend(str(site))
    dist = importlib.metadata.distribution("rm-kit-demo")
    assert dist.version == "4.5"
    groups = {(ep.group, ep.name, ep.value) for ep in dist.entry_points}
    assert groups == {
        ("reward_models", "kit_demo", "kit_demo_mod:plugin"),
        ("rm_registry_hooks", "h", "kit_demo_hooks"),
    }
    assert (site / "kit_demo_mod.py").is_file() and (site / "kit_demo_pkg" / "__init__.py").is_file()
