"""Preference data for the ``binary_ranking`` plugin: reading, format detection, tokenizing.

Records come from any file the engine reads (JSON Lines, Parquet, Arrow, a ``save_to_disk``
folder, ``hf://``; ``model.data.columns`` renames columns). Four formats are accepted, detected
from the first record of each file:

- ``alternating`` (NeMo-Aligner): ``{"text": ...}`` per line, already templated; line 2i is the
  chosen text and line 2i+1 the rejected text of the same prompt.
- ``pairs`` (TRL, implicit prompt): ``{"chosen": ..., "rejected": ...}``, each a full text.
- ``prompt_pairs`` (TRL, explicit prompt): ``{"prompt": ..., "chosen": ..., "rejected": ...}``;
  the prompt is put before each response.
- ``nemo_rl`` (NeMo-RL's preference format): ``{"context": [messages], "completions":
  [{"rank": 0, "completion": [messages]}, {"rank": 1, "completion": [...]}]}``; exactly two
  completions, the lower rank preferred; the context is put before each completion.

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
from rm_registry.engine.data import TextSample, join_prompt_response, read_jsonl, render_text, tokenize_datasets

if TYPE_CHECKING:  # pragma: no cover
    from omegaconf import DictConfig

    from rm_registry import Tokenizer

__all__ = ["FORMATS", "PreferencePair", "TextPair", "detect_format", "read_pairs", "build_datasets", "text_samples",
           "sample_from_tokens"]

#: Names of the accepted formats (see the module docstring).
FORMATS = ("alternating", "pairs", "prompt_pairs", "nemo_rl")


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
    if "completions" in obj:
        return "mixed_nemo_rl" if has_pair or "text" in obj else "nemo_rl"
    if "text" in obj:
        return "mixed" if has_pair else "alternating"
    if has_pair:
        return "prompt_pairs" if "prompt" in obj else "pairs"
    return None


_FORMAT_KEYS = {
    "alternating": '{"text"}',
    "pairs": '{"chosen", "rejected"}',
    "prompt_pairs": '{"prompt", "chosen", "rejected"}',
    "nemo_rl": '{"context", "completions": [{"rank", "completion"}, ...]}',
}


def detect_format(obj: Mapping[str, Any], *, path: str | Path, line: int) -> str:
    """The format of a file, from its first record.

    Raises:
        DataError: when the record fits no format (naming the keys it has).
    """
    fmt = _record_format(obj)
    if fmt == "mixed":
        raise DataError(path, line, "record has both 'text' and 'chosen'/'rejected'; use one format per file")
    if fmt == "mixed_nemo_rl":
        raise DataError(path, line, "record has NeMo-RL's 'completions' and also 'text' or 'chosen'/'rejected'; "
                                    "use one format per file")
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
    if this == "mixed_nemo_rl":
        return f"record has 'completions' and also 'text' or 'chosen'/'rejected': {where}"
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


def _nemo_rl_pair(obj: Mapping[str, Any], *, path: str | Path, line: int) -> tuple[str, str]:
    """Chosen and rejected texts of a NeMo-RL record (the lower rank is preferred)."""
    completions = obj["completions"]
    if not isinstance(completions, list) or len(completions) != 2:
        n = len(completions) if isinstance(completions, list) else type(completions).__name__
        raise DataError(path, line, f"'completions' must be a list of exactly two {{'rank', 'completion'}} "
                                    f"objects, got {n}")
    for i, c in enumerate(completions):
        if not isinstance(c, dict) or "completion" not in c or "rank" not in c:
            raise DataError(path, line, f"'completions'[{i}] must be an object with 'rank' and 'completion'")
        if isinstance(c["rank"], bool) or not isinstance(c["rank"], (int, float)):
            raise DataError(path, line, f"'completions'[{i}].rank must be a number, got {c['rank']!r}")
    if completions[0]["rank"] == completions[1]["rank"]:
        raise DataError(path, line, f"both completions have rank {completions[0]['rank']!r}; the lower rank is the "
                                    "preferred one, so they must differ")
    best, other = sorted(completions, key=lambda c: c["rank"])
    context = obj.get("context", "")
    return (_join(context, best["completion"], path=path, line=line, key="completions[chosen]"),
            _join(context, other["completion"], path=path, line=line, key="completions[rejected]"))


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

        margin = _margin(obj, path=path, line=line)
        if fmt == "nemo_rl":
            chosen, rejected = _nemo_rl_pair(obj, path=path, line=line)
            yield TextPair(chosen, rejected, margin, line, line)
            continue
        for key in ("chosen", "rejected"):
            if key not in obj:
                raise DataError(path, line, f"missing key '{key}'")
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


def text_samples(path: str | Path, *, margin_mode: str = "subtract") -> Iterator[TextSample]:
    """The pairs of one file as the engine tokenizes them: texts ``(chosen, rejected)``, field ``margin``.

    Raises:
        DataError: see :func:`read_pairs`; also a negative margin with ``margin_mode=scale``.
    """
    for pair in read_pairs(path):
        if margin_mode == "scale" and pair.margin is not None and pair.margin < 0:
            raise DataError(
                path, pair.line, f"'margin' is {pair.margin!r}, but model.binary_ranking.margin_mode=scale "
                "weights each pair by its margin, which must be >= 0"
            )
        yield TextSample((pair.chosen, pair.rejected), pair.line, keys=("chosen", "rejected"),
                         lines=(pair.line, pair.rejected_line), fields={"margin": pair.margin})


def sample_from_tokens(sequences: list[list[int]], fields: Mapping[str, Any], lines: list[int]) -> PreferencePair:
    """The :class:`PreferencePair` of one stored sample (chosen, rejected; margin or None)."""
    margin = fields.get("margin")
    return PreferencePair(sequences[0], sequences[1], None if margin is None else float(margin))


def build_datasets(plugin: Any, data_paths: Mapping[str, str | Path | None], tokenizer: Tokenizer,
                   cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """One dataset of :class:`PreferencePair` per split present (``None`` splits are skipped);
    ``stats`` count pairs (a pair is dropped, or counted truncated, when either side is)."""
    return tokenize_datasets(plugin, data_paths, tokenizer, cfg)
