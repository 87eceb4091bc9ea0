"""docs/scaling.md quotes the engine's error messages verbatim: keep them in step with the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from rm_registry import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"


@pytest.mark.parametrize(("tp", "pp", "world"), [(2, 1, 1)], ids=["tp-not-dividing"])
def test_quoted_layout_errors_are_the_real_ones(tp: int, pp: int, world: int) -> None:
    from rm_registry.engine.config._checks import check_parallel_sizes

    with pytest.raises(ConfigError) as err:
        check_parallel_sizes(tp, pp, world)
    assert f"rm-registry: error: {err.value}\n" in DOC.read_text(encoding="utf-8")


def test_quoted_pipeline_error_is_the_real_one() -> None:
    from rm_registry import get_reward_model
    from rm_registry.engine.config import build_config

    with pytest.raises(ConfigError) as err:
        build_config(get_reward_model("binary_ranking"), overrides=["model.pipeline_model_parallel_size=3"])
    assert f"rm-registry: error: {err.value}\n" in DOC.read_text(encoding="utf-8")
