"""Shared fixtures: registry isolation and fake installed plugin distributions."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from rm_registry import _hooks, _registry, rescan
from rm_registry.testing import fake_distribution

_unique = itertools.count()

#: Source of a fake plugin module satisfying the protocol. ``model_class`` is resolved lazily
#: from a sibling module, as real plugins do with torch, so tests can see whether it was touched.
PLUGIN_SOURCE = '''\
from __future__ import annotations

import time

INSTANCES = 0


class Plugin:
    name = {name!r}
    description = "Fake reward model {name} for the rm-registry tests."

    def __init__(self) -> None:
        global INSTANCES
        INSTANCES += 1
        time.sleep({delay!r})  # widens the window for concurrent loads

    @property
    def model_class(self):
        from {module}_model import Model

        return Model

    def default_config(self):
        return {{"model": {{{name!r}: {{"scale": 1.0}}}}}}

    def validate_config(self, cfg):
        return None

    def sample_data(self):
        return {{}}

    def build_datasets(self, data_paths, tokenizer, cfg):
        return {{}}

    def collate(self, samples, pad_id):
        return {{"tokens": samples, "lengths": [len(s) for s in samples]}}

    def loss(self, rewards, batch, cfg):
        return sum(rewards), {{"n": float(len(rewards))}}

    def evaluation_metrics(self, outputs, cfg):
        return {{"loss": 0.0}}

    def score_outputs(self, rewards, cfg):
        return [{{"reward": float(r)}} for r in rewards]
{extra}
'''

MODEL_SOURCE = '''\
class Model:
    """Stands in for the torch module of a real plugin."""

    @classmethod
    def from_config(cls, cfg, *, vocab_size):
        return cls()
'''


class FakePlugin:
    """A minimal in-process plugin satisfying :class:`rm_registry.RewardModelPlugin`."""

    description = "In-process fake reward model."

    def __init__(self, name: str = "fake_inproc") -> None:
        self.name = name

    @property
    def model_class(self) -> type:
        return dict

    def default_config(self) -> dict[str, Any]:
        return {"model": {self.name: {}}}

    def validate_config(self, cfg: Any) -> None:
        return None

    def sample_data(self) -> dict[str, Path]:
        return {}

    def build_datasets(self, data_paths: Any, tokenizer: Any, cfg: Any) -> dict[str, Any]:
        return {}

    def collate(self, samples: Any, pad_id: int) -> dict[str, Any]:
        return {}

    def loss(self, rewards: Any, batch: Any, cfg: Any) -> tuple[float, dict[str, float]]:
        return 0.0, {}

    def evaluation_metrics(self, outputs: Any, cfg: Any) -> dict[str, Any]:
        return {"loss": 0.0}

    def score_outputs(self, rewards: Any, cfg: Any) -> list[dict[str, Any]]:
        return []


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore in-process registrations, hooks, ``sys.path`` and ``RM_REGISTRY_DISABLE`` after a test."""
    registered = _registry._snapshot()
    hooks = _hooks._snapshot()
    path = list(sys.path)
    monkeypatch.delenv(_registry.DISABLE_ENV, raising=False)
    rescan()
    try:
        yield
    finally:
        sys.path[:] = path
        _hooks._restore(hooks)
        _registry._restore(registered)


@pytest.fixture
def fake_plugin_cls() -> type[FakePlugin]:
    return FakePlugin


MakeDist = Callable[..., Path]


@pytest.fixture
def make_plugin_dist(tmp_path: Path, clean_registry: None) -> MakeDist:
    """Write a fake installed plugin distribution, put it on ``sys.path`` and rescan.

    Call as ``make_plugin_dist("rm-alpha", "alpha", version=..., attr="plugin" | "Plugin",
    source=<module source overriding the valid one>, extra=<code appended to the module>,
    entry_points=<extra groups>, site=<folder>, delay=<seconds in __init__>)``. Returns the
    site folder; the plugin's module name is unique per call and stored as ``.module`` on the
    returned path's ``modules`` dict under the plugin name.
    """

    def make(
        dist: str,
        name: str,
        *,
        version: str = "1.0",
        attr: str = "plugin",
        source: str | None = None,
        extra: str = "",
        entry_points: dict[str, Any] | None = None,
        site: Path | None = None,
        delay: float = 0.0,
        value: str | None = None,
    ) -> Path:
        module = f"fake_{name}_{next(_unique)}_{os.getpid()}"
        site = site or tmp_path / f"site_{module}"
        body = source if source is not None else PLUGIN_SOURCE.format(
            name=name, module=module, delay=delay, extra=extra
        )
        if source is None and attr == "plugin":
            body += "\nplugin = Plugin()\n"
        eps: dict[str, Any] = {name: value or f"{module}:{attr}"}
        eps.update(entry_points or {})
        fake_distribution(
            site, dist, version, eps, {module: body, f"{module}_model": MODEL_SOURCE}
        )
        if str(site) not in sys.path:
            sys.path.insert(0, str(site))
        rescan()
        made[name] = module
        return site

    made: dict[str, str] = {}
    make.modules = made  # type: ignore[attr-defined]
    return make


@pytest.fixture
def launches() -> Iterator[list[Any]]:
    """Append each :class:`cli_helpers.Launch` started by the test: every process of its session is
    SIGKILLed in teardown, whatever the test's outcome."""
    started: list[Any] = []
    yield started
    for launch in started:
        launch.kill_all()
