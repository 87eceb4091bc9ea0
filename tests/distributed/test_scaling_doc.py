"""docs/scaling.md quotes the engine's error messages verbatim: keep them in step with the code."""

from __future__ import annotations

from pathlib import Path

import pytest

from rm_registry import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"


@pytest.mark.parametrize(("tp", "pp", "world"), [(1, 2, 2), (2, 1, 1)], ids=["pipeline", "tp-not-dividing"])
def test_quoted_layout_errors_are_the_real_ones(tp: int, pp: int, world: int) -> None:
    from rm_registry.engine.config._checks import check_parallel_sizes

    with pytest.raises(ConfigError) as err:
        check_parallel_sizes(tp, pp, world)
    assert f"rm-registry: error: {err.value}\n" in DOC.read_text(encoding="utf-8")
