"""`rm-registry train` stopped by real signals and filling a real file system, as an operator meets it.

Each run is a real process in its own session (so that every process it starts can be found, and
killed in teardown); every wait is bounded. After SIGTERM, SIGINT or SIGKILL no process of that
session may survive and the output pipes must close (``rm-registry train ... | tee log`` ends).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from cli_helpers import TINY, Launch, no_temporary_folders, prefs

pytestmark = pytest.mark.slow

LONG = [*TINY, "trainer.rm.max_steps=100000", "trainer.rm.save_interval=1", "trainer.rm.val_check_interval=100000"]
STOP_LINE = r"rm-registry: stopped by {sig} at step (\d+); resume with --resume"


def _stop(launches: list[Launch], run: Path, args: list[str], sig: signal.Signals, after: int) -> tuple[int, str]:
    """Start, wait for a checkpoint past ``after``, send ``sig``; check a clean end. The step stopped at, stderr."""
    launch = Launch(sys.executable, "-m", "rm_registry", *args)
    launches.append(launch)
    launch.wait_for_checkpoint(run, after)
    launch.proc.send_signal(sig)
    code, out, err = launch.finish()
    assert code == 128 + sig, err[-3000:]
    assert "Traceback" not in err and "Error" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    match = re.fullmatch(STOP_LINE.format(sig=sig.name), last)
    assert match, err[-3000:]
    assert len([line for line in err.splitlines() if line.startswith("rm-registry:")]) == 1, err
    launch.no_survivors()
    assert no_temporary_folders(run)
    return int(match.group(1)), err


def test_sigterm_sigint_and_sigkill_end_cleanly_and_the_run_resumes(tmp_path: Path, launches: list[Launch]) -> None:
    run = tmp_path / "run"
    args = ["train", "binary_ranking", "--data", str(prefs(tmp_path / "train.jsonl", 40)), "--output", str(run),
            "--no-progress", *LONG]
    stopped, _ = _stop(launches, run, args, signal.SIGTERM, after=1)
    assert stopped >= 2

    # Resumed, then Ctrl-C (SIGINT sent to the process, as a terminal does).
    stopped_again, err = _stop(launches, run, [*args, "--resume"], signal.SIGINT, after=stopped)
    resumed = int(re.search(r"resuming from step (\d+) \(checkpoint .*step_\d+\)", err).group(1))
    assert resumed >= 2 and stopped_again > resumed

    # Resumed again, then SIGKILL: nothing of it survives and its pipes close.
    launch = Launch(sys.executable, "-m", "rm_registry", *args, "--resume")
    launches.append(launch)
    launch.wait_for_checkpoint(run, after=stopped_again)
    launch.proc.kill()
    code, _, _ = launch.finish(timeout=60)
    assert code == -signal.SIGKILL
    launch.no_survivors()


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs): room for one tiny checkpoint, not two. Needs root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the full disk is simulated in tests/engine/test_failures.py")
    where = tmp_path / "disk"
    _mount_tmpfs(where, "1m")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_full_disk_fails_in_one_line_and_the_run_resumes_once_space_is_back(tmp_path: Path, small_disk: Path) -> None:
    from cli_helpers import run_cli

    run = small_disk / "run"
    args = ["train", "binary_ranking", "--data", str(prefs(tmp_path / "train.jsonl", 40)), "--output", str(run),
            "--no-progress", *TINY, "trainer.rm.save_interval=2"]
    proc = run_cli(*args)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"rm-registry: error: cannot write checkpoint {run / 'checkpoints' / 'step_0000004'}: No space left on device")
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002"]  # no temporary folder left

    # --resume on the full disk: the same one line, from the same save.
    again = run_cli(*args, "--resume")
    assert again.returncode == 1 and again.stderr.strip().splitlines()[-1] == proc.stderr.strip().splitlines()[-1]

    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    done = run_cli(*args, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from step 2 (checkpoint {run / 'checkpoints' / 'step_0000002'})" in done.stderr
    assert json.loads(done.stdout)["checkpoint"].endswith("step_0000004")



def test_library_write_errors_on_a_full_disk_are_recognised(small_disk: Path) -> None:
    """What safetensors (export) and torch.save (megatron-core's common.pt) raise on a really full disk."""
    import torch
    from safetensors.torch import save_file

    from rm_registry.engine.checkpoint._fs import write_failure

    big = {"w": torch.zeros(512 * 1024)}  # 2 MiB on a 1 MiB file system
    for write in (lambda: save_file(big, str(small_disk / "model.safetensors")),
                  lambda: torch.save(big, small_disk / "common.pt")):
        with pytest.raises(Exception) as info:
            write()
        failure = write_failure(info.value, small_disk / "out", small_disk)
        assert failure is not None and str(failure) == f"cannot write {small_disk / 'out'}: No space left on device"
        for leftover in small_disk.iterdir():
            leftover.unlink()
