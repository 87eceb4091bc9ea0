"""The megatron-core engine shared by every architecture (needs the ``[megatron]`` extra).

Importing this package is cheap; its names import torch and megatron-core when first used.
``import rm_registry`` imports none of it.

Plugins build on :class:`RewardModel` and the helpers in :mod:`rm_registry.engine.data`;
users train with :func:`train`, and load checkpoints with :func:`load_reward_model`.

One package per stage, in the order data flows (file -> dataset -> batch -> model -> loss ->
metrics -> checkpoint)::

    rm_registry/engine/
      config/      the run's one config tree: defaults.yaml <- plugin <- YAML <- overrides;
                   NeMo-Aligner keys; the torch-free checks of the model's shape (_checks)
      data/        file -> dataset -> batch: JSON Lines, chat text, over-long policy, padding;
                   the splits (_splits); steps and micro-batches under the token budget (_batching)
      tokenizer.py the byte tokenizer, tokenizer.json files, a Hugging Face folder's tokenizer
      model/       config -> megatron-core GPT backbone + pooling + head: rewards [N, K]
      parallel/    torch.distributed and megatron's TP x DP state; the CPU workarounds
      trainer/     the loop: batch -> model -> plugin.loss -> gradients -> optimizer (_optim);
                   metrics.jsonl and TensorBoard / W&B (_loggers); metric means (_metrics)
      evaluation/  rewards over a data set -> plugin.evaluation_metrics (validation, evaluate);
                   benchmarks/: RewardBench v1/v2, RM-Bench and probes (evaluate --benchmark)
      checkpoint/  save, verify, find, load; restricted unpickling; atomic files; the run folder
      hf/          Hugging Face folders in (--pretrained, scoring) and out (export)
      api.py       load_reward_model, score, score_file, evaluate: the inference entry points
      _contract.py the optional plugin members, applied in one place; _conformance.py checks them
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from . import _warnings

# Before any engine module imports megatron-core: silence its known-harmless warnings (only those).
_warnings.install()

# Public name -> submodule. Resolved on first access, so that importing a light submodule
# (``rm_registry.engine.data``, ``.config``) does not import megatron-core.
_EXPORTS = {
    "LoadedRewardModel": "api",
    "load_reward_model": "api",
    "score_file": "api",
    "CheckpointDamagedError": "checkpoint",
    "check_checkpoint": "checkpoint._safe_pickle",
    "safe_torch_load": "checkpoint._safe_pickle",
    "find_latest": "checkpoint",
    "is_complete": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "verify_checkpoint": "checkpoint",
    "build_config": "config",
    "RewardModel": "model",
    "ParallelInfo": "parallel",
    "initialize": "parallel",
    "ByteTokenizer": "tokenizer",
    "HFTokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "TrainResult": "trainer",
    "evaluate_dataset": "evaluation",
    "compare_results": "evaluation.benchmarks",
    "train": "trainer",
}

__all__ = [
    "ByteTokenizer",
    "CheckpointDamagedError",
    "HFTokenizer",
    "LoadedRewardModel",
    "ParallelInfo",
    "RewardModel",
    "TrainResult",
    "build_config",
    "check_checkpoint",
    "compare_results",
    "evaluate_dataset",
    "find_latest",
    "initialize",
    "is_complete",
    "load_checkpoint",
    "load_reward_model",
    "load_tokenizer",
    "safe_torch_load",
    "save_checkpoint",
    "score_file",
    "train",
    "verify_checkpoint",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rm_registry.engine' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
