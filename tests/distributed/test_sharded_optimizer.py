"""The sharded optimizer (``model.optim.use_distributed_optimizer``, NeMo's ``distributed_fused_adam``)
under real ``torchrun`` with 2 CPU processes (gloo): the same training as the replicated optimizer,
each data-parallel rank holding about half of the Adam state, and an exact resume."""

from __future__ import annotations

import math

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from test_torchrun import TINY, _prefs, _rel, _train_losses, torchrun

pytestmark = pytest.mark.slow


def _layout_free_moment_bytes(checkpoint: Path) -> int:
    """Bytes of the Adam moments in ``checkpoint/optimizer/`` (the whole model's, each once)."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(checkpoint / "optimizer")).read_metadata().state_dict_metadata
    return sum(math.prod(m.size) * torch.empty((), dtype=m.properties.dtype).element_size()
               for key, m in metadata.items()
               if key.startswith("optimizer.state.") and hasattr(m, "size") and math.prod(m.size) > 1)  # as below


def _optimizer_bytes(checkpoint: Path, rank: int) -> int:
    """Bytes of the optimizer-state tensors (Adam moments) that ``rank`` saved."""
    state = torch.load(checkpoint / "state" / f"rank_{rank:05d}.pt", weights_only=True)
    return sum(t.numel() * t.element_size() for s in state["optimizer"].get("state", {}).values() for t in s.values()
               if isinstance(t, torch.Tensor) and t.numel() > 1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("zero")
    train = _prefs(d / "train.jsonl", 32)
    common = ["train", "binary_ranking", "--data", str(train), "--no-progress", *TINY, "trainer.rm.save_interval=2"]
    torchrun("train DP=2", *common, "--output", str(d / "replicated"))
    torchrun("train DP=2 sharded", *common, "--output", str(d / "sharded"), "model.optim.name=distributed_fused_adam")
    return {"dir": d, "common": common}


def test_sharded_optimizer_trains_step_for_step_like_the_replicated_one(runs: dict[str, Any]) -> None:
    d = runs["dir"]
    replicated, sharded = _train_losses(d / "replicated"), _train_losses(d / "sharded")
    assert [s for s, _ in sharded] == [1, 2, 3, 4]
    worst = max(_rel(a, b) for (_, a), (_, b) in zip(sharded, replicated))
    assert worst <= 1e-5, (sharded, replicated)
    assert replicated[-1][1] < replicated[0][1]  # it learned: equal losses are not from standing still


def test_each_rank_holds_about_half_of_the_optimizer_state(runs: dict[str, Any]) -> None:
    d = runs["dir"]
    # Replicated: every rank holds all the moments; the checkpoint keeps them once, placed like the
    # weights (optimizer/, so that they reshard), and none per rank.
    full = _layout_free_moment_bytes(d / "replicated" / "checkpoints" / "step_0000004")
    assert _optimizer_bytes(d / "replicated" / "checkpoints" / "step_0000004", 1) == 0
    shards = [_optimizer_bytes(d / "sharded" / "checkpoints" / "step_0000004", r) for r in (0, 1)]
    assert sum(shards) == full, (shards, full)  # every moment held once
    assert all(0.3 * full < s < 0.7 * full for s in shards), (shards, full)


def test_a_sharded_run_resumes_exactly_and_refuses_another_data_parallel_size(runs: dict[str, Any]) -> None:
    d = runs["dir"]
    resumed = d / "resumed"
    shutil.copytree(d / "sharded", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000004")
    torchrun("resume DP=2 sharded", *runs["common"], "--output", str(resumed), "--resume",
             "model.optim.name=distributed_fused_adam")
    got, reference = _train_losses(resumed), _train_losses(d / "sharded")
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert max(_rel(a, b) for (_, a), (_, b) in zip(got, reference)) <= 1e-6, (got, reference)

    proc = subprocess.run([sys.executable, "-m", "rm_registry", *runs["common"], "--output", str(d / "sharded"),
                           "--resume", "model.optim.name=distributed_fused_adam", "trainer.rm.max_steps=6"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "sharded" in proc.stderr and "data-parallel" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
