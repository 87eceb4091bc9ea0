"""torch.distributed and megatron-core parallel state, for one process or a ``torchrun`` launch.

In: the sizes ``model.tensor_model_parallel_size`` / ``pipeline_model_parallel_size``, torchrun's
environment and the seed. Out: a :class:`ParallelInfo` (ranks, sizes, device) read by every stage.

Modules: this one; ``_cpu_compat`` (megatron-core 0.16's CUDA-only pieces, replaced when CUDA is
absent: RNG tracker, scratch buffer, device calls, checkpoint-save shims); ``_pipeline``
(megatron-core's pipeline schedules for the trainer and evaluation, and their CPU shims).

Supported layouts: tensor parallelism (``model.tensor_model_parallel_size``) times pipeline
parallelism (``model.pipeline_model_parallel_size``, megatron's 1F1B schedule) times data
parallelism (the rest of the world size). Ranks follow megatron-core's default order (TP
innermost, then DP, then PP).

    info = initialize(tensor_model_parallel_size=2, seed=1234)   # under torchrun, 4 processes
    info.tp, info.dp, info.tp_rank, info.dp_rank                 # 2, 2, ..., ...
    shutdown()
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..._errors import ConfigError
from ..config import engine_defaults
from ..config._checks import check_parallel_sizes
from . import _cpu_compat

__all__ = ["ParallelInfo", "initialize", "shutdown", "get_info", "manual_seed", "barrier"]


@dataclass(frozen=True)
class ParallelInfo:
    """Where this process sits in the parallel layout.

    Attributes:
        rank: Global rank (``RANK`` from torchrun, 0 for one process).
        world_size: Number of processes.
        local_rank: Rank on this node (selects the GPU).
        tp: Tensor-parallel size.
        pp: Pipeline-parallel size.
        dp: Data-parallel size, ``world_size // (tp * pp)``.
        tp_rank: Rank inside the tensor-parallel group.
        dp_rank: Rank inside the data-parallel group (which slice of the data this process reads).
        is_main: Global rank 0: the one process that logs and writes shared files.
        device: ``cuda:<local_rank>`` on GPUs, else ``cpu``.
        backend: ``nccl`` or ``gloo``.
    """

    rank: int
    world_size: int
    local_rank: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    dp_rank: int
    is_main: bool
    device: torch.device
    backend: str


_INFO: ParallelInfo | None = None
_OWNS_PROCESS_GROUP = False


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init_process_group() -> None:
    """Join torchrun's process group, or make a one-process group on a free local port."""
    global _OWNS_PROCESS_GROUP
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if torch.cuda.is_available():
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0) % torch.cuda.device_count())
    if world_size == 1 and "MASTER_PORT" not in os.environ:
        init_method = f"tcp://127.0.0.1:{_free_port()}"
    else:
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise ConfigError(
                    f"WORLD_SIZE={world_size} but {key} is not set: launch with torchrun "
                    "(python -m torch.distributed.run --nproc-per-node N ...)"
                )
        init_method = "env://"
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(minutes=30),
    )
    _OWNS_PROCESS_GROUP = True


def manual_seed(seed: int) -> None:
    """Seed Python, NumPy, torch and megatron's RNG tracker (CPU or CUDA) on this process.

    Every process gets the same default stream (so un-sharded initialization is identical across
    tensor-parallel layouts); the tracker's ``model-parallel-rng`` differs per TP rank.
    """
    from megatron.core import parallel_state, tensor_parallel

    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a megatron-core dependency
        pass
    torch.manual_seed(seed)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    if _cpu_compat.cuda_absent():
        _cpu_compat.install_rng_tracker(seed, tp_rank)
    else:
        tensor_parallel.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def initialize(
    *, tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1, seed: int | None = None
) -> ParallelInfo:
    """Initialize torch.distributed and megatron-core's parallel state, and seed every RNG.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` from
    torchrun's environment; without them runs as one process. Backend ``nccl`` with CUDA,
    ``gloo`` without (then the CPU workarounds of :mod:`._cpu_compat` are applied).

    Idempotent: a second call with the same sizes returns the current :class:`ParallelInfo`
    without re-seeding; a call with different sizes rebuilds megatron's groups (the process
    group is kept) and seeds again. ``seed`` None: the engine's default (``seed`` in ``defaults.yaml``).

    Raises:
        ConfigError: the world size is not a multiple of ``tp * pp``.
    """
    global _INFO
    from megatron.core import parallel_state

    if seed is None:
        seed = int(engine_defaults().seed)

    tp, pp = tensor_model_parallel_size, pipeline_model_parallel_size
    if _INFO is not None and (_INFO.tp, _INFO.pp) == (tp, pp) and parallel_state.model_parallel_is_initialized():
        return _INFO
    _cpu_compat.check_megatron_version()
    world_size = dist.get_world_size() if dist.is_initialized() else _env_int("WORLD_SIZE", 1)
    check_parallel_sizes(tp, pp, world_size)
    _init_process_group()
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp
    )
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    _cpu_compat.apply_cpu_workarounds(seed=seed, tp_rank=tp_rank)
    manual_seed(seed)
    cuda = torch.cuda.is_available()
    local_rank = _env_int("LOCAL_RANK", 0)
    rank = dist.get_rank()
    _INFO = ParallelInfo(
        rank=rank,
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        tp=tp,
        pp=pp,
        dp=parallel_state.get_data_parallel_world_size(),
        tp_rank=tp_rank,
        dp_rank=parallel_state.get_data_parallel_rank(),
        is_main=rank == 0,
        device=torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu"),
        backend=dist.get_backend(),
    )
    return _INFO


def get_info() -> ParallelInfo | None:
    """The current layout, or ``None`` before :func:`initialize`."""
    return _INFO


def barrier() -> None:
    """Wait for every process (no-op without torch.distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Destroy megatron's parallel state, and the process group if :func:`initialize` made it."""
    global _INFO, _OWNS_PROCESS_GROUP
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if _OWNS_PROCESS_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _OWNS_PROCESS_GROUP = False
    _INFO = None
