"""The docs' examples run, and the README's commands are the ones CI runs.

A Python code block in ``docs/*.md`` that is meant to run is preceded by the line
``<!-- test -->``; each such block runs in a fresh interpreter (hooks and registrations are
process-wide, so blocks never share state). Every Python block of ``docs/hooks.md`` must be
marked: that page promises a runnable example per hook.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from doc_commands import blocks as shell_blocks
from doc_commands import kind

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

_FENCE = re.compile(r"^(?P<marker><!-- test -->\n)?```python\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)


def _blocks(page: Path) -> list[tuple[int, bool, str]]:
    """``(line, marked, code)`` for every ```python block of ``page``."""
    text = page.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start("code")) + 1, m.group("marker") is not None, m.group("code"))
        for m in _FENCE.finditer(text)
    ]


def _runnable() -> list[tuple[str, str]]:
    cases = []
    for page in sorted(DOCS.glob("*.md")):
        for line, marked, code in _blocks(page):
            if marked:
                cases.append((f"{page.name}:{line}", code))
    return cases


RUNNABLE = _runnable()


def test_hooks_page_has_one_runnable_example_per_hook_and_nothing_unmarked() -> None:
    blocks = _blocks(DOCS / "hooks.md")
    unmarked = [line for line, marked, _ in blocks if not marked]
    assert not unmarked, f"docs/hooks.md: python blocks at lines {unmarked} lack <!-- test -->"
    text = "\n".join(code for _, _, code in blocks)
    for hook in ("rm_registry_plugin_loaded", "rm_registry_allow_plugin", "rm_registry_add_commands"):
        assert f"def {hook}(" in text, f"docs/hooks.md has no runnable example of {hook}"


@pytest.mark.parametrize(("where", "code"), RUNNABLE, ids=[where for where, _ in RUNNABLE])
def test_doc_example_runs(where: str, code: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RM_REGISTRY_DISABLE", "PYTHONPATH")}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"docs/{where} failed:\n{proc.stdout}\n{proc.stderr}"


_EXCERPT = re.compile(r"^<!-- excerpt: (?P<path>\S+) -->\n```\w*\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)


def _excerpts() -> list[tuple[str, str, str]]:
    cases = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for m in _EXCERPT.finditer(text):
            cases.append((f"{page.name}:{text.count(chr(10), 0, m.start()) + 1}", m.group("path"), m.group("code")))
    return cases


EXCERPTS = _excerpts()


def test_tutorial_quotes_the_example_plugin() -> None:
    quoted = {path for _, path, _ in EXCERPTS}
    assert "examples/rm-hinge-ranking/src/rm_hinge_ranking/__init__.py" in quoted


@pytest.mark.parametrize(("where", "path", "code"), EXCERPTS, ids=[where for where, _, _ in EXCERPTS])
def test_doc_excerpt_is_verbatim_from_its_file(where: str, path: str, code: str) -> None:
    """A block marked ``<!-- excerpt: PATH -->`` must appear as it is in PATH: the docs never drift."""
    source = (REPO / path).read_text(encoding="utf-8")
    assert code in source, f"docs/{where}: the excerpt is not (any more) in {path}"


def _fenced_commands(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)\n```$", text, re.MULTILINE | re.DOTALL)


SETUP = (
    "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && "
    ".venv/bin/pip install -e '.[megatron,serve,test]' -e plugins/binary_ranking -e plugins/regression "
    "-e plugins/process_reward -e examples/rm-hinge-ranking"
)
MAIN_JOB = f"{SETUP} && .venv/bin/rm-registry train binary_ranking --output runs/quickstart"
#: The browser step: tests/evaluation opens the benchmark report in a real headless Chromium.
BROWSER = "(command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null)"
TESTS = f"{BROWSER} && {SETUP} && .venv/bin/python -m pytest"


def test_readme_gives_the_two_fresh_machine_commands() -> None:
    commands = _fenced_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert commands[:2] == [MAIN_JOB, TESTS]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert TESTS in ci
    assert os.access(REPO / ".ci" / "run", os.X_OK), ".ci/run must be executable"
    assert "set -euo pipefail" in ci


def test_docs_links_point_at_existing_files() -> None:
    missing = []
    for page in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(REPO)} -> {target}")
    assert not missing, "broken links: " + ", ".join(missing)


# ---------------------------------------------------------------------- shell commands of the docs
# Every shell command in the docs runs as written in the tests, or says why not (see doc_commands).


def test_every_shell_block_is_run_or_says_why_not() -> None:
    problems = []
    for block in shell_blocks():
        if block.lang not in ("bash", "sh", "shell", "console"):
            problems.append(f"{block.where}: a block of commands without a language: tag it ```bash (or ```console)")
        if block.marker is None:
            problems.append(f"{block.where}: mark it <!-- run --> (the tests run it), or <!-- not run: REASON -->")
        elif block.marker in ("not run", "check") and not block.reason:
            problems.append(f"{block.where}: <!-- {block.marker}: --> needs the reason")
        if block.marker in ("run", "check"):
            for command in block.commands:
                if kind(command) == "other":
                    problems.append(f"{block.where}: cannot run {command!r} here; mark the block <!-- not run: REASON -->")
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_doc_shell_commands_run_as_written(tmp_path: Path) -> None:
    """Run every ``run`` block (and check every ``check`` block), page by page, in one process."""
    import json

    plan = [{"where": b.where, "marker": b.marker, "command": c, "kind": kind(c),
             "folder": str(tmp_path / b.page.replace(".md", ""))}
            for b in shell_blocks() if b.marker in ("run", "check") for c in b.commands]
    assert len(plan) >= 20, plan  # the docs' commands were found
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = {k: v for k, v in os.environ.items() if k not in ("RM_REGISTRY_DISABLE", "PYTHONPATH")}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "doc_commands.py"), str(tmp_path / "plan.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = [f"docs/{r['where']}: exit {r['code']}: {r['command']}\n    {r['stderr'].strip()[-600:]}"
              for r in results if r["code"] != 0]
    assert not failed, "\n".join(failed)


def test_scaling_memory_table_is_the_estimate_s_output() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "memory_table.py")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in (DOCS / "scaling.md").read_text(encoding="utf-8"), (
        "docs/scaling.md's memory table differs from `python benchmarks/memory_table.py`; paste its output")


#: Where each command's options are documented (the synopsis and the text around it).
COMMAND_PAGES = {
    "train": ["engine.md"], "evaluate": ["engine.md", "evaluation.md"], "score": ["engine.md"],
    "export": ["engine.md", "pretrained.md"], "serve": ["serving.md"], "cache": ["data.md"],
    "launch": ["engine.md", "scaling.md"], "list": ["registry.md"], "info": ["registry.md"], "check": ["registry.md"],
}


def test_every_option_of_help_is_in_the_docs() -> None:
    """The docs' synopses keep up with `--help`: every option of every command appears on its page."""
    import argparse

    from rm_registry._cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, pages in COMMAND_PAGES.items():
        text = "".join((DOCS / p).read_text(encoding="utf-8") for p in pages)
        for action in sub.choices[name]._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help" and option not in text:
                    missing.append(f"{name} {option} ({', '.join(pages)})")
    assert not missing, "options of --help missing from the docs: " + "; ".join(missing)
