"""Reading regression data: one JSON object per line, ``{"text": ..., "label": ...}``.

The label is one of (see ``docs/regression.md``):

* a list of K numbers in ``attribute_names`` order (NeMo-Aligner); entries equal to
  ``loss_mask_val`` (default -100) or ``null`` are masked;
* a SteerLM string ``"helpfulness:4,correctness:3"``; names not present are masked;
* an object ``{"helpfulness": 4, "correctness": 3}``; names not present are masked.

Only :func:`collate` needs torch (imported inside it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from rm_registry import DataError
from rm_registry.engine.data import ListDataset, encode_text, fit_length, pad_batch, read_jsonl, render_text

from ._config import RegressionSettings

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from rm_registry import Tokenizer

__all__ = ["RegressionPair", "RegressionSample", "parse_label", "read_regression_file", "pair_samples", "collate"]


@dataclass(frozen=True)
class RegressionSample:
    """One tokenized, labelled text.

    Attributes:
        ids: Token ids, EOS last (length at most ``model.encoder_seq_length``).
        label: K floats in attribute order; masked entries equal ``loss_mask_val``.
        line: 1-based line of the source file (for messages).
        index: 0-based record number in the file (A/B pairs of the Bradley-Terry losses are
            records 2i and 2i+1).
        truncated: The text was cut to ``model.encoder_seq_length``.
    """

    ids: list[int]
    label: tuple[float, ...]
    line: int
    index: int = -1
    truncated: bool = False


@dataclass(frozen=True)
class RegressionPair:
    """Responses A and B of one prompt (records 2i and 2i+1), one sample of the Bradley-Terry
    losses: whatever the batching (micro-batch size, token budget, shuffling, length grouping), a
    pair is never split. :func:`collate` lays its rows out as A then B.
    """

    a: RegressionSample
    b: RegressionSample

    @property
    def line(self) -> int:
        """The line of response A (B is on the next one)."""
        return self.a.line


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return out if math.isfinite(out) else None


def _known(names: Sequence[str]) -> str:
    return ", ".join(names)


def parse_label(value: Any, settings: RegressionSettings, *, path: str | Path, line: int) -> tuple[float, ...]:
    """Turn one ``label`` field into K floats in attribute order.

    Args:
        value: The JSON value of ``label`` (list, SteerLM string or object).
        settings: The resolved ``model.regression`` section (names, mask value).
        path: The file, for messages.
        line: The 1-based line, for messages.

    Returns:
        K floats; entries that are missing, ``null`` or equal to ``loss_mask_val`` are
        ``loss_mask_val``.

    Raises:
        DataError: wrong length, unknown or repeated attribute name, non-numeric value,
            unsupported type; the message names the file, the line and the attribute.
    """
    names = settings.attribute_names
    mask = settings.loss_mask_val
    k = len(names)
    out = [mask] * k

    def take(index: int, raw: Any, where: str) -> None:
        if raw is None:
            return
        if isinstance(raw, str) and where != "string":
            raise DataError(
                path, line, f"label value {raw!r} for attribute {names[index]!r} is a string; write it as a number"
            )
        number = _number(raw)
        if number is None:
            raise DataError(
                path, line, f"label value {raw!r} for attribute {names[index]!r} is not a finite number"
            )
        out[index] = number

    if isinstance(value, list):
        if len(value) != k:
            raise DataError(
                path,
                line,
                f"label has {len(value)} values but there are {k} attributes ({_known(names)}); "
                f"give one value per attribute, {mask:g} for a missing one, or set model.regression.attribute_names",
            )
        for i, raw in enumerate(value):
            take(i, raw, "list")
    elif isinstance(value, str):
        seen: set[str] = set()
        for piece in value.split(","):
            if not piece.strip():
                if value.strip():
                    raise DataError(path, line, f"label {value!r} has an empty entry; expected 'name:value,name:value'")
                continue
            name, sep, raw = piece.partition(":")
            name = name.strip()
            if not sep:
                raise DataError(path, line, f"label entry {piece.strip()!r} is not of the form 'name:value'")
            if name not in names:
                raise DataError(
                    path, line, f"unknown attribute {name!r} in label (known attributes: {_known(names)})"
                )
            if name in seen:
                raise DataError(path, line, f"attribute {name!r} appears twice in label {value!r}")
            seen.add(name)
            take(names.index(name), raw, "string")
    elif isinstance(value, dict):
        for name, raw in value.items():
            if name not in names:
                raise DataError(
                    path, line, f"unknown attribute {name!r} in label (known attributes: {_known(names)})"
                )
            take(names.index(name), raw, "object")
    else:
        raise DataError(
            path,
            line,
            f"'label' must be a list of {k} numbers, a 'name:value,...' string or an object "
            f"{{name: value}}, got {type(value).__name__}",
        )
    return tuple(out)


def read_regression_file(
    path: str | Path,
    tokenizer: Tokenizer,
    settings: RegressionSettings,
    *,
    seq_length: int,
    overlong_policy: str,
) -> ListDataset:
    """Read, validate and tokenize one JSON Lines file.

    Every line is validated (labels included) before anything is returned, also lines
    that the over-long policy later drops.

    Returns:
        A :class:`~rm_registry.engine.data.ListDataset` of :class:`RegressionSample`, with
        ``stats`` counting lines read, kept, truncated and dropped.

    Raises:
        DataError: naming the file, the line and the problem.
    """
    dataset = ListDataset(samples=[], path=str(path))
    stats = dataset.stats
    for lineno, obj in read_jsonl(path):
        stats.read += 1
        for key in ("text", "label"):
            if key not in obj:
                raise DataError(
                    path,
                    lineno,
                    f"missing key {key!r}; each line must be {{\"text\": ..., \"label\": ...}} "
                    f"(keys found: {', '.join(sorted(obj)) or 'none'})",
                )
        text = render_text(obj["text"], path=path, line=lineno, key="text")
        label = parse_label(obj["label"], settings, path=path, line=lineno)
        ids, truncated = fit_length(
            encode_text(tokenizer, text),
            seq_length,
            overlong_policy,
            eos_id=tokenizer.eos_id,
            path=path,
            line=lineno,
        )
        if ids is None:
            stats.dropped += 1
            continue
        stats.truncated += int(truncated)
        stats.kept += 1
        dataset.samples.append(RegressionSample(ids=ids, label=label, line=lineno, index=stats.read - 1,
                                                truncated=truncated))
    if not dataset.samples:
        raise DataError(
            path,
            None,
            f"no sample left: all {stats.read} are longer than model.encoder_seq_length={seq_length} "
            f"(model.data.overlong_policy={overlong_policy}); raise model.encoder_seq_length or use truncate",
        )
    return dataset


def pair_samples(dataset: ListDataset) -> ListDataset:
    """For the Bradley-Terry losses: one :class:`RegressionPair` per A/B pair of lines (records 2i,
    2i+1) whose two lines were kept, in file order; ``stats`` then count pairs.

    A line dropped as too long takes its partner with it (the pair counts as dropped), so that
    responses stay paired; NeMo-Aligner's wrap-around to the next sample broke the pairing instead.

    Raises:
        DataError: the file has an odd number of records.
    """
    if dataset.stats.read % 2:
        raise DataError(dataset.path or "?", None,
                        f"{dataset.stats.read} records: the Bradley-Terry losses need A/B pairs on consecutive lines "
                        "(an even number of lines)")
    by_index = {s.index: s for s in dataset.samples}
    pairs = [RegressionPair(by_index[i], by_index[i + 1]) for i in range(0, dataset.stats.read, 2)
             if i in by_index and i + 1 in by_index]
    out = ListDataset(samples=pairs, path=dataset.path)
    out.stats.read = dataset.stats.read // 2
    out.stats.kept = len(pairs)
    out.stats.dropped = out.stats.read - len(pairs)
    out.stats.truncated = sum(p.a.truncated or p.b.truncated for p in pairs)
    return out


def collate(samples: Sequence[RegressionSample | RegressionPair], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch, padded to the longest sequence.

    Returns:
        ``tokens`` ``[N, S]`` int64, ``lengths`` ``[N]`` int64 and ``labels`` ``[N, K]``
        float32 (masked entries hold ``loss_mask_val``): N = B rows for B texts, or N = 2B rows
        for B pairs (A of pair i on row 2i, B on row 2i + 1). With no samples, ``labels`` is
        ``[0, 0]`` (K is not known here; :func:`label_of` widens it to the rewards).
    """
    import torch

    samples = [row for s in samples for row in ((s.a, s.b) if isinstance(s, RegressionPair) else (s,))]
    if not samples:
        tokens, lengths = pad_batch([], pad_id)
        return {"tokens": tokens, "lengths": lengths, "labels": torch.zeros(0, 0)}
    tokens, lengths = pad_batch([s.ids for s in samples], pad_id)
    labels = torch.tensor([list(s.label) for s in samples], dtype=torch.float32)  # [B, K]
    return {"tokens": tokens, "lengths": lengths, "labels": labels}


def label_of(batch: Mapping[str, torch.Tensor], k: int | None = None) -> torch.Tensor:
    """``batch["labels"]`` ``[B, K]``, with a clear error when a batch lacks it.

    Given ``k``, the labels ``[0, 0]`` of an empty batch become ``[0, k]``.
    """
    if "labels" not in batch:
        raise KeyError("the batch has no 'labels'; it must come from the regression plugin's collate()")
    labels = batch["labels"]
    if k is not None and labels.shape[0] == 0:
        return labels.new_zeros(0, k)
    return labels
