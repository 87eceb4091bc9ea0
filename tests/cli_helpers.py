"""Shared by the end-to-end CLI tests: the tiny model and a real `python -m rm_registry` run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: A model small enough that a 4-step run with validation and a checkpoint takes seconds.
TINY = [
    "model.num_layers=2",
    "model.hidden_size=32",
    "model.num_attention_heads=4",
    "model.encoder_seq_length=128",
    "model.micro_batch_size=4",
    "model.global_batch_size=8",
    "trainer.rm.max_steps=4",
    "trainer.rm.val_check_interval=2",
    "trainer.rm.save_interval=4",
]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m rm_registry ARGS`` in a subprocess, as a user runs it (stdout and stderr captured)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "rm_registry", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def prefs(path: Path, n: int) -> Path:
    """``n`` preference pairs (JSON Lines) of simple sums written to ``path``."""
    rows = [{"prompt": f"Q{i}: what is {i % 7}+{i % 5}?", "chosen": f" It is {i % 7 + i % 5}. Glad to help!",
             "rejected": f" It is {i % 7 + i % 5 + 1}, go away."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Launch:
    """``CMD`` started as the leader of a new session, so that every process it starts can be found
    (:meth:`session`) and killed (:meth:`kill_all`, for teardown). Output is piped.
    """

    def __init__(self, *cmd: str) -> None:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        self.proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)

    def session(self) -> list[int]:
        """Live (not zombie) processes of this launch's session: the launch and anything it started."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if os.getsid(int(entry.name)) == self.proc.pid and state != "Z":
                        pids.append(int(entry.name))
                except (ProcessLookupError, PermissionError, FileNotFoundError, IndexError):
                    pass
        return pids

    def wait_for_checkpoint(self, run: Path, after: int, timeout: float = 300) -> int:
        """Wait until ``run`` has a checkpoint of a step above ``after``; that step."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            steps = [int(p.name[5:]) for p in (run / "checkpoints").glob("step_*")] if (run / "checkpoints").is_dir() \
                else []
            if steps and max(steps) > after:
                return max(steps)
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended early (exit {self.proc.returncode}): {self.proc.stderr.read()[-3000:]}")
            time.sleep(0.2)
        pytest.fail(f"no checkpoint after step {after} in {run} within {timeout} s")

    def finish(self, timeout: float = 180) -> tuple[int, str, str]:
        """Exit code, stdout and stderr. The pipes close only when no process holds them any more."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def no_survivors(self, timeout: float = 30) -> None:
        """Assert that no process of the session is left (waiting up to ``timeout`` for exits)."""
        deadline = time.monotonic() + timeout
        while self.session() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = self.session()
        assert not left, [Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ") for pid in left]

    def kill_all(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=30)


def no_temporary_folders(run: Path) -> bool:
    """True when no hidden ``.step_*.tmp`` (or ``.old``) folder is left in ``run/checkpoints``."""
    return not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
