"""Workarounds that let megatron-core 0.16.x run on a machine without CUDA.

megatron-core assumes a GPU in a few places that the reward-model path reaches (measured on
0.16.1, see ``docs`` and the shared notes):

1. The RNG tracker (``tensor_parallel.random.CudaRNGStatesTracker``) stores and forks CUDA
   generator states; attention forks the ``model-parallel-rng`` state on every forward pass,
   even with dropout 0. :class:`CPURNGStatesTracker` keeps the same API on the CPU generator.
2. ``DotProductAttention`` takes a scratch tensor from ``parallel_state.get_global_memory_buffer()``,
   which allocates on ``torch.cuda.current_device()``. :class:`CPUMemoryBuffer` allocates on
   the CPU and replaces the global buffer.
3. ``RotaryEmbedding.get_emb`` moves its frequencies to ``torch.cuda.current_device()``, and the
   tensor-parallel gathers in ``tensor_parallel.mappings`` allocate there (hit by the backward of
   a row-parallel layer with TP > 1); these are wrapped (:data:`CUDA_DEVICE_CALLS`) so that,
   without CUDA, "the current device" is the CPU during those calls only.
5. Activation recomputation (``tensor_parallel.checkpoint``, used by ``recompute_granularity``)
   saves and restores the CUDA generator state around each recomputed chunk;
   :func:`patch_recompute_rng` makes the CUDA part a no-op (the CPU generator and the CPU RNG
   tracker are still saved and restored, so dropout replays identically).
6. megatron's linear layers are ``torch.autograd.Function`` s decorated with
   ``torch.amp.custom_fwd/custom_bwd(device_type="cuda")``, so under CPU autocast (mixed
   precision) their backward runs outside autocast and multiplies a bfloat16 gradient by a
   float32 weight; :func:`patch_autocast_functions` re-decorates them for the CPU (and runs them
   in the device shims of 3.: under sequence parallelism their backward allocates on
   ``torch.cuda.current_device()``).
4. ``dist_checkpointing.save`` calls ``torch.cuda.synchronize()`` and
   ``torch.cuda.current_device()``; :func:`cuda_device_shims` makes both harmless around the
   save call only (see :mod:`rm_registry.engine.checkpoint`).

Everything here is active only when CUDA is absent, and was written for megatron-core 0.16.x:
:func:`check_megatron_version` warns for any other version, and ``tests/engine/test_cpu_compat.py``
fails when an upgrade changes the internals relied on.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Any, Callable, Iterator

import torch

__all__ = [
    "SUPPORTED_MEGATRON_CORE",
    "CPUMemoryBuffer",
    "CPURNGStatesTracker",
    "apply_cpu_workarounds",
    "check_megatron_version",
    "cuda_absent",
    "cuda_device_shims",
    "install_memory_buffer",
    "install_rng_tracker",
    "patch_cuda_device_calls",
    "patch_autocast_functions",
    "patch_recompute_rng",
    "CUDA_DEVICE_CALLS",
]

#: The megatron-core release series these workarounds were written and tested for.
SUPPORTED_MEGATRON_CORE = "0.16"

_VERSION_CHECKED = False


def cuda_absent() -> bool:
    """True when torch sees no CUDA device (the workarounds apply only then)."""
    return not torch.cuda.is_available()


def check_megatron_version() -> str:
    """Return megatron-core's version; warn once if it is not the supported 0.16.x series."""
    global _VERSION_CHECKED
    from megatron.core import package_info

    version = str(package_info.__version__)
    if not _VERSION_CHECKED and not version.startswith(SUPPORTED_MEGATRON_CORE + "."):
        warnings.warn(
            f"rm_registry.engine's CPU workarounds were written for megatron-core "
            f"{SUPPORTED_MEGATRON_CORE}.x, but megatron-core {version} is installed; CPU runs may "
            f"fail. Run tests/engine/test_cpu_compat.py to see which internals changed, or install "
            f"'megatron-core=={SUPPORTED_MEGATRON_CORE}.*'.",
            RuntimeWarning,
            stacklevel=2,
        )
    _VERSION_CHECKED = True
    return version


