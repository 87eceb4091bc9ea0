"""Fixtures of the binary_ranking plugin tests: the real plugin, plus rm_registry's shared plugin fixtures
(``tokenizer``, ``make_cfg``, ``write_jsonl``: see rm_registry.testing.fixtures)."""

from __future__ import annotations

from typing import Any

import pytest

from rm_registry.testing.fixtures import make_cfg, tokenizer, write_jsonl  # noqa: F401 (shared fixtures)


@pytest.fixture(scope="session")
def plugin() -> Any:
    from rm_binary_ranking import plugin

    return plugin
