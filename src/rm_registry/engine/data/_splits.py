"""Data splits as NeMo-Aligner users write them: ``model.data.data_prefix.<split>``.

Each split (``train``, ``validation``, ``test``, and extra validation sets ``validation_<name>``)
is one of:

* a path: ``train: data/train.jsonl``;
* a list of paths, read one after the other (concatenated): ``train: [a.jsonl, b.jsonl]``;
* NeMo-Aligner's weighted blend ``[0.7, a.jsonl, 0.3, b.jsonl]``: the split has as many samples as
  its files together, drawn from each file in proportion to its weight (a file with more weight
  than samples repeats from its start, one with less contributes its first samples), interleaved
  evenly. The order is deterministic.

Every file is read by the plugin (one file at a time), so every format and check of the plugin
applies unchanged: through the token cache (``_cache``) when the plugin describes its samples
(``text_samples`` / ``sample_from_tokens``), else by its ``build_datasets``. A split of several
files is a view over them (:class:`ConcatDataset`), not a copy. ``model.data.columns`` travels with
each path (``_sources.DataSource``). Nothing here imports torch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from omegaconf import ListConfig, OmegaConf

from ..._errors import ConfigError
from . import DatasetStats
from ._sources import with_columns
from ._tokens import describes_samples

if TYPE_CHECKING:  # pragma: no cover
    from omegaconf import DictConfig

    from ..._protocol import RewardModelPlugin, Tokenizer

__all__ = ["ConcatDataset", "build_split_datasets", "describe", "normalize_prefix", "read_split_file"]


def _is_weight(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def normalize_prefix(split: str, value: Any) -> list[tuple[float | None, str]]:
    """``[(weight or None, path), ...]`` for one split's ``data_prefix`` value (``[]`` for null).

    Raises:
        ConfigError: naming ``model.data.data_prefix.<split>`` and what is wrong.
    """
    key = f"model.data.data_prefix.{split}"
    if value is None:
        return []
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key}={value!r}: expected a path, a list of paths, or a blend [weight, path, weight, path]")
    if all(isinstance(v, str) for v in value):
        return [(None, str(v)) for v in value]
    if len(value) % 2 or not all(_is_weight(w) and isinstance(p, str) for w, p in zip(value[0::2], value[1::2])):
        raise ConfigError(
            f"{key}={value!r}: a weighted blend alternates weights and paths, e.g. [0.7, a.jsonl, 0.3, b.jsonl]; "
            "a plain list of paths concatenates the files"
        )
    weights = [float(w) for w in value[0::2]]
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"{key}={value!r}: blend weights must be finite, >= 0 and not all 0")
    return list(zip(weights, (str(p) for p in value[1::2])))


def describe(entries: Sequence[tuple[float | None, str]]) -> str:
    """``a.jsonl + b.jsonl`` or ``0.7 x a.jsonl + 0.3 x b.jsonl`` (for messages)."""
    return " + ".join(p if w is None else f"{w:g} x {p}" for w, p in entries)


def _blend_order(sizes: Sequence[int], weights: Sequence[float]) -> list[tuple[int, int]]:
    """``(dataset, index)`` pairs of a blend of ``sum(sizes)`` samples, see the module docstring."""
    total, norm = sum(sizes), sum(weights)
    counts = [int(round(total * w / norm)) if n else 0 for n, w in zip(sizes, weights)]
    picks = [((j + 0.5) / c, d, j % sizes[d]) for d, c in enumerate(counts) for j in range(c)]
    picks.sort()
    return [(d, i) for _, d, i in picks]


class ConcatDataset(Sequence[Any]):
    """Samples ``order[k] = (part, index)`` of several datasets, without copying them."""

    def __init__(self, parts: list[Sequence[Any]], order: list[tuple[int, int]], stats: DatasetStats, path: str):
        import numpy as np

        self.parts, self.stats, self.path = parts, stats, path
        self._order = np.asarray(order, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return int(self._order.shape[0])

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        part, i = self._order[int(index)]
        return self.parts[int(part)][int(i)]

    @property
    def samples(self) -> list[Any]:
        """Every sample, in order (made now)."""
        return [self[i] for i in range(len(self))]

    def sequence_counts(self) -> tuple[list[int], list[int]] | None:
        """Rows and longest row per sample when every part knows them (token datasets)."""
        if not all(callable(getattr(p, "sequence_counts", None)) for p in self.parts):
            return None
        counts = [p.sequence_counts() for p in self.parts]  # type: ignore[attr-defined]
        if any(c is None for c in counts):
            return None
        rows = [counts[int(d)][0][int(i)] for d, i in self._order]
        longest = [counts[int(d)][1][int(i)] for d, i in self._order]
        return rows, longest


def _combine(parts: list[Sequence[Any]], entries: Sequence[tuple[float | None, str]]) -> ConcatDataset:
    stats = DatasetStats()
    for part in parts:
        s = getattr(part, "stats", None)
        counts = s.as_dict() if hasattr(s, "as_dict") else dict(s or {"kept": len(part)})
        for name in ("read", "kept", "truncated", "dropped"):
            setattr(stats, name, getattr(stats, name) + int(counts.get(name, 0)))
    if entries[0][0] is None:
        order = [(d, i) for d, part in enumerate(parts) for i in range(len(part))]
    else:
        order = _blend_order([len(p) for p in parts], [w or 0.0 for w, _ in entries])
        stats.kept = len(order)
    return ConcatDataset(parts, order, stats, describe(entries))


def read_split_file(plugin: RewardModelPlugin, split: str, path: str, tokenizer: Tokenizer, cfg: DictConfig, *,
                    progress: bool = False) -> Sequence[Any]:
    """One data file of one split, as the plugin reads it: through the token cache when the plugin
    describes its samples, else its ``build_datasets``; ``model.data.columns`` applied either way."""
    source = with_columns(path, OmegaConf.select(cfg, "model.data.columns", default=None))
    if describes_samples(plugin):
        from ._cache import split_dataset

        return split_dataset(plugin, source, tokenizer, cfg, progress=progress)
    return plugin.build_datasets({split: source}, tokenizer, cfg)[split]


def build_split_datasets(plugin: RewardModelPlugin, data_prefix: Mapping[str, Any], tokenizer: Tokenizer,
                         cfg: DictConfig, *, progress: bool = False) -> tuple[dict[str, Sequence[Any]], dict[str, str]]:
    """Read every split of ``model.data.data_prefix`` with the plugin.

    Returns:
        ``({split: dataset}, {split: description of its files})`` for the splits that are set. A
        split of one file is that file's dataset itself.

    Raises:
        ConfigError: a malformed split value. DataError: from the plugin, naming the file and line.
    """
    datasets: dict[str, Sequence[Any]] = {}
    described: dict[str, str] = {}
    for split, value in data_prefix.items():
        entries = normalize_prefix(str(split), value)
        if not entries:
            continue
        parts = [read_split_file(plugin, str(split), path, tokenizer, cfg, progress=progress) for _, path in entries]
        datasets[str(split)] = parts[0] if len(entries) == 1 and entries[0][0] is None else _combine(parts, entries)
        described[str(split)] = describe(entries)
    return datasets, described