# --------------------------------------------------------------------------- RNG tracker
def _make_cpu_tracker_class() -> type:
    from megatron.core.tensor_parallel import random as mrandom

    class _CPURNGStatesTracker(mrandom.CudaRNGStatesTracker):  # type: ignore[misc]
        """``CudaRNGStatesTracker`` on the CPU generator (same names, same fork semantics).

        ``add(name, seed)`` stores a CPU generator state seeded with ``seed``; ``fork(name)``
        swaps that state in for the duration of the block and saves where it got to, so dropout
        inside tensor-parallel regions uses a per-TP-rank stream as on GPUs.
        """

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise ValueError(f"RNG seed {seed} already tracked")
            if name in self.states_:
                raise ValueError(f"RNG state {name!r} already tracked")
            self.seeds_.add(seed)
            self.states_[name] = torch.Generator().manual_seed(seed).get_state()

        @contextlib.contextmanager
        def fork(self, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
            if name not in self.states_:
                raise ValueError(f"RNG state {name!r} is not tracked; seed the tracker first")
            orig_state = torch.get_rng_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig_state
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                if orig_name != "default-rng":
                    orig_state = self.states_[orig_name]
                torch.set_rng_state(orig_state)
                self._current_state_name = orig_name

    _CPURNGStatesTracker.__name__ = "CPURNGStatesTracker"
    _CPURNGStatesTracker.__qualname__ = "CPURNGStatesTracker"
    return _CPURNGStatesTracker


@functools.lru_cache(maxsize=None)
def _cpu_tracker_class() -> type:
    return _make_cpu_tracker_class()


def __getattr__(name: str) -> Any:
    # CPURNGStatesTracker / CPUMemoryBuffer subclass megatron classes: built on first access so
    # that importing this module does not import megatron-core.
    if name == "CPURNGStatesTracker":
        return _cpu_tracker_class()
    if name == "CPUMemoryBuffer":
        return _cpu_buffer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install_rng_tracker(seed: int, tp_rank: int) -> None:
    """Install a CPU RNG tracker seeded the way ``model_parallel_cuda_manual_seed`` seeds.

    ``data-parallel-rng`` gets ``seed``, ``model-parallel-rng`` gets ``seed + 2718 + tp_rank``,
    ``expert-parallel-rng`` gets ``seed + 1024`` (no expert parallelism here).
    """
    from megatron.core.tensor_parallel import random as mrandom

    tracker = _cpu_tracker_class()()
    tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + tp_rank)
    tracker.add(mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + 1024)
    mrandom._CUDA_RNG_STATE_TRACKER = tracker
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


# --------------------------------------------------------------------------- memory buffer
@functools.lru_cache(maxsize=None)
def _cpu_buffer_class() -> type:
    from megatron.core.utils import GlobalMemoryBuffer

    class _CPUMemoryBuffer(GlobalMemoryBuffer):  # type: ignore[misc]
        """``GlobalMemoryBuffer`` whose scratch tensors live on the CPU."""

        def get_tensor(
            self,
            tensor_shape: Any,
            dtype: torch.dtype,
            name: str,
            mem_alloc_context: Callable[[], Any] | None = None,
        ) -> torch.Tensor:
            required = functools.reduce(lambda a, b: a * b, tensor_shape, 1)
            buf = self.buffer.get((name, dtype))
            if buf is None or buf.numel() < required:
                buf = torch.empty(required, dtype=dtype, device="cpu", requires_grad=False)
                self.buffer[(name, dtype)] = buf
            return buf[0:required].view(*tensor_shape)

    _CPUMemoryBuffer.__name__ = "CPUMemoryBuffer"
    _CPUMemoryBuffer.__qualname__ = "CPUMemoryBuffer"
    return _CPUMemoryBuffer


def install_memory_buffer() -> None:
    """Replace megatron's global scratch buffer by a CPU one (after ``initialize_model_parallel``)."""
    from megatron.core import parallel_state

    if not isinstance(parallel_state._GLOBAL_MEMORY_BUFFER, _cpu_buffer_class()):
        parallel_state._GLOBAL_MEMORY_BUFFER = _cpu_buffer_class()()


# --------------------------------------------------------------------------- device shims
def _cpu_current_device() -> torch.device:
    return torch.device("cpu")


def _no_synchronize(device: Any = None) -> None:
    return None


@contextlib.contextmanager
def cuda_device_shims() -> Iterator[None]:
    """Within the block, without CUDA, ``torch.cuda.current_device()`` is the CPU and
    ``torch.cuda.synchronize()`` does nothing. With CUDA this is a no-op."""
    if not cuda_absent():
        yield
        return
    saved = (torch.cuda.current_device, torch.cuda.synchronize)
    torch.cuda.current_device = _cpu_current_device  # type: ignore[assignment]
    torch.cuda.synchronize = _no_synchronize  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.cuda.current_device, torch.cuda.synchronize = saved  # type: ignore[assignment]


