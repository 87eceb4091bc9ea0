"""Keep the best k checkpoints (NeMo-Aligner's ``exp_manager.checkpoint_callback_params``).

``save_top_k: k`` with ``monitor: val_<metric>`` and ``mode: min|max``: after each checkpoint,
only the k checkpoints with the best monitored validation metric (the latest validation before
each save) are kept, plus the latest checkpoint (to resume from). The monitored values live in
``RUN/checkpoints/top_k.json``. ``save_top_k`` null or -1 keeps every checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig

from ..._errors import ConfigError
from ._fs import atomic_write_text

__all__ = ["keep_top_k"]

_FILE = "top_k.json"


def _monitored(validation: Mapping[str, Any] | None, monitor: str) -> float | None:
    if validation is None:
        return None
    name = monitor[len("val_"):]
    if name not in validation:
        numeric = sorted(k for k, v in validation.items() if isinstance(v, (int, float)))
        raise ConfigError(f"exp_manager.checkpoint_callback_params.monitor={monitor}: the validation metrics have no "
                          f"{name!r}; choose one of {', '.join('val_' + k for k in numeric)}")
    value = validation[name]
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def keep_top_k(output_dir: Path, saved: Path, validation: Mapping[str, Any] | None, cfg: DictConfig, *,
               enabled: bool) -> list[Path]:
    """Record ``saved``'s monitored value and delete checkpoints outside the best k (main rank).

    Checkpoints without a value (saved before any validation) rank last.

    Returns:
        The checkpoint folders deleted.
    """
    params = cfg.exp_manager.checkpoint_callback_params
    k = params.save_top_k
    if not enabled or k is None or k == -1:
        return []
    folder = output_dir / "checkpoints"
    index_path = folder / _FILE
    values: dict[str, float | None] = json.loads(index_path.read_text()) if index_path.is_file() else {}
    values[saved.name] = _monitored(validation, str(params.monitor))
    values = {name: v for name, v in values.items() if (folder / name).is_dir()}
    sign = 1.0 if params.mode == "min" else -1.0
    ranked = sorted(values, key=lambda name: (values[name] is None, sign * (values[name] or 0.0), name))
    keep = set(ranked[: int(k)]) | {saved.name}
    removed = []
    for name in ranked:
        if name not in keep:
            shutil.rmtree(folder / name, ignore_errors=True)
            removed.append(folder / name)
    atomic_write_text(index_path, json.dumps({n: values[n] for n in sorted(keep)}, indent=2) + "\n")
    return removed
