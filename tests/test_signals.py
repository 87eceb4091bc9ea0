"""SIGTERM and SIGINT during any command: one line, exit 128 + signal, handlers restored afterwards.

Real signals, sent to this process while a command (added through the command hook) runs in it.
The end-to-end runs (training, torchrun) are in tests/test_stop_and_full_disk.py and
tests/distributed/test_torchrun_stop.py.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from rm_registry import hookimpl, register_hooks
from rm_registry._cli import main
from rm_registry._signals import Stopped, stop_on_signals

pytestmark = pytest.mark.usefixtures("clean_registry")


class SignalsItself:
    cleaned_up: list[str] = []

    @hookimpl
    def rm_registry_add_commands(self, subparsers: Any) -> None:
        p = subparsers.add_parser("signal-me", help="send SIG to this process, then wait")
        p.add_argument("sig")
        p.set_defaults(func=self._run)

    @classmethod
    def _run(cls, args: Any) -> int:
        try:
            os.kill(os.getpid(), getattr(signal, args.sig))
            time.sleep(10)  # interrupted by the handler long before
            return 0
        finally:
            cls.cleaned_up.append(args.sig)


@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_stops_a_command_with_one_line(sig: str, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    register_hooks(SignalsItself())
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()
    assert main(["signal-me", sig]) == code
    assert time.monotonic() - started < 5
    assert capsys.readouterr().err == f"rm-registry: stopped by {sig}\n"
    assert SignalsItself.cleaned_up[-1] == sig  # finally blocks ran
    assert {s: signal.getsignal(s) for s in before} == before


def test_only_rank_0_prints_under_torchrun(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    register_hooks(SignalsItself())
    monkeypatch.setenv("RANK", "1")
    assert main(["signal-me", "SIGTERM"]) == 143
    assert capsys.readouterr().err == ""


def test_a_repeated_signal_does_not_interrupt_cleanup() -> None:
    with pytest.raises(Stopped) as info:
        with stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM while cleaning up: ignored
                time.sleep(0.05)
    assert info.value.exit_code == 143 and info.value.message() == "stopped by SIGTERM"
    info.value.step = 12
    assert info.value.message() == "stopped by SIGTERM at step 12; resume with --resume"
