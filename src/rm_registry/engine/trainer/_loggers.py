"""Where the training metrics go: ``metrics.jsonl`` (:class:`MetricsLog`, always), and TensorBoard
and Weights & Biases (NeMo-Aligner's ``exp_manager`` logger keys) when configured.

In: one record per logged step and split (``{"step", "split", metric: value, ...}``).
Out: a line of ``RUN/metrics.jsonl``, and the same scalars in the configured loggers.

``exp_manager.create_tensorboard_logger: true`` writes event files to ``RUN/tensorboard``;
``exp_manager.create_wandb_logger: true`` starts a W&B run with ``exp_manager.wandb_logger_kwargs``
(``project``, ``name``, ``entity``, ``group``, ``tags``, ``notes``, ``save_dir``, ``offline``; the
environment's ``WANDB_MODE`` etc. apply as usual). Every record of ``metrics.jsonl`` is mirrored
as scalars named ``<split>/<metric>`` (nested metrics as ``<split>/<metric>/<sub>``) at its step.
Both packages are optional: ``pip install 'rm-registry[loggers]'``. Main rank only.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from ..._errors import ConfigError, DataError
from ..checkpoint._fs import atomic_write_text, writing

__all__ = ["MetricsLog", "attach_loggers", "check_loggers"]

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


class MetricsLog:
    """``metrics.jsonl`` writer (main rank only). On resume, lines after the checkpoint's step are dropped.

    The kept lines are rewritten atomically. A torn last line (the process died or the disk filled
    while it was written) is dropped with a warning; a bad line before it is a :class:`DataError`.
    """

    def __init__(self, path: Path, *, enabled: bool, keep_until_step: int | None) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if keep_until_step is not None and path.exists():
            kept = [line for line, record in _read_metrics(path) if record.get("step", 0) <= keep_until_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        with writing(path):
            self._fh = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with writing(self.path):
                self._fh.write(json.dumps(record, allow_nan=False, default=_json_default) + "\n")
                self._fh.flush()

    def close(self) -> None:
        if self.enabled:
            try:
                self._fh.close()
            except OSError:  # the data that failed to flush was reported by write()
                pass


def _read_metrics(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(line, record)`` of each line of ``metrics.jsonl``; a torn last line is dropped with a warning."""
    with writing(path, "read"):
        lines = [(number, line) for number, line in enumerate(path.read_text(encoding="utf-8",
                                                                             errors="replace").splitlines(), 1)
                 if line.strip()]
    out = []
    for number, line in lines:
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if number != lines[-1][0]:
                raise DataError(path, number, f"not a JSON object ({exc}); repair or delete the line to resume") \
                    from None
            warnings.warn(f"{path}:{number}: dropped a torn last line (a write was interrupted)", RuntimeWarning,
                          stacklevel=3)
            continue
        out.append((line, record))
    return out


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # a tensor
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
