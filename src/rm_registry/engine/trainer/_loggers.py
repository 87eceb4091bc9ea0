"""TensorBoard and Weights & Biases logging (NeMo-Aligner's ``exp_manager`` logger keys).

``exp_manager.create_tensorboard_logger: true`` writes event files to ``RUN/tensorboard``;
``exp_manager.create_wandb_logger: true`` starts a W&B run with ``exp_manager.wandb_logger_kwargs``
(``project``, ``name``, ``entity``, ``group``, ``tags``, ``notes``, ``save_dir``, ``offline``; the
environment's ``WANDB_MODE`` etc. apply as usual). Every record of ``metrics.jsonl`` is mirrored
as scalars named ``<split>/<metric>`` (nested metrics as ``<split>/<metric>/<sub>``) at its step.
Both packages are optional: ``pip install 'rm-registry[loggers]'``. Main rank only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from ..._errors import ConfigError

__all__ = ["attach_loggers", "check_loggers"]

_WANDB_KWARGS = ("project", "name", "entity", "group", "tags", "notes", "save_dir", "offline", "id", "job_type")


def check_loggers(cfg: DictConfig) -> None:
    """Refuse, before anything is written, a logger whose package is not installed.

    Raises:
        ConfigError: naming the key and the install command.
    """
    em = cfg.exp_manager
    for key, module in (("create_tensorboard_logger", "tensorboard"), ("create_wandb_logger", "wandb")):
        if em[key] and importlib.util.find_spec(module) is None:
            raise ConfigError(f"exp_manager.{key}=true needs the {module} package: pip install 'rm-registry[loggers]' "
                              f"(or set exp_manager.{key}=false)")
    kwargs = OmegaConf.to_container(em.wandb_logger_kwargs, resolve=True) if em.wandb_logger_kwargs else {}
    unknown = sorted(set(kwargs) - set(_WANDB_KWARGS))  # type: ignore[arg-type]
    if em.create_wandb_logger and unknown:
        raise ConfigError(f"exp_manager.wandb_logger_kwargs.{unknown[0]}: not supported; accepted: {', '.join(_WANDB_KWARGS)}")


def _scalars(record: Mapping[str, Any], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("step", "split"):
            continue
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            out.update(_scalars(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            out[name] = float(value)
    return out


class _Tee:
    """``metrics.jsonl`` writer that also sends every record to TensorBoard and/or W&B."""

    def __init__(self, log: Any, cfg: DictConfig, output_dir: Path) -> None:
        self.log, self.tb, self.run = log, None, None
        em = cfg.exp_manager
        if em.create_tensorboard_logger:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(output_dir / "tensorboard"))
        if em.create_wandb_logger:
            import wandb

            kwargs = dict(OmegaConf.to_container(em.wandb_logger_kwargs, resolve=True) or {})  # type: ignore[arg-type]
            save_dir = kwargs.pop("save_dir", None) or str(output_dir)
            if kwargs.pop("offline", False):
                kwargs["mode"] = "offline"
            self.run = wandb.init(dir=save_dir, config=OmegaConf.to_container(cfg, resolve=True), **kwargs)

    def write(self, record: dict[str, Any]) -> None:
        self.log.write(record)
        scalars = _scalars(record, str(record.get("split", "train")))
        step = int(record.get("step", 0))
        if self.tb is not None:
            for name, value in scalars.items():
                self.tb.add_scalar(name, value, step)
        if self.run is not None and scalars:
            self.run.log(scalars, step=step)

    def close(self) -> None:
        self.log.close()
        if self.tb is not None:
            self.tb.close()
        if self.run is not None:
            self.run.finish()


def attach_loggers(log: Any, cfg: DictConfig, output_dir: Path, *, enabled: bool) -> Any:
    """``log`` itself, or a writer that also feeds the configured loggers (main rank only)."""
    em = cfg.exp_manager
    if not enabled or not (em.create_tensorboard_logger or em.create_wandb_logger):
        return log
    return _Tee(log, cfg, output_dir)
