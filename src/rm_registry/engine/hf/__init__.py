"""Hugging Face interop: start from a Hugging Face model, hand back a Hugging Face reward model.

In: a Hugging Face folder (``config.json``, safetensors, ``tokenizer.json``) or a checkpoint.
Out: config settings and converted weights for our model, or an exported folder.

Modules: ``_config`` (reading ``config.json``); ``_folder`` (the family of a folder, its settings);
``_load`` / ``_io`` (streaming weights in); ``_export``; ``_convert`` and ``_family`` (the
mapping rules); one table per family.

- ``rm-registry train NAME --pretrained DIR`` (NeMo key ``pretrained_checkpoint.restore_from_path``):
  the architecture comes from ``DIR/config.json`` (:func:`pretrained_settings`), the tokenizer and
  chat template from ``DIR`` (:func:`folder_tokenizer`), the weights from its safetensors
  (:func:`load_hf_weights`, streamed tensor by tensor);
- ``rm-registry export --checkpoint RUN --output DIR`` (:func:`export_checkpoint`): a
  ``*ForSequenceClassification`` folder (safetensors, ``config.json``, tokenizer files);
- ``--checkpoint HF_FOLDER`` for ``evaluate``/``score`` and :func:`rm_registry.engine.load_reward_model`.

One module per family (:mod:`.llama` for Llama and Mistral, :mod:`.qwen2`, :mod:`.qwen3`,
:mod:`.gpt2`); the conversions they share are in ``_convert``. See docs/pretrained.md.

Importing this package is cheap (no torch); the torch parts load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "FAMILIES": "_folder",
    "apply_pretrained": "_folder",
    "family_of": "_folder",
    "folder_tokenizer": "_folder",
    "is_hf_folder": "_folder",
    "looks_like_hf_folder": "_folder",
    "pretrained_settings": "_folder",
    "read_config": "_config",
    "load_hf_weights": "_load",
    "export_checkpoint": "_export",
    "export_model": "_export",
    "hf_folder_config": "_export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rm_registry.engine.hf' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
