"""One rank of tests/engine/test_dp_reduction.py: the trainer's data-parallel reductions on gloo.

Two of these run at once (``RANK`` 0 and 1, ``WORLD_SIZE`` 2, ``MASTER_ADDR``/``MASTER_PORT``),
each with the same small torch model and its own batch, as two data-parallel ranks of one step.
No megatron-core: the trainer's functions are given the process group. Each rank writes what it
saw to ``OUTPUT_DIR/rank_<r>.json`` for the test to check against its own computation.

Usage: RANK=r WORLD_SIZE=2 MASTER_ADDR=... MASTER_PORT=... python _dp_reduce_script.py OUTPUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from rm_registry.engine.parallel import ParallelInfo
from rm_registry import TrainingError
from rm_registry.engine.trainer._metrics import MetricMeans
from rm_registry.engine.trainer._optim import allreduce_grads, clip_grad_norm


def main(out: Path) -> None:
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", init_method="env://")
    info = ParallelInfo(rank=rank, world_size=2, local_rank=rank, tp=1, pp=1, dp=2, tp_rank=0, dp_rank=rank,
                        is_main=rank == 0, device=torch.device("cpu"), backend="gloo")
    group = dist.group.WORLD
    torch.manual_seed(0)  # the same weights on both ranks
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 3), "b": torch.nn.Linear(3, 1), "unused": torch.nn.Linear(2, 2)})
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(100 + rank))  # this rank's batch
    (model["b"](torch.tanh(model["a"](x))).pow(2).mean() * (1 + 3 * rank)).backward()
    names = [n for n, p in model.named_parameters() if p.grad is not None]
    local = {n: p.grad.tolist() for n, p in model.named_parameters() if p.grad is not None}

    allreduce_grads(model, info, group)
    averaged = {n: p.grad.tolist() for n, p in model.named_parameters() if p.grad is not None}
    record = {"names": names, "local": local, "averaged": averaged}
    record["norm"] = clip_grad_norm(model, 0.05, info)
    record["clipped"] = {n: p.grad.tolist() for n, p in model.named_parameters() if p.grad is not None}
    means = MetricMeans("step 1")  # rank r: one micro-batch of weight r + 1
    means.add({"loss": float(rank + 1), "accuracy": 0.25 * rank}, float(rank + 1))
    record["means"] = means.reduce(info, totals={"tokens": 10.0 + rank}, group=group)
    other = MetricMeans("step 2")  # the ranks disagree on the metric names
    other.add({"loss": 1.0, **({"accuracy": 0.5} if rank == 0 else {})}, 1.0)
    try:
        other.reduce(info, group=group)
        record["mismatch"] = None
    except TrainingError as exc:
        record["mismatch"] = str(exc)
    (out / f"rank_{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
