"""Preference data for the ``binary_ranking`` plugin: reading, format detection, tokenizing.

Three JSON Lines formats are accepted, detected from the first record of each file:

- ``alternating`` (NeMo-Aligner): ``{"text": ...}`` per line, already templated; line 2i is the
  chosen text and line 2i+1 the rejected text of the same prompt.
- ``pairs`` (TRL, implicit prompt): ``{"chosen": ..., "rejected": ...}``, each a full text.
- ``prompt_pairs`` (TRL, explicit prompt): ``{"prompt": ..., "chosen": ..., "rejected": ...}``;
  the prompt is put before each response.

The two pair formats may carry a numeric ``margin`` per line. Text values are strings or chat
message lists (``[{"role": ..., "content": ...}]``). Other keys are ignored. A file that mixes
formats is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from rm_registry import DataError
from rm_registry.engine.data import (
    ListDataset,
    encode_text,
    fit_length,
    join_prompt_response,
    read_jsonl,
    render_text,
)

if TYPE_CHECKING:  # pragma: no cover
    from omegaconf import DictConfig

    from rm_registry import Tokenizer

__all__ = ["FORMATS", "PreferencePair", "TextPair", "detect_format", "read_pairs", "build_datasets"]

#: Names of the accepted formats (see the module docstring).
FORMATS = ("alternating", "pairs", "prompt_pairs")


@dataclass(frozen=True)
class TextPair:
    """One preference pair as read from a file, before tokenizing.

    Attributes:
        chosen: Full text of the preferred sequence (prompt included).
        rejected: Full text of the other sequence (prompt included).
        margin: The pair's ``margin`` column, or ``None`` when the file has none for it.
        line: 1-based line of the pair in its file (the chosen line for ``alternating``).
        rejected_line: Line of the rejected text (differs from ``line`` only for ``alternating``).
    """

    chosen: str
    rejected: str
    margin: float | None
    line: int
    rejected_line: int


@dataclass(frozen=True)
class PreferencePair:
    """One tokenized pair, what :meth:`BinaryRankingPlugin.collate` takes.

    Attributes:
        chosen: Token ids of the chosen sequence, EOS last.
        rejected: Token ids of the rejected sequence, EOS last.
        margin: The pair's margin, or ``None`` when the data has none.
    """

    chosen: list[int]
    rejected: list[int]
    margin: float | None = None


def _record_format(obj: Mapping[str, Any]) -> str | None:
    """The format one record looks like: a name of :data:`FORMATS`, ``"mixed"`` or ``None``."""
    has_pair = "chosen" in obj or "rejected" in obj
    if "text" in obj:
        return "mixed" if has_pair else "alternating"
    if has_pair:
        return "prompt_pairs" if "prompt" in obj else "pairs"
    return None


_FORMAT_KEYS = {
    "alternating": '{"text"}',
    "pairs": '{"chosen", "rejected"}',
    "prompt_pairs": '{"prompt", "chosen", "rejected"}',
}


def detect_format(obj: Mapping[str, Any], *, path: str | Path, line: int) -> str:
    """The format of a file, from its first record.

    Raises:
        DataError: when the record fits no format (naming the keys it has).
    """
    fmt = _record_format(obj)
    if fmt == "mixed":
        raise DataError(path, line, "record has both 'text' and 'chosen'/'rejected'; use one format per file")
    if fmt is None:
        keys = ", ".join(repr(k) for k in obj) or "no keys"
        raise DataError(
            path,
            line,
            f"cannot tell the preference format from this record (it has {keys}); expected "
            + ", ".join(_FORMAT_KEYS.values()),
        )
    return fmt


def _mismatch(this: str | None, fmt: str, first_line: int) -> str:
    """Why a record does not belong to a file of format ``fmt`` (detected from ``first_line``)."""
    where = f"the file's format is {_FORMAT_KEYS[fmt]} (detected from line {first_line})"
    if fmt == "prompt_pairs" and this == "pairs":
        return f"missing key 'prompt': {where}"
    if fmt == "alternating" and this is None:
        return f"missing key 'text': {where}"
    if this is None:
        return f"missing keys 'chosen' and 'rejected': {where}"
    if this == "mixed":
        return f"record has both 'text' and 'chosen'/'rejected': {where}"
    return f"record has the keys of {_FORMAT_KEYS[this]} but {where}; use one format per file"


def _margin(obj: Mapping[str, Any], *, path: str | Path, line: int) -> float | None:
    if "margin" not in obj or obj["margin"] is None:
        return None
    value = obj["margin"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(path, line, f"'margin' must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise DataError(path, line, f"'margin' must be finite, got {value!r}")
    return float(value)


def _join(prompt: Any, response: Any, *, path: str | Path, line: int, key: str) -> str:
    """The prompt put before one response (the engine's rule, shared with ``rm-registry score``)."""
    return join_prompt_response(prompt, response, path=path, line=line, response_key=key)


def read_pairs(path: str | Path) -> Iterator[TextPair]:
    """Yield the preference pairs of one JSON Lines file, in file order.

    Raises:
        DataError: naming the file, the line and the problem: malformed JSON, an empty file, a
            record that fits no format or a different format than the first record, a missing
            key, a value of the wrong type, a non-numeric margin, an odd number of records in
            the alternating format.
    """
    fmt: str | None = None
    first_line = 0
    pending: tuple[int, str] | None = None  # alternating: the chosen text waiting for its pair
    for line, obj in read_jsonl(path):
        if fmt is None:
            fmt, first_line = detect_format(obj, path=path, line=line), line
        this = _record_format(obj)
        if this != fmt:
            raise DataError(path, line, _mismatch(this, fmt, first_line))

        if fmt == "alternating":
            if "margin" in obj:
                raise DataError(
                    path, line, "'margin' is not supported in the alternating {\"text\"} format; "
                    'use {"chosen", "rejected", "margin"} records'
                )
            text = render_text(obj["text"], path=path, line=line, key="text")
            if pending is None:
                pending = (line, text)
            else:
                yield TextPair(pending[1], text, None, pending[0], line)
                pending = None
            continue

        for key in ("chosen", "rejected"):
            if key not in obj:
                raise DataError(path, line, f"missing key '{key}'")
        margin = _margin(obj, path=path, line=line)
        if fmt == "prompt_pairs":
            chosen = _join(obj["prompt"], obj["chosen"], path=path, line=line, key="chosen")
            rejected = _join(obj["prompt"], obj["rejected"], path=path, line=line, key="rejected")
        else:
            chosen = render_text(obj["chosen"], path=path, line=line, key="chosen")
            rejected = render_text(obj["rejected"], path=path, line=line, key="rejected")
        yield TextPair(chosen, rejected, margin, line, line)

    if pending is not None:
        raise DataError(
            path,
            pending[0],
            "odd number of records in the alternating {\"text\"} format: this last chosen text has "
            "no rejected text after it (lines alternate chosen, rejected)",
        )


def _overlong_settings(cfg: DictConfig | Mapping[str, Any]) -> tuple[int, str]:
    model = cfg["model"]
    return int(model["encoder_seq_length"]), str(model["data"]["overlong_policy"])


def load_split(
    path: str | Path, tokenizer: Tokenizer, cfg: DictConfig | Mapping[str, Any], *, margin_mode: str = "subtract"
) -> ListDataset:
    """Read and tokenize one file into a :class:`ListDataset` of :class:`PreferencePair`.

    Over-long sequences follow ``model.data.overlong_policy`` (via
    :func:`rm_registry.engine.data.fit_length`); a pair is dropped when either side is dropped.
    ``stats`` counts pairs: ``read``, ``kept``, ``truncated`` (kept pairs with a truncated
    side) and ``dropped``.

    Raises:
        DataError: see :func:`read_pairs`; also a negative margin with ``margin_mode=scale``
            and any over-long sequence with policy ``error``.
    """
    max_len, policy = _overlong_settings(cfg)
    dataset = ListDataset(samples=[], path=str(path))
    stats = dataset.stats
    for pair in read_pairs(path):
        stats.read += 1
        if margin_mode == "scale" and pair.margin is not None and pair.margin < 0:
            raise DataError(
                path, pair.line, f"'margin' is {pair.margin!r}, but model.binary_ranking.margin_mode=scale "
                "weights each pair by its margin, which must be >= 0"
            )
        chosen, cut_c = fit_length(
            encode_text(tokenizer, pair.chosen), max_len, policy, eos_id=tokenizer.eos_id, path=path, line=pair.line,
            key="chosen",
        )
        rejected, cut_r = fit_length(
            encode_text(tokenizer, pair.rejected),
            max_len,
            policy,
            eos_id=tokenizer.eos_id,
            path=path,
            line=pair.rejected_line,
            key="rejected",
        )
        if chosen is None or rejected is None:
            stats.dropped += 1
            continue
        stats.kept += 1
        stats.truncated += int(cut_c or cut_r)
        dataset.samples.append(PreferencePair(chosen, rejected, pair.margin))
    return dataset


def build_datasets(
    data_paths: Mapping[str, str | Path | None],
    tokenizer: Tokenizer,
    cfg: DictConfig | Mapping[str, Any],
    *,
    margin_mode: str = "subtract",
) -> dict[str, ListDataset]:
    """One :class:`ListDataset` per split present (``None`` splits are skipped)."""
    return {
        split: load_split(path, tokenizer, cfg, margin_mode=margin_mode)
        for split, path in data_paths.items()
        if path is not None
    }
