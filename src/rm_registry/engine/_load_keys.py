"""The config keys that may be overridden when a checkpoint is loaded (``evaluate``, ``score``,
``serve``, :func:`rm_registry.engine.load_reward_model`); the rest describes the trained model.

Torch-free, so that ``--help`` and the refusal message list the same set.
"""

from __future__ import annotations

__all__ = ["LOAD_OVERRIDES", "load_overrides_text"]

LOAD_OVERRIDES = ("model.tensor_model_parallel_size", "model.pipeline_model_parallel_size", "model.micro_batch_size", "model.data.overlong_policy",
                  "model.attention_backend", "model.max_tokens_per_micro_batch", "model.data.columns",
                  "model.data.cache", "model.data.cache_dir", "model.compile")


def load_overrides_text() -> str:
    """The keys as ``--help`` lists them."""
    return ", ".join(LOAD_OVERRIDES) + ", and the architecture's own keys (model.NAME.*)"
