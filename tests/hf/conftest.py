"""Fixtures of the Hugging Face interop tests: tiny random models of every family, saved once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``hf_folder(family, **options)``: a saved tiny model (cached per arguments for the session)."""
    from hf_models import save_tiny

    cache: dict[Any, Path] = {}

    def make(family: str, **options: Any) -> Path:
        key = (family, tuple(sorted(options.items(), key=lambda kv: kv[0])).__repr__())
        if key not in cache:
            cache[key] = save_tiny(tmp_path_factory.mktemp(family), family, **options)
        return cache[key]

    return make


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """``cli(*args)``: run ``rm-registry ARGS`` in this process; returns (exit code, stderr)."""
    from rm_registry._cli import main

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(list(args))
        return code, capsys.readouterr().err

    return run


@pytest.fixture(scope="session")
def parallel_info() -> Any:
    """megatron-core's parallel state for one process (TP=1)."""
    from rm_registry.engine import parallel

    return parallel.initialize(tensor_model_parallel_size=1, seed=1234)
