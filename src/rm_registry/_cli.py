"""The ``rm-registry`` command line (also ``python -m rm_registry``).

Exit codes: 0 success, 1 a failed check or a failed run (also a full disk or a folder that
cannot be written), 2 bad usage or bad input, 130 interrupted (SIGINT), 143 stopped by SIGTERM.
Errors of ours are printed as one line, ``rm-registry: error: ...``.

``list`` imports neither torch nor any plugin. The engine's subcommands (``train``, ``evaluate``,
``score``) come from ``rm_registry._engine_cli``; installed distributions add more through the
``rm_registry_add_commands`` hook.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Any, Callable, Sequence, TextIO

from . import _hooks, _registry, _signals
from ._errors import (
    ConfigError,
    DataError,
    PluginConflictError,
    PluginDisabledError,
    PluginLoadError,
    PluginNotFoundError,
    RMRegistryError,
)
from ._version import __version__

__all__ = ["main", "build_parser"]

PROG = "rm-registry"

#: Our errors that mean "bad input" (exit 2); every other RMRegistryError exits 1.
_BAD_INPUT = (ConfigError, DataError, PluginNotFoundError, PluginDisabledError, PluginConflictError)

_EPILOG = """\
exit codes: 0 success, 1 a check or run failed (or a write failed: disk full, no permission),
  2 bad usage or bad input, 130 interrupted (Ctrl-C, SIGINT), 143 stopped by SIGTERM.

environment:
  RM_REGISTRY_DISABLE   comma-separated plugin or distribution names never to import
                        (e.g. RM_REGISTRY_DISABLE=rm-broken-plugin,regression)

examples:
  rm-registry list                   installed architectures (imports none of them)
  rm-registry info regression        description and default config of one
  rm-registry check                  conformance checks of every installed plugin
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _error(message: object, stream: TextIO | None = None) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=stream or sys.stderr)


# ----------------------------------------------------------------------------------- list


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    )


def _cmd_list(args: argparse.Namespace) -> int:
    infos = _registry.list_reward_models()
    if args.json:
        import json  # here, not at the top: the table needs no json

        print(json.dumps([info.as_dict() for info in infos], indent=2))
        return 0
    if not infos:
        print(
            "No reward models installed. Install a plugin distribution "
            "(for example `pip install rm-regression`)."
        )
        return 0
    header = ["NAME", "DISTRIBUTION", "VERSION", "STATUS", "ENTRY POINT"]
    rows = [[i.name, i.distribution, i.version, i.status, i.entry_point] for i in infos]
    print(_table([header, *rows]))
    problems = [i for i in infos if i.error]
    if problems:
        print()
        for info in problems:
            print(f"{info.name} ({info.distribution}): {info.status}: {_one_line(info.error)}")
    return 0


# ----------------------------------------------------------------------------------- info


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    plugin = _registry.get_reward_model(args.name, distribution=args.distribution)
    if args.config:
        # The whole tree a run starts from (engine defaults + this plugin's), as YAML: every key
        # `train` accepts, and a starting point for `train --config FILE`.
        from .engine.config import build_config, to_yaml

        print(to_yaml(build_config(plugin)), end="")
        return 0
    info = _registry.plugin_info(args.name, args.distribution)
    where = f"plugin {info.name!r} ({info.distribution} {info.version}, entry point {info.entry_point})"
    try:
        defaults = plugin.default_config()
    except Exception as exc:  # the plugin's own code failed: name it, no traceback
        raise PluginLoadError(f"{where}: default_config() raised {type(exc).__name__}: {exc}") from exc
    try:
        description = plugin.description
    except Exception as exc:
        raise PluginLoadError(f"{where}: its description raised {type(exc).__name__}: {exc}") from exc
    data: dict[str, Any] = {
        "name": info.name,
        "distribution": info.distribution,
        "version": info.version,
        "entry_point": info.entry_point,
        "status": info.status,
        "description": description,
        "defaults": defaults,
    }
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for key in ("name", "distribution", "version", "entry_point", "status", "description"):
        print(f"{key.replace('_', ' ') + ':':14}{data[key]}")
    print("defaults:")  # as YAML, the form of `info --config` and of `train --config FILE`
    try:
        import yaml  # PyYAML, with the [megatron] extra (OmegaConf needs it)

        text = yaml.safe_dump(json.loads(json.dumps(defaults, default=str)), sort_keys=False,
                              default_flow_style=False).rstrip()
    except ImportError:  # the core alone: JSON, which is YAML too
        text = json.dumps(defaults, indent=2, default=str)
    print("\n".join("  " + line for line in text.splitlines()))
    return 0


