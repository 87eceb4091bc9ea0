"""A Hugging Face folder's ``config.json``: where it is and how it is read (no family knowledge).

The lowest module of :mod:`rm_registry.engine.hf`: the tokenizer of a folder
(:func:`rm_registry.engine.tokenizer.folder_tokenizer`), the family tables and the weight loader
all read ``config.json`` through :func:`read_config`. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..._errors import ConfigError

__all__ = ["CONFIG", "META_KEY", "is_token_classifier", "read_config"]

CONFIG = "config.json"
#: Section of an exported ``config.json`` that records the rm-registry architecture and its settings.
META_KEY = "rm_registry"


def read_config(folder: str | Path) -> dict[str, Any]:
    """``config.json`` of a Hugging Face folder.

    Raises:
        ConfigError: the folder or the file is missing or malformed (naming it).
    """
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{p}: no such folder (expected a Hugging Face model folder with config.json; "
                          "hub ids are not downloaded, download the folder first)")
    file = p / CONFIG
    if not file.is_file():
        raise ConfigError(f"{file}: missing; {p} is not a Hugging Face model folder")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{file}: malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    return data


def is_token_classifier(hf: dict[str, Any]) -> bool:
    """Whether ``config.json`` (as read) names a ``*ForTokenClassification`` architecture: a
    token-level reward model (a process reward model) whose head, bias included, applies at every token."""
    return any(str(a).endswith("ForTokenClassification") for a in hf.get("architectures") or [])
