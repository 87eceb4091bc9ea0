"""A ``torchrun`` training run (2 CPU processes) stopped by SIGTERM, resumed, then torchrun SIGKILLed;
``rm-registry launch`` stopped by SIGTERM ends with the stop line and 143, without torchrun's traceback.

torchrun forwards SIGTERM to its workers: rank 0 prints the one stop line. When torchrun itself is
SIGKILLed it cannot forward anything; the workers asked the kernel to kill them with it
(``PR_SET_PDEATHSIG``), so none survives and the pipes close.
"""

from __future__ import annotations

import re
import signal
import socket
import sys
from pathlib import Path

import pytest
from cli_helpers import TINY, Launch, no_temporary_folders, prefs

pytestmark = pytest.mark.slow


def _port() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _torchrun(*args: str) -> Launch:
    return Launch(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                  "--master-port", _port(), "-m", "rm_registry", *args)


def _endless_training(tmp_path: Path, run: Path) -> list[str]:
    return ["train", "binary_ranking", "--data", str(prefs(tmp_path / "train.jsonl", 40)), "--output", str(run),
            "--no-progress", *TINY, "trainer.rm.max_steps=100000", "trainer.rm.save_interval=1",
            "trainer.rm.val_check_interval=100000"]


def test_workers_stop_with_torchrun_and_die_with_it(tmp_path: Path, launches: list[Launch]) -> None:
    run = tmp_path / "run"
    args = _endless_training(tmp_path, run)
    launch = _torchrun(*args)
    launches.append(launch)
    launch.wait_for_checkpoint(run, after=1)
    launch.proc.send_signal(signal.SIGTERM)
    _, _, err = launch.finish()
    stops = re.findall(r"rm-registry: stopped by SIGTERM at step (\d+); resume with --resume", err)
    assert len(stops) == 1, err[-4000:]  # rank 0 only
    launch.no_survivors()
    assert no_temporary_folders(run)

    launch = _torchrun(*args, "--resume")
    launches.append(launch)
    launch.wait_for_checkpoint(run, after=int(stops[0]))
    launch.proc.kill()  # torchrun only, not its workers
    launch.finish(timeout=60)
    launch.no_survivors()


def test_launch_stopped_by_sigterm_exits_143_with_the_stop_line_only(tmp_path: Path, launches: list[Launch]) -> None:
    run = tmp_path / "run"
    launch = Launch(sys.executable, "-m", "rm_registry", "launch", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                    "--master-port", _port(), *_endless_training(tmp_path, run))
    launches.append(launch)
    launch.wait_for_checkpoint(run, after=1)
    launch.proc.send_signal(signal.SIGTERM)
    code, _, err = launch.finish()
    assert code == 143, err[-4000:]
    assert len(re.findall(r"rm-registry: stopped by SIGTERM at step \d+; resume with --resume", err)) == 1, err[-4000:]
    assert "Traceback" not in err and "SignalException" not in err, err[-4000:]
    launch.no_survivors()
    assert no_temporary_folders(run)


def test_a_time_limit_stops_every_process_after_the_same_step(tmp_path: Path, launches: list[Launch]) -> None:
    """exp_manager.max_time_per_run under torchrun: rank 0's clock decides for all, so the run ends
    cleanly (a rank going on alone would hang in the next collective)."""
    from rm_registry.engine.checkpoint import find_latest, is_complete

    run = tmp_path / "run"
    launch = _torchrun(*_endless_training(tmp_path, run), "trainer.rm.save_interval=100000",
                       "exp_manager.max_time_per_run=00:00:00:03")
    launches.append(launch)
    code, _, err = launch.finish()
    assert code == 0, err[-4000:]
    stops = re.findall(r"rm-registry: time limit exp_manager.max_time_per_run=00:00:00:03 reached at step (\d+) ", err)
    assert len(stops) == 1, err[-4000:]
    last = find_latest(run)
    assert last is not None and last.name == f"step_{int(stops[0]):07d}" and is_complete(last)
    launch.no_survivors()
