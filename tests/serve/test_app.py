"""The app in-process over a really loaded checkpoint: a forward pass that raises answers its
request with 500 and the server goes on; the CLI refuses bad settings in one line."""

from __future__ import annotations

from typing import Any

import pytest
from cli_helpers import run_cli
from conftest import TEXTS, TOL

pytestmark = pytest.mark.slow


def test_failed_batch_answers_500_and_the_server_goes_on(served_run: dict[str, Any],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    from rm_registry.engine.api import load_reward_model
    from rm_registry.serve._app import build_app
    from rm_registry.serve._runner import ModelRunner
    from rm_registry.serve._service import ServeOptions, Service

    model = load_reward_model(served_run["checkpoint"])
    poison = model.encode("POISON")[0]
    real = model.rewards

    def rewards(token_ids: Any, **kwargs: Any) -> Any:
        if any(list(ids) == poison for ids in token_ids):
            raise RuntimeError("simulated out-of-memory")
        return real(token_ids, **kwargs)

    monkeypatch.setattr(model, "rewards", rewards)
    service = Service(ModelRunner(model), ServeOptions(max_wait_ms=0))
    with TestClient(build_app(service)) as client:
        bad = client.post("/get_reward", json={"query": ["POISON"]})
        assert bad.status_code == 500, bad.text
        assert "simulated out-of-memory" in bad.json()["error"]
        good = client.post("/get_reward", json={"query": TEXTS[:3]})
        assert good.status_code == 200
        assert max(abs(a - b) for a, b in zip(good.json()["rewards"], served_run["rewards"][:3])) <= TOL
        assert 'rm_registry_batches_total{outcome="error"} 1.0' in client.get("/metrics").text
    assert not service.ready  # shut down with the app


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-batch-tokens", "0"], "--max-batch-tokens=0"),
    (["--port", "70000"], "--port=70000"),
    (["--api-key", " "], "--api-key"),
    (["--max-padding-tokens", "-1"], "--max-padding-tokens=-1"),
])
def test_bad_settings_exit_2_in_one_line(served_run: dict[str, Any], flags: list[str], message: str) -> None:
    proc = run_cli("serve", "--checkpoint", str(served_run["checkpoint"]), *flags)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rm-registry: error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_the_batcher_starts_from_measured_warm_up_passes(served_run: dict[str, Any]) -> None:
    """The runner times a 1-token pass and an 8 x 128-token pass of the real model; the batcher's cost
    model starts from them (a fixed cost per pass worth some tokens, shown in /metrics)."""
    from starlette.testclient import TestClient

    from rm_registry.engine.api import load_reward_model
    from rm_registry.serve._app import build_app
    from rm_registry.serve._runner import ModelRunner
    from rm_registry.serve._batcher import PassCost
    from rm_registry.serve._service import ServeOptions, Service

    runner = ModelRunner(load_reward_model(served_run["checkpoint"]))
    (small, small_s), (large, large_s) = runner.warmup_passes
    assert small == 1 and large == 8 * min(128, runner.max_length) and small_s > 0 and large_s > 0
    service = Service(runner, ServeOptions(max_wait_ms=0))
    fitted = PassCost()
    for padded, seconds in runner.warmup_passes:
        fitted.observe(padded, seconds)
    assert service.batcher.pass_cost.overhead_tokens == fitted.overhead_tokens
    with TestClient(build_app(service)) as client:
        assert client.post("/get_reward", json={"query": TEXTS[:3]}).status_code == 200
        assert "rm_registry_pass_overhead_tokens " in client.get("/metrics").text
