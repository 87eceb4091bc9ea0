"""`torchrun --nproc-per-node 2 -m rm_registry serve ... model.tensor_model_parallel_size=2`: rank 0 serves,
rank 1 follows its batches; the rewards equal one process's."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from conftest import TEXTS, TOL, Server

pytestmark = pytest.mark.slow


def test_tp2_server_equals_one_process(served_run: dict[str, Any]) -> None:
    srv = Server(["--checkpoint", str(served_run["checkpoint"]), "model.tensor_model_parallel_size=2"], nproc=2)
    try:
        for chunk in (TEXTS, TEXTS[:5], TEXTS[7:]):  # several batches, so rank 1 follows more than one
            r = httpx.post(f"{srv.url}/get_reward", json={"query": chunk}, timeout=120)
            assert r.status_code == 200, r.text
            want = served_run["rewards"][TEXTS.index(chunk[0]):][: len(chunk)]
            worst = max(abs(a - b) for a, b in zip(r.json()["rewards"], want))
            assert worst <= TOL, f"TP=2 rewards differ from one process by {worst:.2e}"
        text = "".join(srv.stderr)
        assert text.count("rm-registry serve: serving") == 1  # rank 0 only
        # SIGTERM to rank 0: it drains, releases rank 1, and the whole launch exits 0. (SIGTERM to torchrun
        # drains the same way, but torchrun itself then exits 1 by its own convention.)
        assert srv.serving_pid != srv.proc.pid
        assert srv.terminate(timeout=120, pid=srv.serving_pid) == 0, "".join(srv.stderr)[-3000:]
        assert "rm-registry serve: stopped" in "".join(srv.stderr)
    finally:
        srv.kill()
