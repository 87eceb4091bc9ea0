"""Guards on the megatron-core internals that ``engine/_cpu_compat.py`` relies on.

If one of these fails after a megatron-core upgrade, re-read the workaround it guards (the
module docstring lists them) and adapt it; do not just relax the test.
"""

from __future__ import annotations

import importlib
import inspect
import warnings

import pytest
import torch

from rm_registry.engine.parallel import _cpu_compat

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the workarounds apply only without CUDA")


def test_megatron_core_is_the_supported_series() -> None:
    from megatron.core import package_info

    assert package_info.__version__.startswith(_cpu_compat.SUPPORTED_MEGATRON_CORE + "."), (
        f"megatron-core {package_info.__version__} installed; _cpu_compat was written for "
        f"{_cpu_compat.SUPPORTED_MEGATRON_CORE}.x: check every workaround, then update SUPPORTED_MEGATRON_CORE"
    )


def test_other_version_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    from megatron.core import package_info

    monkeypatch.setattr(package_info, "__version__", "0.99.0")
    monkeypatch.setattr(_cpu_compat, "_VERSION_CHECKED", False)
    with pytest.warns(RuntimeWarning, match=r"written for megatron-core 0\.16\.x.*0\.99\.0"):
        _cpu_compat.check_megatron_version()


def test_rng_tracker_internals() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    for name in ("_CUDA_RNG_STATE_TRACKER", "_CUDA_RNG_STATE_TRACKER_INITIALIZED",
                 "_MODEL_PARALLEL_RNG_TRACKER_NAME", "_DATA_PARALLEL_RNG_TRACKER_NAME",
                 "_EXPERT_PARALLEL_RNG_TRACKER_NAME"):
        assert hasattr(mrandom, name), f"megatron.core.tensor_parallel.random.{name} is gone"
    tracker = mrandom.CudaRNGStatesTracker
    assert list(inspect.signature(tracker.add).parameters) == ["self", "name", "seed"]
    assert list(inspect.signature(tracker.fork).parameters) == ["self", "name"]
    for attr in ("states_", "seeds_", "_current_state_name", "_is_initialized"):
        assert hasattr(tracker(), attr), f"CudaRNGStatesTracker lost attribute {attr}"
    # The stock tracker still reads CUDA generator states (else the workaround is unnecessary).
    assert "torch.cuda.get_rng_state" in inspect.getsource(tracker.add)
    # get_cuda_rng_tracker returns the module global we replace.
    assert "_CUDA_RNG_STATE_TRACKER" in inspect.getsource(mrandom.get_cuda_rng_tracker)


def test_memory_buffer_internals() -> None:
    from megatron.core import parallel_state
    from megatron.core.utils import GlobalMemoryBuffer

    assert list(inspect.signature(GlobalMemoryBuffer.get_tensor).parameters) == [
        "self", "tensor_shape", "dtype", "name", "mem_alloc_context"]
    assert "torch.cuda.current_device()" in inspect.getsource(GlobalMemoryBuffer.get_tensor)
    assert hasattr(parallel_state, "_GLOBAL_MEMORY_BUFFER")
    assert "_GLOBAL_MEMORY_BUFFER" in inspect.getsource(parallel_state.get_global_memory_buffer)
    from megatron.core.transformer import dot_product_attention

    assert "get_global_memory_buffer().get_tensor(" in inspect.getsource(dot_product_attention)


@pytest.mark.parametrize("module_name, owner, func", _cpu_compat.CUDA_DEVICE_CALLS)
def test_shimmed_functions_still_call_cuda(module_name: str, owner: str | None, func: str) -> None:
    module = importlib.import_module(module_name)
    fn = getattr(getattr(module, owner) if owner else module, func)
    fn = inspect.unwrap(fn)
    assert "torch.cuda.current_device()" in inspect.getsource(fn), (
        f"{module_name}.{owner + '.' if owner else ''}{func} no longer calls torch.cuda.current_device(): "
        "drop it from CUDA_DEVICE_CALLS"
    )


def test_dist_checkpointing_save_still_needs_the_shims() -> None:
    from megatron.core.dist_checkpointing.strategies import filesystem_async, state_dict_saver

    assert "torch.cuda.current_device()" in inspect.getsource(state_dict_saver)
    assert "torch.cuda.synchronize()" in inspect.getsource(filesystem_async)


def test_gpt_model_postprocess_hook() -> None:
    """The reward model returns hidden states by overriding GPTModel._postprocess."""
    from megatron.core.models.gpt import GPTModel

    assert "return self._postprocess(" in inspect.getsource(GPTModel.forward)
    assert "hidden_states" in inspect.signature(GPTModel._postprocess).parameters


@needs_no_cuda
def test_cuda_device_shims_are_scoped() -> None:
    original = torch.cuda.current_device
    with _cpu_compat.cuda_device_shims():
        assert torch.cuda.current_device() == torch.device("cpu")
        torch.cuda.synchronize()
    assert torch.cuda.current_device is original


@needs_no_cuda
def test_flush_denormal_is_on(parallel_info: object) -> None:
    tiny = torch.tensor([1e-310], dtype=torch.float64)
    assert (tiny * 1.0).item() == 0.0


@needs_no_cuda
def test_forward_works_only_thanks_to_the_workarounds(build_model, monkeypatch: pytest.MonkeyPatch) -> None:
    from megatron.core import parallel_state
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.tensor_parallel import random as mrandom
    from megatron.core.utils import GlobalMemoryBuffer

    tokens = torch.randint(0, 258, (2, 6))
    lengths = torch.tensor([6, 3])
    # megatron's own DotProductAttention is what needs the scratch buffer and the RNG tracker
    # (the SDPA core attention needs neither).
    model = build_model(position_embedding_type="rope", attention_backend="local")
    assert model(tokens, lengths).shape == (2, 1)  # patched: works

    with monkeypatch.context() as m:  # stock scratch buffer: allocates on CUDA
        m.setattr(parallel_state, "_GLOBAL_MEMORY_BUFFER", GlobalMemoryBuffer())
        with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
            model(tokens, lengths)
    with monkeypatch.context() as m:  # stock RNG tracker: reads CUDA generator states
        stock = mrandom.CudaRNGStatesTracker()
        stock.states_[mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME] = torch.get_rng_state()
        m.setattr(mrandom, "_CUDA_RNG_STATE_TRACKER", stock)
        with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
            model(tokens, lengths)
    with monkeypatch.context() as m:  # stock RoPE: moves frequencies to CUDA
        m.setattr(RotaryEmbedding, "get_emb", inspect.unwrap(RotaryEmbedding.get_emb))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fresh = build_model(position_embedding_type="rope")
            with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
                fresh(tokens, lengths)
    assert model(tokens, lengths).shape == (2, 1)  # and works again
