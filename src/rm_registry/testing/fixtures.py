"""Shared pytest fixtures for a plugin's own tests (needs pytest and the ``[megatron]`` extra).

A plugin's ``tests/conftest.py`` names its plugin and imports these (or, in a top-level
conftest, ``pytest_plugins = ["rm_registry.testing.fixtures"]``)::

    import pytest

    from rm_registry.testing.fixtures import make_cfg, tokenizer, write_jsonl  # noqa: F401


    @pytest.fixture(scope="session")
    def plugin():
        from rm_my_plugin import plugin

        return plugin

Fixtures:
    tokenizer: the byte tokenizer (what the tiny default model uses), once per session.
    make_cfg: ``make_cfg("key=value", ...)``, the merged and validated run config of ``plugin``
        with overrides, built as the CLI builds it.
    write_jsonl: ``write_jsonl(records, name="data.jsonl")`` writes records (dicts, or raw strings
        written as they are) to a JSON Lines file in the test's ``tmp_path``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

__all__ = ["make_cfg", "tokenizer", "write_jsonl"]


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The byte tokenizer."""
    from rm_registry.engine.tokenizer import ByteTokenizer

    return ByteTokenizer()


@pytest.fixture()
def make_cfg(plugin: Any) -> Callable[..., Any]:
    """The merged, validated run config with ``key=value`` overrides (as the CLI builds it)."""
    from rm_registry.engine.config import build_config

    def make(*overrides: str) -> Any:
        return build_config(plugin, overrides=list(overrides))

    return make


@pytest.fixture()
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write records (dicts, or raw strings written as they are) to a JSON Lines file."""

    def write(records: list[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return path

    return write
