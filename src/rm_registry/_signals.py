"""How a command ends when it is told to stop: SIGTERM and SIGINT, and the death of torchrun.

Schedulers (Slurm, Kubernetes) stop a job with SIGTERM, a user with Ctrl-C (SIGINT). While a
command of ``rm-registry`` runs, both raise :class:`Stopped` in the main thread, so ``finally``
blocks run (a checkpoint being saved removes its temporary folder) and ``_cli.main`` prints one
line and exits ``128 + signal``: 143 for SIGTERM, 130 for SIGINT. Nothing here imports torch.

Under ``torchrun``, a worker asks the kernel to kill it when torchrun itself dies (even by
SIGKILL), so that no worker outlives its launcher.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["Stopped", "stop_on_signals", "grace_for_stop", "die_with_launcher", "current_step"]

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: Optimizer steps done by the training loop running in this process (None outside training).
current_step: int | None = None
#: The stop signal received inside :func:`stop_on_signals` (None: none yet).
received: int | None = None


class Stopped(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM or SIGINT while a command runs.

    A :class:`KeyboardInterrupt`, so code that already cleans up after Ctrl-C cleans up after
    SIGTERM too. The training loop sets :attr:`step` (optimizer steps done) before re-raising.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)
        self.step: int | None = current_step

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: ``128 + signal``."""
        return 128 + self.signum

    def message(self) -> str:
        """``stopped by SIGTERM at step 7; resume with --resume`` (training) or ``stopped by SIGTERM``."""
        if self.step is None:
            return f"stopped by {self.signal_name}"
        return f"stopped by {self.signal_name} at step {self.step}; resume with --resume"


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGINT raise :class:`Stopped` (once; repeats are ignored so
    that cleanup can finish). The previous handlers come back afterwards. Does nothing outside the
    main thread, where Python cannot install signal handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal raised
        global received
        if not raised:
            raised = True
            received = signum
            raise Stopped(signum)

    global current_step, received
    current_step = None
    received = None
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    for sig in _STOP_SIGNALS:
        if sig == signal.SIGINT and previous[sig] is signal.SIG_IGN:  # e.g. started with `nohup ... &`
            continue
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def grace_for_stop(seconds: float = 3.0) -> None:
    """Under torchrun, after an unexpected error: wait briefly for this worker's own stop signal.

    torchrun forwards SIGTERM to its workers one after the other. A worker that stops first
    breaks the collective its peers are in (gloo: ``Connection closed by peer``) before their
    own SIGTERM arrives; waiting here lets that signal raise :class:`Stopped` (reported as the
    stop it is) instead of the peer's error with a traceback. Elsewhere this returns at once.
    When the signal already came (a library such as torch DCP caught the first Stopped and raised
    its own error), Stopped is raised again at once.
    """
    if received is not None:  # our signal came already (a library may have wrapped its Stopped)
        raise Stopped(received) from None
    if "TORCHELASTIC_RUN_ID" not in os.environ or threading.current_thread() is not threading.main_thread():
        return
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)  # the handler raises Stopped here when the signal comes


def die_with_launcher() -> None:
    """Under torchrun (Linux), have the kernel SIGKILL this worker when torchrun dies.

    torchrun forwards SIGTERM and SIGINT to its workers, but when it is killed with SIGKILL its
    workers would otherwise live on (reparented to PID 1), blocked in collectives or still
    training. Elsewhere, or when ``prctl`` is unavailable, this does nothing.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
        return
    if os.getppid() == 1:  # the launcher died before the request was made
        os.kill(os.getpid(), signal.SIGKILL)