#: ``(module, owner attribute or None, function)`` that call ``torch.cuda.current_device()`` on
#: the paths the engine uses: RoPE frequencies, and the tensor-parallel gathers/reduce-scatters
#: (the row-parallel head's backward gathers along the last dimension).
CUDA_DEVICE_CALLS: tuple[tuple[str, str | None, str], ...] = (
    ("megatron.core.models.common.embeddings.rotary_pos_embedding", "RotaryEmbedding", "get_emb"),
    ("megatron.core.tensor_parallel.mappings", None, "_gather_along_first_dim"),
    ("megatron.core.tensor_parallel.mappings", None, "_gather_along_last_dim"),
    ("megatron.core.tensor_parallel.mappings", None, "_reduce_scatter_along_first_dim"),
)


def _in_cpu_device_shims(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run inside :func:`cuda_device_shims`."""
    @functools.wraps(fn)
    def shimmed(*args: Any, **kwargs: Any) -> Any:
        with cuda_device_shims():
            return fn(*args, **kwargs)

    return shimmed


def patch_cuda_device_calls() -> None:
    """Wrap each of :data:`CUDA_DEVICE_CALLS` in :func:`cuda_device_shims` (idempotent)."""
    import importlib

    for module_name, owner_name, func_name in CUDA_DEVICE_CALLS:
        module = importlib.import_module(module_name)
        owner: Any = getattr(module, owner_name) if owner_name else module
        original = getattr(owner, func_name)
        if getattr(original, "_rm_registry_cpu_patch", False):
            continue

        shimmed = _in_cpu_device_shims(original)
        shimmed._rm_registry_cpu_patch = True  # type: ignore[attr-defined]
        setattr(owner, func_name, shimmed)


def apply_cpu_workarounds(*, seed: int, tp_rank: int) -> bool:
    """Apply every workaround if CUDA is absent; return whether they were applied.

    Call after ``parallel_state.initialize_model_parallel``. Also turns on
    ``torch.set_flush_denormal(True)`` (denormals slowed one CPU run 30-fold).
    """
    check_megatron_version()
    if not cuda_absent():
        return False
    torch.set_flush_denormal(True)
    install_rng_tracker(seed, tp_rank)
    install_memory_buffer()
    patch_cuda_device_calls()
    patch_recompute_rng()
    patch_autocast_functions()
    return True


#: megatron-core's autograd functions whose ``forward`` / ``backward`` carry CUDA-only
#: ``custom_fwd`` / ``custom_bwd`` decorators.
AUTOCAST_FUNCTIONS: tuple[tuple[str, str], ...] = (
    ("megatron.core.tensor_parallel.layers", "LinearWithFrozenWeight"),
    ("megatron.core.tensor_parallel.layers", "LinearWithGradAccumulationAndAsyncCommunication"),
)


def patch_autocast_functions() -> None:
    """Re-decorate :data:`AUTOCAST_FUNCTIONS` with ``custom_fwd/custom_bwd(device_type="cpu")``, so
    their backward runs under the autocast state of their forward on the CPU too (idempotent).
    Both also run inside :func:`cuda_device_shims`: under sequence parallelism the backward
    allocates its reduce-scatter output on ``torch.cuda.current_device()``."""
    import importlib

    for module_name, class_name in AUTOCAST_FUNCTIONS:
        cls = getattr(importlib.import_module(module_name), class_name)
        for name, decorate in (("forward", torch.amp.custom_fwd), ("backward", torch.amp.custom_bwd)):
            method = cls.__dict__[name]
            fn = method.__func__ if isinstance(method, staticmethod) else method
            if getattr(fn, "_rm_registry_cpu_patch", False):
                continue
            wrapped = decorate(_in_cpu_device_shims(getattr(fn, "__wrapped__", fn)), device_type="cpu")
            wrapped._rm_registry_cpu_patch = True  # type: ignore[attr-defined]
            setattr(cls, name, staticmethod(wrapped))


def patch_recompute_rng() -> None:
    """Without CUDA, make ``tensor_parallel.random``'s save/restore of all RNG states (used by
    recomputation) skip the CUDA generator; the CPU generator and the tracker are kept (idempotent)."""
    from megatron.core.tensor_parallel import random as mrandom

    if getattr(mrandom._get_all_rng_states, "_rm_registry_cpu_patch", False):
        return

    def get_all() -> tuple[torch.Tensor, None, dict[str, Any]]:
        return torch.get_rng_state(), None, mrandom.get_cuda_rng_tracker().get_states()

    def set_all(cpu_rng_state: torch.Tensor, cuda_rng_state: Any, tracker_states: dict[str, Any]) -> None:
        torch.set_rng_state(cpu_rng_state)
        mrandom.get_cuda_rng_tracker().set_states(tracker_states)

    get_all._rm_registry_cpu_patch = True  # type: ignore[attr-defined]
    mrandom._get_all_rng_states = get_all
    mrandom._set_all_rng_states = set_all
