"""megatron-core's ``torch_dist`` checkpoint format, written by the saving process itself.

megatron-core 0.16.1's default ``torch_dist`` save strategy writes through
``FileSystemWriterAsync``, even when saving synchronously: it starts a ``multiprocessing``
``SyncManager`` (a spawned server process, plus the ``resource_tracker``) for its results queue
and forks one writer process per file. Those helpers outlive a killed trainer (they hold its
stdout open, so ``rm-registry train | tee log`` hangs) and turn Ctrl-C during a save into a
``BrokenPipeError`` traceback. The first save also pays about 2 s to spawn the manager.

:class:`InProcessSaveStrategy` writes the same files (PyTorch DCP ``.metadata`` and
``__<rank>_<n>.distcp``, loadable by megatron-core's ``torch_dist`` load strategy under any
tensor-parallel layout) with PyTorch's own ``FileSystemWriter`` in the calling thread: no helper
process, errors raised where they happen (an ``OSError`` for a full disk), files fsynced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed.checkpoint as dcp
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreSavePlanner,
    TorchDistSaveShardedStrategy,
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)

__all__ = ["InProcessSaveStrategy"]


class _Writer(dcp.FileSystemWriter):
    """PyTorch's writer, recording its folder in ``.metadata`` as a ``str`` like megatron-core's writer
    does (PyTorch's records a ``pathlib`` object, which the checkpoint allow-list does not admit)."""

    @property
    def checkpoint_id(self) -> str:
        return str(self.path)


class InProcessSaveStrategy(TorchDistSaveShardedStrategy):
    """``torch_dist`` (version 1) saving without helper processes; pass as ``sharded_strategy``."""

    def __init__(self) -> None:
        super().__init__("torch_dist", 1)

    def save(self, sharded_state_dict: Any, checkpoint_dir: str | Path) -> None:
        """Write this rank's shards and (coordinator) the global ``.metadata``. Collective."""
        sharded_state_dict, _, _ = _replace_state_dict_keys_with_sharded_keys(
            sharded_state_dict, self.keep_only_main_replica
        )
        writer = _Writer(str(checkpoint_dir), single_file_per_rank=True, sync_files=True, thread_count=1)
        planner = MCoreSavePlanner(dedup_replicated_tensors=not self.keep_only_main_replica,
                                   flatten_state_dict=False)
        dcp.save(mcore_to_pyt_state_dict(sharded_state_dict, False), storage_writer=writer, planner=planner)
