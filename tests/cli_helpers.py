"""Shared by the end-to-end CLI tests: the tiny model and a real `python -m rm_registry` run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m rm_registry ARGS`` in a subprocess, as a user runs it (stdout and stderr captured).

    ``env``: variables to set on top of this process's environment (e.g. ``PYTHONPATH``).
    """
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "rm_registry", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)
