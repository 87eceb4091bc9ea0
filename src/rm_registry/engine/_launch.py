"""Which process this is, read from torchrun's environment: usable before torch is imported.

The commands (``train``, ``evaluate``, ``score``, ``serve``) ask it who prints notes and warnings.
"""

from __future__ import annotations

import os

__all__ = ["first_process", "quiet_unless_first_rank"]


def first_process() -> bool:
    """True in a single process and on global rank 0 under torchrun (``RANK`` unset, empty or 0).

    The one process that prints notes and warnings. It agrees with
    :attr:`~rm_registry.engine.parallel.ParallelInfo.is_main` once the engine is initialized, and
    also answers before that (while megatron-core is being imported, or while input is checked).
    """
    return os.environ.get("RANK", "0") in ("", "0")


def quiet_unless_first_rank() -> None:
    """Under torchrun, only global rank 0 shows warnings (megatron-core's import-time notices would
    otherwise appear once per process). Errors are still printed by every rank that has one.
    """
    import warnings

    if not first_process():
        warnings.simplefilter("ignore")