# ----------------------------------------------------------------------------------- check


def _cmd_check(args: argparse.Namespace) -> int:
    from . import testing
    from .engine import _warnings as _engine_warnings  # no torch: only the warning filters

    infos = _registry.list_reward_models()
    if args.names:
        known = {info.name for info in infos}
        for name in args.names:
            if name not in known:
                raise _registry.not_found_error(name)
        infos = [info for info in infos if info.name in args.names]
    if not infos:
        print("No reward models installed; nothing to check.")
        return 0
    providers: dict[str, set[str]] = {}
    for info in infos:
        if info.status != "disabled":
            providers.setdefault(info.name, set()).add(info.distribution)
    failures = 0
    for info in infos:
        label = f"{info.name} ({info.distribution} {info.version})".replace(" )", ")")
        if info.status == "disabled" and not args.names:
            print(f"SKIP {label}: {_one_line(info.error)}")
            continue
        reasons = []
        others = providers.get(info.name, set()) - {info.distribution, _registry.IN_PROCESS}
        if others and info.distribution != _registry.IN_PROCESS:
            reasons.append(
                f"conflict: {info.name!r} is also provided by {', '.join(sorted(others))}; "
                f"get_reward_model({info.name!r}) fails until one is uninstalled or disabled "
                f"with {_registry.DISABLE_ENV}"
            )
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                # ... except megatron-core's and torch's known-harmless ones (dozens per plugin).
                _engine_warnings.install()
                plugin = _registry.get_reward_model(info.name, distribution=info.distribution)
                report = testing.check_plugin(plugin, behaviour=not args.protocol_only)
            notes = [_one_line(w.message) for w in caught]
            if report.optional_members:
                notes.insert(0, f"optional members: {', '.join(report.optional_members)}")
        except RMRegistryError as exc:
            reasons.append(str(exc) if isinstance(exc, testing.ConformanceError) else _one_line(exc))
            notes = []
        except Exception as exc:  # a plugin method crashing is a failed check, not our crash
            reasons.append(f"{type(exc).__name__}: {exc}")
            notes = []
        if reasons:
            failures += 1
            print(f"FAIL {label}")
            for reason in reasons:
                print("  " + reason.replace("\n", "\n  "))
        else:
            print(f"ok   {label}")
            for note in notes:
                print(f"  note: {note}")
    if failures:
        print(f"{failures} of {len(infos)} plugin(s) failed.", file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------- parser


def _engine_unavailable(reason: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        _error(f"`{args.command}` needs the engine CLI, which is not available: {reason}")
        return 1

    return handler


def _add_engine_commands(sub: argparse._SubParsersAction) -> None:
    try:
        _engine_cli = importlib.import_module("rm_registry._engine_cli")
    except Exception as exc:  # absent or broken: everything else keeps working
        reason = f"cannot import rm_registry._engine_cli ({type(exc).__name__}: {exc})"
        for command in ("train", "evaluate", "score", "export"):
            parser = sub.add_parser(
                command,
                help=f"{command} (unavailable: the engine CLI could not be imported)",
                add_help=False,
            )
            parser.set_defaults(func=_engine_unavailable(reason), accepts_anything=True)
        return
    _engine_cli.add_subcommands(sub)


#: The built-in subcommands; the engine's (train, evaluate, score) and hook-added ones come after.
_BUILTIN_COMMANDS = ("list", "info", "check")


def _add_list(sub: argparse._SubParsersAction) -> None:
    p_list = sub.add_parser(
        "list",
        help="list installed reward models (imports none of them)",
        description="List every installed or registered reward model with its distribution, "
        "version, status (available, loaded, broken, disabled, conflict, registered) and entry "
        "point. Imports no plugin code.",
    )
    p_list.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p_list.set_defaults(func=_cmd_list)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p_info = sub.add_parser(
        "info",
        help="show one reward model: distribution, description, default config",
        description="Load one reward model and show its distribution, version, entry point, "
        "description and default configuration.",
    )
    p_info.add_argument("name", help="registry name, e.g. regression")
    p_info.add_argument(
        "--distribution", help="pick this distribution when several provide NAME", default=None
    )
    p_info.add_argument("--json", action="store_true", help="print a JSON object")
    p_info.add_argument(
        "--config",
        action="store_true",
        help="print the full default config (engine + plugin) as YAML: every key `train` accepts "
        "(needs the [megatron] extra)",
    )
    p_info.set_defaults(func=_cmd_info)


def _add_check(sub: argparse._SubParsersAction) -> None:
    p_check = sub.add_parser(
        "check",
        help="load, validate and run the conformance checks of plugins",
        description="Load and validate reward models and run rm_registry.testing.check_plugin "
        "on each (behaviour checks need the [megatron] extra). Exit 1 when any fails.",
    )
    p_check.add_argument("names", nargs="*", metavar="NAME", help="plugins to check (default: all)")
    p_check.add_argument(
        "--protocol-only",
        action="store_true",
        help="check the protocol only, skip the behaviour checks (fast, no torch)",
    )
    p_check.set_defaults(func=_cmd_check)


_ADD_BUILTIN: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "list": _add_list,
    "info": _add_info,
    "check": _add_check,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser: built-in, engine and hook-provided subcommands.

    Args:
        command: When it names a built-in command (``list``, ``info``, ``check``), only that
            subcommand is built besides the hook-provided ones (the engine CLI is then not even
            imported): enough to parse a command line starting with it, and cheaper. Anything
            else (``None``, an engine or hook command, a typo) builds every subcommand, as
            ``--help`` and "invalid choice" errors must name them all.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "An open registry of reward-model architectures for RLHF. Architectures are "
            "installed as separate distributions (entry-point group `reward_models`) and "
            "discovered at run time."
        ),
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    if command in _ADD_BUILTIN:
        _ADD_BUILTIN[command](sub)
    else:
        for name in _BUILTIN_COMMANDS:
            _ADD_BUILTIN[name](sub)
        _add_engine_commands(sub)
    _hooks.call_add_commands(sub)
    return parser


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    text = _one_line(message).removeprefix(f"{PROG}: ")
    print(f"{PROG}: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        engine_warnings = sys.modules.get("rm_registry.engine._warnings")
        if engine_warnings is not None:
            # The engine installs these when first imported; a previous main() in this process
            # may have imported it inside its own catch_warnings, which dropped them on exit.
            engine_warnings.install()
        _signals.die_with_launcher()
        try:
            with _signals.stop_on_signals():
                try:
                    return _main(argv)
                except (_signals.Stopped, KeyboardInterrupt, SystemExit):
                    raise
                except BaseException:  # also torch DCP's CheckpointException, a BaseException
                    _signals.grace_for_stop()  # our signal came (or, under torchrun, is coming)
                    raise
        except _signals.Stopped as exc:  # SIGTERM or SIGINT: one line (from rank 0 under torchrun)
            from .engine._launch import first_process  # cheap: no torch

            if first_process():
                print(f"{PROG}: {exc.message()}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # `rm-registry list | head`
            return 0


def _main(argv: Sequence[str] | None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    try:
        # A command line starting with a built-in command needs only that subparser.
        parser = build_parser(argv[0] if argv else None)
        args, extras = parser.parse_known_args(argv)
        if extras and not getattr(args, "accepts_anything", False):
            # KEY=VALUE overrides may stand anywhere among the options (argparse alone would
            # refuse those after an option); anything else is a usage error as usual.
            if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extras):
                from ._habits import flag_hint

                hint = flag_hint(extras)  # `train --max_steps 5`, as in TRL
                if hint:
                    raise ConfigError(hint)
                parser.parse_args(argv)  # prints the usage error and exits 2
            args.overrides = [*args.overrides, *extras]
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except _BAD_INPUT as exc:
        _error(exc)
        return 2
    args.raw_argv = list(argv)  # for commands that pass their arguments on (`launch`)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except _BAD_INPUT as exc:
        _error(exc)
        return 2
    except RMRegistryError as exc:
        _error(exc)
        return 1
    except OSError as exc:  # disk full, no permission... not wrapped by the code that failed
        if exc.errno is None:
            raise
        _error(f"{exc.filename}: {exc.strerror}" if exc.filename else f"{exc.strerror or exc}")
        return 1
