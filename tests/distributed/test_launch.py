"""``rm-registry launch``: torchrun's launcher with our one-line errors instead of torchrun's
``ChildFailedError`` traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rm_registry.engine.parallel import _free_port

pytestmark = pytest.mark.slow



def test_a_failing_launch_ends_with_one_line_and_the_exit_code(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rm_registry", "launch", "--nproc-per-node", "2", "--master-port", str(_free_port()),
         "train", "binary_ranking", "--output", str(out), "model.micro_batch_size=x"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rm-registry: error:")]
    why = ("rm-registry: error: model.micro_batch_size='x' (command line): expected a number like "
           "the default 8, got a string")
    # Each process says why, once; a process that torchrun stopped (SIGTERM) after its peer failed
    # says only that it was stopped, or nothing when it was stopped before it could say anything.
    assert 1 <= errors.count(why) <= 2 and set(errors[:-1]) == {why}, proc.stderr
    others = [line for line in proc.stderr.splitlines() if line.startswith("rm-registry:") and line not in errors]
    assert len(errors) - 1 + len(others) <= 2 and set(others) <= {"rm-registry: stopped by SIGTERM"}, proc.stderr
    assert errors[-1].startswith("rm-registry: error: launch: 2 of the 2 process(es) per node failed, first rank")
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert not out.exists()


def test_launch_without_a_command_is_a_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "rm_registry", "launch", "--nproc-per-node", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "name the command to run" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
