"""Which process this is, read from torchrun's environment: usable before torch is imported."""

from __future__ import annotations

import os

__all__ = ["first_process"]


def first_process() -> bool:
    """True in a single process and on global rank 0 under torchrun (``RANK`` unset, empty or 0).

    The one process that prints notes and warnings. It agrees with
    :attr:`~rm_registry.engine.parallel.ParallelInfo.is_main` once the engine is initialized, and
    also answers before that (while megatron-core is being imported, or while input is checked).
    """
    return os.environ.get("RANK", "0") in ("", "0")
