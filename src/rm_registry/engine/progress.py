"""Progress bars and notes on stderr for long work (training steps, evaluation and scoring batches).

:func:`progress_bar`, used by the trainer and the Python API alike, so that every long loop
reports the same way: a ``tqdm`` bar on stderr when enabled (the main rank, unless
``--no-progress``), and an object with the same methods that does nothing otherwise.
:func:`say` prints a note line without breaking a running bar.
"""

from __future__ import annotations

import sys
from typing import Any

from ._launch import first_process

__all__ = ["NullBar", "progress_bar", "say"]


class NullBar:
    """Stands in for a tqdm bar when progress is off: every method does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, *, enabled: bool, initial: int = 0, unit: str = "step",
                 delay: float = 0.0) -> Any:
    """A tqdm bar on stderr counting ``total`` units (``None``: unknown), or a :class:`NullBar` when
    not ``enabled``. With ``delay`` the bar shows only once the work has taken that many seconds.

    On a terminal the bar refreshes at most twice a second; in a log file (stderr not a TTY) every
    10 seconds, so that logs stay short.
    """
    if not enabled:
        return NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 10.0, delay=delay)


def say(message: str) -> None:
    """One line on stderr that does not break a running progress bar; global rank 0 only."""
    if not first_process():
        return
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)
