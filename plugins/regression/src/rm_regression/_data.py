"""Reading regression data: one record per line or row, ``{"text": ..., "label": ...}``.

Records come from any file the engine reads (JSON Lines, Parquet, Arrow, a ``save_to_disk``
folder, ``hf://``; ``model.data.columns`` renames columns). The text is ``text``, or ``prompt``
(or HelpSteer3's ``context`` message list) followed by ``response``, joined as ``score`` joins
them. The label is one of (see ``docs/regression.md``):

* a list of K numbers in ``attribute_names`` order (NeMo-Aligner); entries equal to
  ``loss_mask_val`` (default -100) or ``null`` are masked;
* a SteerLM string ``"helpfulness:4,correctness:3"``; names not present are masked;
* an object ``{"helpfulness": 4, "correctness": 3}``; names not present are masked;
* no ``label`` key, but columns named after attributes, as HelpSteer2's files have them
  (``helpfulness``, ``correctness``, ``coherence``, ``complexity``, ``verbosity``); attributes
  without a column are masked.

Only :func:`collate` needs torch (imported inside it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from rm_registry import DataError
from rm_registry.engine.data import TextSample, join_prompt_response, pad_batch, read_jsonl, render_text

from ._config import RegressionSettings

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from rm_registry import Tokenizer

__all__ = ["RegressionPair", "RegressionSample", "collate", "parse_label", "read_records", "sample_from_tokens",
           "text_samples"]


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


def _text_of(obj: Mapping[str, Any], *, path: str | Path, line: int) -> str:
    if "text" in obj:
        return render_text(obj["text"], path=path, line=line, key="text")
    prompt = obj.get("prompt", obj.get("context"))
    if prompt is not None and "response" in obj:
        return join_prompt_response(prompt, obj["response"], path=path, line=line)
    raise DataError(
        path, line, "missing key 'text'; each line must be {\"text\": ..., \"label\": ...} (or HelpSteer's "
        f"'prompt' and 'response' with attribute columns); keys found: {', '.join(sorted(obj)) or 'none'}",
    )


def _label_of(obj: Mapping[str, Any], settings: RegressionSettings, *, path: str | Path, line: int) -> tuple[float, ...]:
    if "label" in obj:
        return parse_label(obj["label"], settings, path=path, line=line)
    columns = {name: obj[name] for name in settings.attribute_names if name in obj}
    if not columns:
        raise DataError(
            path, line, f"missing key 'label' and no attribute columns ({_known(settings.attribute_names)}); each "
            "line must be {\"text\": ..., \"label\": ...} or carry one column per attribute (HelpSteer2) "
            f"(keys found: {', '.join(sorted(obj)) or 'none'})",
        )
    return parse_label(columns, settings, path=path, line=line)


def read_records(path: str | Path, settings: RegressionSettings) -> Iterator[tuple[int, str, tuple[float, ...]]]:
    """``(line, text, label)`` of every record of one file, each validated (also those the
    over-long policy later drops).

    Raises:
        DataError: naming the file, the line and the problem.
    """
    for lineno, obj in read_jsonl(path):
        if "label" not in obj and "text" in obj and not any(n in obj for n in settings.attribute_names):
            raise DataError(
                path, lineno, "missing key 'label'; each line must be {\"text\": ..., \"label\": ...} "
                f"(keys found: {', '.join(sorted(obj)) or 'none'})",
            )
        text = _text_of(obj, path=path, line=lineno)
        yield lineno, text, _label_of(obj, settings, path=path, line=lineno)


def text_samples(path: str | Path, settings: RegressionSettings) -> Iterator[TextSample]:
    """The samples of one file as the engine tokenizes them: one text and field ``label`` per
    record, or, for the Bradley-Terry losses, A/B pairs of consecutive records (fields ``label_a``,
    ``label_b``): a pair is kept or dropped as a whole.

    Raises:
        DataError: see :func:`read_records`; an odd number of records for the Bradley-Terry losses.
    """
    if not settings.bradley_terry:
        for line, text, label in read_records(path, settings):
            yield TextSample((text,), line, fields={"label": label})
        return
    pending: tuple[int, str, tuple[float, ...]] | None = None
    count = 0
    for record in read_records(path, settings):
        count += 1
        if pending is None:
            pending = record
            continue
        (la, ta, ya), (lb, tb, yb) = pending, record
        yield TextSample((ta, tb), la, keys=("A", "B"), lines=(la, lb), fields={"label_a": ya, "label_b": yb})
        pending = None
    if pending is not None:
        raise DataError(path, None, f"{count} records: the Bradley-Terry losses need A/B pairs on consecutive lines "
                                    "(an even number of lines)")


def sample_from_tokens(sequences: list[list[int]], fields: Mapping[str, Any],
                       lines: list[int]) -> RegressionSample | RegressionPair:
    """The :class:`RegressionSample` (or A/B :class:`RegressionPair`) of one stored sample."""
    if "label" in fields:
        return RegressionSample(ids=sequences[0], label=tuple(fields["label"]), line=lines[0])
    return RegressionPair(RegressionSample(ids=sequences[0], label=tuple(fields["label_a"]), line=lines[0]),
                          RegressionSample(ids=sequences[1], label=tuple(fields["label_b"]), line=lines[1]))


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
