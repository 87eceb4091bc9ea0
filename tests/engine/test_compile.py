"""``model.compile``: the backbone compiled in place gives the eager rewards and gradients, keeps
parameter names (checkpoints), and falls back with one warning where no compiler is found."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import pytest

pytestmark = pytest.mark.slow


def test_compiled_backbone_gives_the_eager_rewards_and_gradients(build_model: Callable[..., Any],
                                                                  tiny_cfg: Callable[..., Any]) -> None:
    import torch

    from rm_registry.engine.model import compile_backbone

    eager, compiled = build_model(), build_model()
    names = [n for n, _ in compiled.named_parameters()]
    assert compile_backbone(compiled, tiny_cfg(compile=True), torch.device("cpu"))
    assert [n for n, _ in compiled.named_parameters()] == names  # checkpoints keep their keys
    assert set(compiled.state_dict()) == set(eager.state_dict())
    for width in (7, 19, 32):  # dynamic shapes: several sequence lengths, one compilation
        tokens = torch.randint(0, 250, (3, width))
        lengths = torch.tensor([width, width - 2, 1])
        a, b = eager(tokens, lengths), compiled(tokens, lengths)
        assert torch.allclose(a, b, atol=1e-5), (a, b)
    a.sum().backward()
    b.sum().backward()
    for (name, p), (_, q) in zip(eager.named_parameters(), compiled.named_parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_without_a_compiler_one_warning_and_eager(build_model: Callable[..., Any], tiny_cfg: Callable[..., Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import torch

    from rm_registry.engine.model import compile_backbone

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    model = build_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not compile_backbone(model, tiny_cfg(compile=True), torch.device("cpu"))
    messages = [str(w.message) for w in caught if "model.compile" in str(w.message)]
    assert len(messages) == 1 and "no C++ compiler" in messages[0] and "without compiling" in messages[0]
    assert not compile_backbone(model, tiny_cfg(), torch.device("cpu"))  # off by default
