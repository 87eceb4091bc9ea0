"""The run folder around the checkpoints: what a checkpoint carries beside the weights, and where
a run resumes from.

A run folder::

    RUN/config.yaml  data_stats.json  metrics.jsonl
    RUN/checkpoints/step_0000100/     one checkpoint (see the package docstring)

In: ``--output RUN`` with ``--resume`` / ``--resume-from``. Out: the checkpoint to resume from (or
none: a fresh run), refusing to mix two runs in one folder; writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..._errors import ConfigError
from ..config import to_yaml
from ..progress import say
from ..tokenizer import tokenizer_to_dir
from . import _provenance
from . import CheckpointDamagedError, CheckpointNotFoundError, find_latest, is_complete, verify_checkpoint
from ._fs import check_output_dir

if TYPE_CHECKING:  # pragma: no cover
    from omegaconf import DictConfig

    from ..._protocol import RewardModelPlugin, Tokenizer

__all__ = ["checkpoint_files", "resume_point", "run_folder_of", "step_folder"]


def step_folder(output_dir: Path, step: int) -> Path:
    """``RUN/checkpoints/step_XXXXXXX``, the checkpoint of ``step``."""
    return output_dir / "checkpoints" / f"step_{step:07d}"


def checkpoint_files(cfg: DictConfig, tokenizer: Tokenizer, plugin: RewardModelPlugin | None = None) -> dict[str, bytes | str]:
    """What a checkpoint folder carries beside the weights: the config, the tokenizer and (given
    ``plugin``) ``plugin.json``, the plugin's distribution and version."""
    import tempfile

    files: dict[str, bytes | str] = {"config.yaml": to_yaml(cfg)}
    if plugin is not None:
        files[_provenance.PLUGIN_FILE] = json.dumps(_provenance.plugin_record(plugin), indent=2) + "\n"
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_to_dir(tokenizer, Path(tmp))
        for f in sorted(Path(tmp).rglob("*")):
            if f.is_file():
                files[f"tokenizer/{f.relative_to(tmp).as_posix()}"] = f.read_bytes()
    return files


def resume_point(output_dir: Path, resume: bool, resume_from: Path | None = None) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run. Refuses to mix runs; writes nothing.

    With ``resume``, a run folder that never reached a complete checkpoint (interrupted early)
    starts over; a folder that is not one of our runs is refused. ``resume_from`` names one
    checkpoint folder of the run instead of its newest intact one.
    """
    check_output_dir(output_dir)
    if resume_from is not None:
        return _resume_checkpoint(output_dir, resume_from)
    if resume:
        try:
            return find_latest(output_dir)
        except CheckpointDamagedError:
            raise  # never start over a run whose checkpoints exist but are damaged
        except (ConfigError, FileNotFoundError) as exc:
            if (output_dir / "config.yaml").is_file() or not output_dir.exists() or not any(output_dir.iterdir()):
                say(f"--resume: no complete checkpoint in {output_dir}; starting the run over")
                return None
            raise ConfigError(f"--resume: nothing to resume in {output_dir}: {exc}") from None
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ConfigError(
            f"--output {output_dir} is not empty; pass --resume to continue the run in it (a run stopped "
            "before its first checkpoint starts over), or choose a new folder"
        )
    return None


def _resume_checkpoint(output_dir: Path, checkpoint: Path) -> Path:
    """``checkpoint`` if it is an intact checkpoint folder of the run in ``output_dir``."""
    checkpoint = Path(checkpoint)
    if not is_complete(checkpoint):
        raise CheckpointNotFoundError(
            f"--resume-from {checkpoint}: not a complete checkpoint folder (expected "
            f"{output_dir / 'checkpoints' / 'step_XXXXXXX'})"
        )
    if checkpoint.resolve().parent != (output_dir / "checkpoints").resolve():
        raise ConfigError(f"--resume-from {checkpoint}: not a checkpoint of the run in {output_dir} "
                          f"(expected one of {output_dir / 'checkpoints'}/step_XXXXXXX)")
    verify_checkpoint(checkpoint)
    return checkpoint


def run_folder_of(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint folder ``RUN/checkpoints/step_XXXXXXX`` (for ``--resume-from``)."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name != "checkpoints":
        raise ConfigError(f"--resume-from {checkpoint}: expected a checkpoint folder RUN/checkpoints/step_XXXXXXX; "
                          "give --output RUN too")
    return checkpoint.parent.parent


