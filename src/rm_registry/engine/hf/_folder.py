"""A Hugging Face model folder: ``config.json`` -> family and ``model.*`` settings, its tokenizer.

No torch here: ``rm-registry train --pretrained`` reads the settings while building the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..._errors import ConfigError
from . import gpt2, llama, qwen2, qwen3
from ..tokenizer import folder_tokenizer
from ._config import CONFIG, META_KEY, is_token_classifier, read_config
from ._family import Family

__all__ = ["FAMILIES", "looks_like_hf_folder", "family_for_config", "family_of", "is_hf_folder", "pretrained_settings", "read_config",
           "folder_tokenizer", "CONFIG", "META_KEY"]

#: Every supported family (one module each).
FAMILIES: tuple[Family, ...] = (llama.FAMILY, qwen2.FAMILY, qwen3.FAMILY, gpt2.FAMILY)


def is_hf_folder(path: str | Path) -> bool:
    """A folder with ``config.json`` and no rm-registry checkpoint marker or run config."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG).is_file() and not (p / "checkpoint.json").exists() \
        and not (p / "config.yaml").exists() and not (p / "checkpoints").is_dir()


def looks_like_hf_folder(path: str | Path) -> bool:
    """Hugging Face weights or tokenizer files there (with or without ``config.json``)."""
    p = Path(path)
    marks = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "tokenizer.json")
    return p.is_dir() and (is_hf_folder(p) or (any((p / m).is_file() for m in marks)
                                               and not (p / "checkpoint.json").exists()))


def family_for_config(hf: Mapping[str, Any], file: Path) -> Family:
    """The family of ``config.json``'s ``model_type``.

    Raises:
        ConfigError: naming ``model_type`` and the supported ones.
    """
    model_type = hf.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise ConfigError(f"{file}: model_type={model_type!r} is not supported (supported: {known})")


def family_of(model: Any) -> Family:
    """The family that represents ``cfg.model`` exactly (for export).

    Raises:
        ConfigError: no family does; names the first mismatching key of each candidate.
    """
    reasons = []
    for family in FAMILIES:
        why = family.mismatch(model)
        if why is None:
            return family
        reasons.append(f"{family.name}: {why}")
    raise ConfigError("no Hugging Face family represents this model exactly (" + "; ".join(reasons) + ")")


def pretrained_settings(folder: str | Path) -> dict[str, Any]:
    """``{"model.key": value}`` for a model starting from ``folder``: its architecture, vocabulary,
    tokenizer, and a bias-free head (as Hugging Face's).

    Raises:
        ConfigError: missing/malformed ``config.json``, an unsupported family or option (naming
            the ``config.json`` field), no ``tokenizer.json``, or a tokenizer larger than the embedding.
    """
    p = Path(folder).expanduser()
    hf = read_config(p)
    file = p / CONFIG
    family = family_for_config(hf, file)
    settings = family.settings(hf, file)
    vocab = hf.get("vocab_size")
    if not isinstance(vocab, int) or vocab < 1:
        raise ConfigError(f"{file}: vocab_size={vocab!r}: expected a positive integer")
    # Sequence classifiers have a bias-free head; token classifiers' heads have a bias.
    settings.update({"model.vocab_size": vocab, "model.head_bias": is_token_classifier(hf),
                     "model.tokenizer.library": "huggingface", "model.tokenizer.path": str(p)})
    tok = folder_tokenizer(p)
    if tok.vocab_size > vocab:
        raise ConfigError(f"{tok.path}: the tokenizer has {tok.vocab_size} tokens but {file} has vocab_size={vocab}: "
                          "its ids do not fit the embedding")
    return settings


def apply_pretrained(cfg: Any, user_keys: Mapping[str, Any]) -> Any:
    """Set ``cfg``'s architecture from ``pretrained_checkpoint.restore_from_path`` (in place).

    Args:
        user_keys: The flattened keys the user set (YAML file and command line): one that
            contradicts ``config.json`` is refused rather than silently replaced.

    Raises:
        ConfigError: naming the key, its value and what ``config.json`` says.
    """
    from omegaconf import OmegaConf

    folder = str(OmegaConf.select(cfg, "pretrained_checkpoint.restore_from_path"))
    if OmegaConf.select(cfg, "pretrained_checkpoint.load_rm_head_weights", default=None) is True:
        architectures = read_config(Path(folder)).get("architectures") or []
        if not any(str(a).endswith(("ForSequenceClassification", "ForTokenClassification")) for a in architectures):
            raise ConfigError(
                f"pretrained_checkpoint.load_rm_head_weights=true but {Path(folder) / CONFIG} names no "
                f"*ForSequenceClassification or *ForTokenClassification architecture ({', '.join(map(str, architectures)) or 'none'}): a base "
                "model has no head to load; set it to false or null to start a new head")
    for key, value in pretrained_settings(folder).items():
        if key in user_keys and user_keys[key] is not None and user_keys[key] != value:
            raise ConfigError(f"{key}={user_keys[key]!r} contradicts {Path(folder) / CONFIG} ({value!r}); "
                              "with --pretrained the architecture comes from the folder, leave it unset")
        OmegaConf.update(cfg, key, value, merge=False)
    longest = OmegaConf.select(cfg, "model.max_position_embeddings")
    if "model.encoder_seq_length" not in user_keys and longest and cfg.model.encoder_seq_length > longest:
        cfg.model.encoder_seq_length = longest  # the default does not fit this model's positions
    return cfg
