"""Fixtures of the regression plugin tests: the real plugin, tokenizer and merged config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest


@pytest.fixture(scope="session")
def plugin() -> Any:
    from rm_regression import plugin

    return plugin


@pytest.fixture(scope="session")
def tokenizer() -> Any:
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
