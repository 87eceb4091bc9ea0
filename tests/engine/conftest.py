"""Fixtures of the engine tests: one parallel-state initialization per session, tiny configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

DEFAULTS = Path(__file__).resolve().parents[2] / "src" / "rm_registry" / "engine" / "config" / "defaults.yaml"
SEED = 1234


@pytest.fixture(scope="session")
def parallel_info() -> Iterator[Any]:
    """megatron-core's parallel state for one process (TP=1), initialized once per session."""
    from rm_registry.engine import parallel

    yield parallel.initialize(tensor_model_parallel_size=1, seed=SEED)


@pytest.fixture
def tiny_cfg() -> Callable[..., Any]:
    """``tiny_cfg(**model_overrides)``: the engine defaults with a 2-layer, hidden-32 model."""
    from omegaconf import OmegaConf

    def make(**overrides: Any) -> Any:
        cfg = OmegaConf.load(DEFAULTS)
        cfg.seed = SEED
        cfg.model.num_layers = 2
        cfg.model.hidden_size = 32
        cfg.model.num_attention_heads = 4
        cfg.model.encoder_seq_length = 32
        for key, value in overrides.items():
            OmegaConf.update(cfg, f"model.{key}", value, merge=False)
        return cfg

    return make


@pytest.fixture
def build_model(parallel_info: Any, tiny_cfg: Callable[..., Any]) -> Callable[..., Any]:
    """``build_model(num_outputs=1, seed=SEED, **model_overrides)``: a freshly seeded tiny model."""
    from rm_registry.engine import parallel
    from rm_registry.engine.model import RewardModel

    def make(num_outputs: int = 1, seed: int = SEED, **overrides: Any) -> Any:
        parallel.manual_seed(seed)
        return RewardModel.from_config(tiny_cfg(**overrides), vocab_size=258, num_outputs=num_outputs)

    return make
