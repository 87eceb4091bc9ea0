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
])
def test_bad_settings_exit_2_in_one_line(served_run: dict[str, Any], flags: list[str], message: str) -> None:
    proc = run_cli("serve", "--checkpoint", str(served_run["checkpoint"]), *flags)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("rm-registry: error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
