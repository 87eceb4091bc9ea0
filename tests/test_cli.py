"""The rm-registry command line: list, info, check, exit codes, hooks, laziness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rm_registry
from rm_registry import hookimpl, register_hooks
from rm_registry._cli import main

pytestmark = pytest.mark.usefixtures("clean_registry")


@pytest.fixture
def only_fake_plugins() -> None:
    """Keep `check` (no names) away from the real plugins installed in the venv."""

    class OnlyFakes:
        @hookimpl
        def rm_registry_allow_plugin(self, info):
            return info.entry_point.startswith("fake_")

    register_hooks(OnlyFakes(), name="only-fakes")

REPO_SRC = Path(rm_registry.__file__).resolve().parents[1]


def _subprocess(args: list[str], *sites: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RM_REGISTRY_DISABLE"}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, sites), str(REPO_SRC)])
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=60
    )


# ------------------------------------------------------------------ list


def test_list_table_and_json(make_plugin_dist, capsys):
    make_plugin_dist("rm-alpha", "alpha", version="1.4")
    module = make_plugin_dist.modules["alpha"]
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    header, *lines = out.splitlines()
    assert header.split() == ["NAME", "DISTRIBUTION", "VERSION", "STATUS", "ENTRY", "POINT"]
    assert ["alpha", "rm-alpha", "1.4", "available", f"{module}:plugin"] in [
        line.split() for line in lines
    ]

    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {
        "name": "alpha",
        "distribution": "rm-alpha",
        "version": "1.4",
        "entry_point": f"{module}:plugin",
        "status": "available",
        "error": None,
    } in rows


def test_list_explains_problem_rows(make_plugin_dist, monkeypatch, capsys):
    make_plugin_dist("rm-alpha", "alpha")
    monkeypatch.setenv("RM_REGISTRY_DISABLE", "alpha")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "alpha (rm-alpha): disabled: disabled by RM_REGISTRY_DISABLE" in out


def test_list_imports_neither_torch_nor_plugins(make_plugin_dist):
    site = make_plugin_dist("rm-alpha", "alpha")
    module = make_plugin_dist.modules["alpha"]
    code = (
        "import sys, json\n"
        "from rm_registry._cli import main\n"
        "code = main(['list'])\n"
        "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n"
    )
    out = _subprocess(["-c", code], site)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["code"] == 0
    assert "alpha" in out.stdout
    leaked = {"torch", "megatron", "omegaconf", module, "rm_regression", "rm_binary_ranking"}
    assert leaked.isdisjoint(result["modules"]), leaked & set(result["modules"])


def test_python_dash_m_works_the_same(make_plugin_dist):
    site = make_plugin_dist("rm-alpha", "alpha")
    out = _subprocess(["-m", "rm_registry", "list", "--json"], site)
    assert out.returncode == 0, out.stderr
    assert "alpha" in {row["name"] for row in json.loads(out.stdout)}
    version = _subprocess(["-m", "rm_registry", "--version"])
    assert (version.returncode, version.stdout.strip()) == (0, f"rm-registry {rm_registry.__version__}")


# ------------------------------------------------------------------ info


def test_info_text_and_json(make_plugin_dist, capsys):
    make_plugin_dist("rm-alpha", "alpha", version="2.0")
    module = make_plugin_dist.modules["alpha"]
    assert main(["info", "alpha", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "name": "alpha",
        "distribution": "rm-alpha",
        "version": "2.0",
        "entry_point": f"{module}:plugin",
        "status": "loaded",
        "description": "Fake reward model alpha for the rm-registry tests.",
        "defaults": {"model": {"alpha": {"scale": 1.0}}},
    }
    assert main(["info", "alpha"]) == 0
    out = capsys.readouterr().out
    assert "distribution: rm-alpha" in out and "description:  Fake reward model alpha" in out
    assert "    alpha:\n      scale: 1.0" in out  # the defaults as YAML, the form `info --config` prints


def test_info_picks_a_distribution_in_a_conflict(make_plugin_dist, capsys):
    make_plugin_dist("rm-dup-one", "dup")
    make_plugin_dist("rm-dup-two", "dup")
    assert main(["info", "dup"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rm-registry: error: reward model 'dup' is provided by 2 distributions")
    assert len(err.strip().splitlines()) == 1
    assert main(["info", "dup", "--distribution", "rm-dup-two", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["distribution"] == "rm-dup-two"


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["info", "alpah"], None, "Did you mean 'alpha'?"),
        (["info", "alpha"], "rm-alpha", "re-enable"),
    ],
)
def test_bad_input_exits_2_with_one_line(make_plugin_dist, monkeypatch, capsys, argv, env, expected):
    make_plugin_dist("rm-alpha", "alpha")
    if env:
        monkeypatch.setenv("RM_REGISTRY_DISABLE", env)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rm-registry: error: ") and expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_broken_plugin_exits_1_without_traceback(make_plugin_dist, capsys):
    make_plugin_dist("rm-broken", "broken", source="raise RuntimeError('plugin bug')\n")
    assert main(["info", "broken"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rm-registry: error: reward model 'broken' failed to load")
    assert "plugin bug" in err and "Traceback" not in err


# ------------------------------------------------------------------ check


def test_check_passes_for_conforming_plugins(make_plugin_dist, capsys):
    make_plugin_dist("rm-alpha", "alpha")
    assert main(["check", "--protocol-only", "alpha"]) == 0
    assert "ok   alpha (rm-alpha 1.0)" in capsys.readouterr().out


def test_check_fails_with_reasons(only_fake_plugins, make_plugin_dist, tmp_path, capsys):
    site = tmp_path / "site"
    make_plugin_dist("rm-alpha", "alpha", site=site)
    make_plugin_dist("rm-bad", "bad", site=site, extra="\nPlugin.description = ''\n")
    make_plugin_dist(
        "rm-badcfg", "badcfg", site=site,
        extra="\nPlugin.default_config = lambda self: {'model': {'x': object()}}\n",
    )
    make_plugin_dist("rm-broken", "broken", site=site, source="import nope_not_here\n")
    assert main(["check", "--protocol-only"]) == 1
    out = capsys.readouterr().out
    assert "ok   alpha" in out
    assert "FAIL bad (rm-bad 1.0)" in out and "'description' must be a non-empty str" in out
    assert "FAIL badcfg" in out and "JSON-serialisable" in out
    assert "FAIL broken" in out and "nope_not_here" in out
    # Naming only the good one passes.
    assert main(["check", "--protocol-only", "alpha"]) == 0


def test_check_unknown_name_is_bad_input(make_plugin_dist, capsys):
    make_plugin_dist("rm-alpha", "alpha")
    assert main(["check", "alpah"]) == 2
    assert "Did you mean 'alpha'?" in capsys.readouterr().err


def test_check_reports_conflicts_and_skips_disabled(only_fake_plugins, make_plugin_dist, monkeypatch, capsys):
    make_plugin_dist("rm-dup-one", "dup")
    make_plugin_dist("rm-dup-two", "dup")
    make_plugin_dist("rm-off", "off", source="raise RuntimeError('imported!')\n")
    monkeypatch.setenv("RM_REGISTRY_DISABLE", "off")
    assert main(["check", "--protocol-only", "dup", "off"]) == 1
    out = capsys.readouterr().out
    assert out.count("FAIL dup") == 2 and "also provided by" in out
    assert "FAIL off" in out and "RM_REGISTRY_DISABLE" in out
    assert main(["check", "--protocol-only"]) == 1  # the conflict is reported even once loaded
    out = capsys.readouterr().out
    assert out.count("FAIL dup") == 2 and "SKIP off" in out
    assert "SKIP regression" in out or "regression" not in out


# ------------------------------------------------------------------ usage, hooks, engine


def test_usage_exit_codes(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rm-registry {rm_registry.__version__}"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("list", "info", "check", "RM_REGISTRY_DISABLE", "exit codes"):
        assert word in out
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["list", "--bogus"]) == 2
    capsys.readouterr()


class Commands:
    @hookimpl
    def rm_registry_add_commands(self, subparsers):
        hello = subparsers.add_parser("hello", help="say hello")
        hello.add_argument("--who", default="world")
        hello.set_defaults(func=lambda args: print(f"hello {args.who}") or 0)
        stop = subparsers.add_parser("stop", help="interrupted")
        stop.set_defaults(func=self._interrupt)

    @staticmethod
    def _interrupt(args):
        raise KeyboardInterrupt


def test_hook_adds_commands_and_ctrl_c_is_130(capsys):
    register_hooks(Commands())
    assert main(["hello", "--who", "plugins"]) == 0
    assert capsys.readouterr().out == "hello plugins\n"
    assert main(["stop"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_failing_command_hook_does_not_break_the_cli(make_plugin_dist, capsys):
    make_plugin_dist("rm-alpha", "alpha")

    class Broken:
        @hookimpl
        def rm_registry_add_commands(self, subparsers):
            raise RuntimeError("bad hook")

    register_hooks(Broken(), name="broken-commands")
    assert main(["list"]) == 0
    captured = capsys.readouterr()
    assert "alpha" in captured.out
    assert "rm-registry: warning:" in captured.err and "broken-commands" in captured.err


def test_missing_engine_cli_gives_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rm_registry._engine_cli", None)  # as if absent
    assert main(["list"]) == 0
    assert main(["train", "--help"]) == 1  # the real one would print its help and exit 0
    err = capsys.readouterr().err
    assert "rm-registry: error: `train` needs the engine CLI" in err
    assert "rm_registry._engine_cli" in err
