"""Shared by the serve tests: one tiny trained checkpoint, reference scores from `rm-registry score`,
and real `rm-registry serve` processes on loopback (ephemeral ports)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from cli_helpers import TINY, run_cli

#: Texts of varied lengths (so that length-sorted batches differ from input order); the last ones
#: are longer than model.encoder_seq_length=128 tokens and are cut to fit by score and serve alike.
PAIRS = [(f"Q{i}: what is {i % 7}+{i % 5}?", f" It is {i % 7 + i % 5 + i % 2}." + " Glad to help!" * (i % 5))
         for i in range(14)] + [("Tell me a long story. ", "Once upon a time " * 12), ("x" * 300, " y")]
TEXTS = [p + r for p, r in PAIRS]
TOL = 1e-5
STARTUP_TIMEOUT = 300.0
_LISTENING = re.compile(r"on http://127\.0\.0\.1:(\d+) \(pid (\d+),")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A real `rm-registry serve` process (or a torchrun launch of it) on 127.0.0.1, port picked by the OS."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, nproc: int = 1) -> None:
        base = {k: v for k, v in os.environ.items()
                if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "RM_REGISTRY_API_KEY")}
        base.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **(env or {}))
        if nproc == 1:
            cmd = [sys.executable, "-m", "rm_registry", "serve", "--port", "0", *args]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
                   "127.0.0.1", "--master-port", str(free_port()), "-m", "rm_registry", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=base,
                                     start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.port = self._wait_listening()
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            m = _LISTENING.search(line)
            if m:
                self.serving_pid = int(m.group(2))  # rank 0 under torchrun
                return int(m.group(1))
        self.kill()
        raise AssertionError(f"server did not start (exit {self.proc.poll()}):\n{''.join(self.stderr)[-4000:]}")

    def terminate(self, timeout: float = 60.0, *, pid: int | None = None) -> int:
        """SIGTERM (to ``pid``, default the process started), then the exit code of the process started
        (killed, and the test failed, if it does not exit in time)."""
        if self.proc.poll() is None:
            os.kill(pid or self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"server did not exit within {timeout}s of SIGTERM") from None

    def kill(self) -> None:
        """Kill the whole process group this test started (torchrun's workers too)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def train_and_score(d: Path, architecture: str, records: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Train a tiny ``architecture`` checkpoint in ``d / "rm"`` (on its sample data) and score ``records``
    with `rm-registry score`: the reference rows."""
    proc = run_cli("train", architecture, "--output", str(d / "rm"), "--no-progress", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = d / "texts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = run_cli("score", "--checkpoint", str(d / "rm"), "--data", str(data), "--output", str(d / "scores.jsonl"),
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (d / "scores.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def served_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny trained checkpoint, the texts, and `rm-registry score`'s rewards for them (the reference)."""
    d = tmp_path_factory.mktemp("serve")
    rows = train_and_score(d, "binary_ranking", [{"prompt": p, "response": r} for p, r in PAIRS])
    rewards = [row["reward"] for row in rows]
    assert len(rewards) == len(TEXTS) and len({round(r, 5) for r in rewards}) > 8  # a permutation would show
    return {"checkpoint": d / "rm", "rewards": rewards, "dir": d}


@pytest.fixture(scope="module")
def server(served_run: dict[str, Any]) -> Iterator[Server]:
    """The default server (batching on), with a 64 KiB request limit."""
    srv = Server(["--checkpoint", str(served_run["checkpoint"]), "--max-request-bytes", "65536"])
    yield srv
    code = srv.terminate()
    assert code == 0, "".join(srv.stderr)[-3000:]
