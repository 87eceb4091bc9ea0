"""Parallel-state initialization in one process (multi-process: test_tensor_parallel.py)."""

from __future__ import annotations

import pytest
import torch

from rm_registry import ConfigError
from rm_registry.engine import parallel


def test_single_process_info(parallel_info) -> None:
    info = parallel_info
    assert (info.rank, info.world_size, info.tp, info.pp, info.dp, info.tp_rank, info.dp_rank) == (0, 1, 1, 1, 1, 0, 0)
    assert info.is_main and info.backend == ("nccl" if torch.cuda.is_available() else "gloo")
    assert parallel.get_info() is info
    assert parallel.initialize(tensor_model_parallel_size=1, seed=1) is info  # idempotent, no re-init


def test_unsupported_layouts_are_refused(parallel_info) -> None:
    with pytest.raises(ConfigError, match=r"tensor_model_parallel_size=2 .* does not divide the world size 1"):
        parallel.initialize(tensor_model_parallel_size=2)
    with pytest.raises(ConfigError, match=r"tensor_model_parallel_size=1 \(x pipeline 2\) does not divide the world "
                       r"size 1: .* or change model.tensor_model_parallel_size / model.pipeline_model_parallel_size"):
        parallel.initialize(pipeline_model_parallel_size=2)
    with pytest.raises(ConfigError, match=r"tensor_model_parallel_size=0"):
        parallel.initialize(tensor_model_parallel_size=0)
    assert parallel.get_info() is parallel_info  # the failed calls changed nothing


def test_manual_seed_is_reproducible(parallel_info) -> None:
    parallel.manual_seed(11)
    a = torch.rand(3)
    parallel.manual_seed(11)
    assert torch.equal(a, torch.rand(3))
