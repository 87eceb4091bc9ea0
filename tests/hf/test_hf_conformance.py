"""The conformance kit's Hugging Face export round trip: passes for a plugin that only chooses K
and the head, fails (naming the parameter) for one whose model adds parameters HF cannot hold."""

from __future__ import annotations

from typing import Any

import pytest
import torch


pytestmark = pytest.mark.slow  # trains tiny runs / full conformance checks (seconds each)

class _Proxy:
    """The binary_ranking plugin with another model class."""

    def __init__(self, model_class: type) -> None:
        from rm_binary_ranking import plugin

        self._plugin, self._model_class = plugin, model_class

    @property
    def model_class(self) -> type:
        return self._model_class

    def __getattr__(self, name: str) -> Any:
        return getattr(self._plugin, name)


def test_export_round_trip_refuses_a_model_with_extra_parameters() -> None:
    from rm_binary_ranking import plugin

    from rm_registry.engine._conformance import check_behaviour

    class Scaled(plugin.model_class):  # type: ignore[misc, name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return super().forward(tokens, lengths) * self.scale

    with pytest.raises(AssertionError, match="Hugging Face export round trip failed: parameter 'scale'"):
        check_behaviour(_Proxy(Scaled), checkpoint=False)  # type: ignore[arg-type]


def test_export_round_trip_passes_for_a_plugin_with_k_outputs() -> None:
    from rm_regression import plugin

    from rm_registry.engine._conformance import check_behaviour

    check_behaviour(plugin, checkpoint=False)
