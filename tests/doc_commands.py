"""Shell commands of the docs: found, classified, and run as written (``tests/test_docs.py``).

Every fenced block of ``docs/*.md`` and ``README.md`` in ``bash``, ``sh``, ``shell`` or ``console``
(where only ``$ `` lines are commands), and every untagged block that starts like a command, must
be preceded by one of:

    <!-- run -->                       every command is run by the tests, as written
    <!-- check: REASON -->             launches that cannot run here (GPUs, nodes) but whose layout
                                       and config are checked, and why
    <!-- not run: REASON -->           not run here, and why (installs, placeholders ...)

How a ``run`` block is run (all blocks of one page in order, in one scratch folder holding the
files the docs use as examples: ``prefs.jsonl``, ``val.jsonl``, ``texts.jsonl``, ``steer.jsonl``,
``steer_val.jsonl``, ``steps.jsonl``, ``steps_val.jsonl``, ``solutions.jsonl`` (process rewards),
``rewardbench.jsonl`` (RewardBench's layout), and links to the checkout's ``plugins/`` and ``examples/``):

- ``rm-registry ARGS`` (also ``.venv/bin/rm-registry``, ``python -m rm_registry``): run for real,
  in one Python process for all pages (megatron-core is imported once); ``train`` gets a tiny
  model and 2 steps appended (:data:`TINY`), which win over the command's own values. Leading
  ``NAME=value`` words set environment variables. Exit status 0 expected.
- ``torchrun ... -m rm_registry train|evaluate|score ARGS`` (and ``rm-registry launch ...``): not launched (tests/distributed does
  real launches); the layout and, for ``train``, the whole config are checked for the process
  count the command asks for, which is where such an example fails as written. A ``train`` is
  then run in one process (tiny, tensor and pipeline parallelism 1) so that the commands after it find its
  run folder.
- in a ``check`` block, torchrun commands are checked as above and ``rm-registry`` commands are
  parsed, none is run.
- anything else in a ``run`` or ``check`` block is an error of the test: mark that block ``not run``.

``python tests/doc_commands.py PLAN.json`` is the driver the test starts: it runs the plan and
prints one JSON result per command.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHELL_LANGS = ("bash", "sh", "shell", "console")
_FENCE = re.compile(r"^(?P<marker><!--[^\n]*-->\n)?```(?P<lang>[\w-]*)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
_LOOKS_LIKE_SHELL = re.compile(r"^(\$ |rm-registry\b|\.venv/|pip\b|python3? |torchrun\b|[A-Z_]+=\S* )")

#: Appended to every ``train`` that is run: a tiny model, 2 steps, one validation and checkpoint.
TINY = [
    "model.num_layers=2", "model.hidden_size=32", "model.num_attention_heads=4", "model.encoder_seq_length=128",
    "model.micro_batch_size=4", "model.global_batch_size=8", "trainer.rm.max_steps=2",
    "trainer.rm.val_check_interval=2", "trainer.rm.save_interval=2", "--no-progress",
]


@dataclass
class Block:
    where: str  # page:line
    page: str
    lang: str
    marker: str | None  # "run", "not run", or None
    reason: str
    commands: list[str] = field(default_factory=list)


def _commands(lang: str, code: str) -> list[str]:
    """The commands of a block: ``$`` lines for console, every line otherwise; ``\\`` joins lines."""
    lines = _console_joined(code.splitlines()) if lang == "console" else code.splitlines()
    joined, buf = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        joined.append(buf + line)
        buf = ""
    return [c.strip() for c in joined if c.strip() and not c.strip().startswith("#")]


def _console_joined(lines: list[str]) -> list[str]:
    """Console lines: a ``$`` line and the continuation lines that follow its trailing ``\\``."""
    out, continuing = [], False
    for line in lines:
        if line.startswith("$ "):
            out.append(line[2:])
            continuing = line.rstrip().endswith("\\")
        elif continuing:
            out.append(line)
            continuing = line.rstrip().endswith("\\")
    return out


def blocks(pages: list[Path] | None = None) -> list[Block]:
    """Every shell block of the docs (and the README), with its marker."""
    found = []
    for page in pages or [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for m in _FENCE.finditer(text):
            lang, code = m.group("lang"), m.group("code")
            first = next((line for line in code.splitlines() if line.strip()), "")
            if lang not in SHELL_LANGS and not (lang == "" and _LOOKS_LIKE_SHELL.match(first)):
                continue
            raw = (m.group("marker") or "").strip()
            marker, reason = None, ""
            if raw == "<!-- run -->":
                marker = "run"
            elif raw.startswith("<!-- not run:"):
                marker, reason = "not run", raw[len("<!-- not run:"):-len("-->")].strip()
            elif raw.startswith("<!-- check:"):
                marker, reason = "check", raw[len("<!-- check:"):-len("-->")].strip()
            line = text.count("\n", 0, m.start("code")) + 1
            found.append(Block(f"{page.name}:{line}", page.name, lang, marker, reason, _commands(lang, code)))
    return found


def _split(command: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(command, comments=True)
    env = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def kind(command: str) -> str:
    """``cli`` (run in-process), ``torchrun`` (layout and config checked) or ``other`` (not runnable)."""
    _, words = _split(command)
    if not words:
        return "other"
    if words[0] in ("rm-registry", ".venv/bin/rm-registry") and words[1:2] == ["launch"]:
        return "torchrun"  # the same launch, through rm-registry
    if words[0] in ("rm-registry", ".venv/bin/rm-registry") or words[:3] in (["python", "-m", "rm_registry"],
                                                                             ["python3", "-m", "rm_registry"]):
        return "cli"
    if words[0] == "torchrun" and "-m" in words and words[words.index("-m") + 1] == "rm_registry":
        return "torchrun"
    return "other"


def _launch_parts(command: str) -> tuple[list[str], list[str]]:
    """``(launcher options, rm-registry arguments)`` of ``torchrun ... -m rm_registry ARGS`` or
    ``rm-registry launch OPTIONS COMMAND ARGS``."""
    _, words = _split(command)
    if words[0] == "torchrun":
        at = words.index("-m")
        return words[1:at], words[at + 2:]
    at = next(i for i, w in enumerate(words) if w in ("train", "evaluate", "score"))
    return words[2:at], words[at:]


def cli_args(command: str) -> tuple[dict[str, str], list[str]]:
    env, words = _split(command)
    args = words[1:] if words[0] != "python" and words[0] != "python3" else words[3:]
    if args and args[0] == "train":
        args = [*args, *TINY]
    return env, args


# ----------------------------------------------------------------------------------- the driver


def prepare(folder: Path) -> None:
    """The example files the docs name, in a scratch folder (taken from the shipped sample data)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    br = REPO / "plugins" / "binary_ranking" / "src" / "rm_binary_ranking" / "data"
    rg = REPO / "plugins" / "regression" / "src" / "rm_regression" / "data"
    shutil.copy(br / "train.jsonl", folder / "prefs.jsonl")
    shutil.copy(br / "validation.jsonl", folder / "val.jsonl")
    shutil.copy(rg / "train.jsonl", folder / "steer.jsonl")
    shutil.copy(rg / "validation.jsonl", folder / "steer_val.jsonl")
    pr = REPO / "plugins" / "process_reward" / "src" / "rm_process_reward" / "data"
    shutil.copy(pr / "train.jsonl", folder / "steps.jsonl")
    shutil.copy(pr / "validation.jsonl", folder / "steps_val.jsonl")
    solutions = [{"prompt": "Get from the hall to the gate.\n", "completions": ["walk to the desk", "fly to the gate"]},
                 {"input": "Get from the hall to the gate.\nwalk to the desk ки\nhop to the gate ки"}]
    (folder / "solutions.jsonl").write_text("".join(json.dumps(t) + "\n" for t in solutions), encoding="utf-8")
    texts = [{"text": "User: What is 2+2?\nAssistant: 4, happy to help!"},
             {"prompt": "User: Hi!\nAssistant: ", "response": "Hello, how can I help?"}]
    (folder / "texts.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
    # RewardBench's layout, from the validation pairs, two rows in each of its 23 subsets
    from rm_registry.engine.evaluation.benchmarks._rewardbench import EXAMPLE_COUNTS

    pairs = [json.loads(line) for line in (br / "validation.jsonl").read_text(encoding="utf-8").splitlines()]
    subsets = list(EXAMPLE_COUNTS)
    rows = [{"id": i, "prompt": p["prompt"].removeprefix("User: ").removesuffix("\nAssistant: "), "chosen": p["chosen"],
             "rejected": p["rejected"], "subset": subsets[i % len(subsets)]} for i, p in enumerate(pairs[:46])]
    (folder / "rewardbench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for name in ("plugins", "examples"):
        if not (folder / name).exists():
            (folder / name).symlink_to(REPO / name)


def _run_cli(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    from rm_registry import _cli, rescan

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    rescan()
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = _cli.main(args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        rescan()
    return code, err.getvalue()[-2000:]


def _launched_args(command: str) -> list[str]:
    """What each launched process runs (``rm-registry ARGS``)."""
    return _launch_parts(command)[1]


def _parse_only(args: list[str]) -> tuple[int, str]:
    """Whether the CLI accepts these arguments (options and overrides parsed, nothing run)."""
    from rm_registry import _cli

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            _cli.build_parser(args[0] if args else None).parse_known_args(args)
    except SystemExit as exc:
        return int(exc.code or 0), err.getvalue()
    return 0, ""


def _check_torchrun(command: str) -> tuple[int, str]:
    """The layout and (for train) the config of a torchrun command, for its process count."""
    from rm_registry import ConfigError, RMRegistryError, get_reward_model
    from rm_registry.engine.config import build_config, parse_overrides, validate_engine_config
    from rm_registry.engine.config._checks import check_parallel_sizes

    launcher, args = _launch_parts(command)
    opts = dict(zip(launcher[::2], launcher[1::2]))
    world = int(opts.get("--nproc-per-node", 1)) * int(opts.get("--nnodes", 1))
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        if args[0] == "train":
            name = args[1] if len(args) > 1 and not args[1].startswith("-") and "=" not in args[1] else "binary_ranking"
            cfg = build_config(get_reward_model(name), overrides=overrides)
            check_parallel_sizes(int(cfg.model.tensor_model_parallel_size), int(cfg.model.pipeline_model_parallel_size),
                                  world)
            validate_engine_config(cfg, world_size=world)
        else:
            layer = parse_overrides(overrides)
            tp = int(layer.get("model", {}).get("tensor_model_parallel_size", 1))
            check_parallel_sizes(tp, int(layer.get("model", {}).get("pipeline_model_parallel_size", 1)), world)
    except (ConfigError, RMRegistryError) as exc:
        return 2, str(exc)
    return 0, ""


def run_plan(plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    home = Path.cwd()
    for item in plan:
        folder = Path(item["folder"])
        prepare(folder)
        os.chdir(folder)
        try:
            if item["kind"] == "cli" and item["marker"] == "check":
                code, err = _parse_only(cli_args(item["command"])[1])
            elif item["kind"] == "cli":
                env, args = cli_args(item["command"])
                code, err = _run_cli(args, env)
            else:
                code, err = _check_torchrun(item["command"])
                if code == 0 and item["marker"] == "run" and _launched_args(item["command"])[0] == "train":
                    code, err = _run_cli([*_launched_args(item["command"]), *TINY,
                                          "model.tensor_model_parallel_size=1", "model.pipeline_model_parallel_size=1"], {})
        except Exception as exc:  # a crash is a failure of that command, reported with the others
            code, err = 99, f"{type(exc).__name__}: {exc}"
        finally:
            os.chdir(home)
        results.append({**item, "code": code, "stderr": err})
    return results


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    outcome = run_plan(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
    print(json.dumps(outcome))
