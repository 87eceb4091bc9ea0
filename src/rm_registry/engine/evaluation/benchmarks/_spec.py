"""What every benchmark is made of: its rows read into :class:`Example` objects with errors that
name the file, the row and the column, and the :class:`Benchmark` interface its module fills in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...._errors import DataError

__all__ = ["Benchmark", "BenchmarkRun", "Example", "Figures", "text_list", "text_value", "require_columns"]


@dataclass
class Example:
    """One row of a benchmark file: a prompt and its graded responses.

    ``chosen`` / ``rejected`` hold one response each for RewardBench v1, lists for RewardBench 2
    (the correct ones, then the incorrect ones) and RM-Bench (three styles each).
    """

    row: int
    id: str
    subset: str
    prompt: Any
    chosen: list[str]
    rejected: list[str]
    num_correct: int | None = None

    def swapped(self) -> Example:
        """The same row with ``chosen`` and ``rejected`` exchanged (the swap probe)."""
        return Example(self.row, self.id, self.subset, self.prompt, list(self.rejected), list(self.chosen),
                       self.num_correct)


@dataclass
class Figures:
    """A benchmark's results from per-example rewards.

    ``rows`` is the table (``section``, ``subset``, ``n``, ``score``) in display order; ``correct``
    holds one value per example in input order (1/0 for a pair, a fraction for best-of-N or the
    3x3 matrix, ``None`` where the benchmark scores a subset as a whole).
    """

    score: float | None
    score_name: str
    sections: dict[str, float | None]
    rows: list[dict[str, Any]]
    correct: list[float | None]
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    per_example: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BenchmarkRun:
    """What :func:`run_benchmark` computed.

    ``results`` is what ``results.json`` holds; ``per_example`` one object per row in input order
    (``per_example.jsonl``); ``lengths`` the characters of every response, for the report's plot.
    """

    results: dict[str, Any]
    per_example: list[dict[str, Any]]
    output: Path | None = None
    lengths: dict[str, list[list[int]]] = field(default_factory=dict)


class Benchmark:
    """One benchmark: how its rows read, which response pairs it compares, how it scores."""

    #: ``--benchmark`` name.
    name: str = ""
    #: What a row holds, for messages (``"prompt, chosen, rejected, subset"``).
    layout: str = ""
    #: Where the formulas come from.
    source: str = ""

    def read(self, path: str | Path, records: Sequence[tuple[int, Mapping[str, Any]]]) -> list[Example]:
        """The examples of ``records`` (``(row, record)`` of the file), checked; DataError names the row."""
        raise NotImplementedError

    def pairs(self, example: Example) -> list[tuple[int, int]]:
        """``(i, j)``: ``chosen[i]`` should outscore ``rejected[j]`` (the probes' pairs)."""
        return [(0, j) for j in range(len(example.rejected))]

    def figures(self, examples: Sequence[Example], chosen: Sequence[Sequence[float]],
                rejected: Sequence[Sequence[float]]) -> Figures:
        """The benchmark's figures from the rewards of every example's responses."""
        raise NotImplementedError


def require_columns(record: Mapping[str, Any], columns: Sequence[str], *, path: str | Path, row: int,
                    bench: Benchmark) -> None:
    """DataError naming the row and the missing columns (and what the benchmark's rows hold)."""
    missing = [c for c in columns if c not in record]
    if missing:
        raise DataError(path, row, f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}: "
                                   f"{bench.name} rows hold {bench.layout}; found {', '.join(sorted(record)) or 'none'} "
                                   "(model.data.columns=... maps other column names, docs/evaluation.md)")


_OTHER_LAYOUT = {
    "rewardbench": "a RewardBench v1 row (one response each): --benchmark rewardbench",
    "list": "RewardBench 2 or RM-Bench data (lists of responses): --benchmark rewardbench2 or rm-bench",
}


def text_value(record: Mapping[str, Any], key: str, *, path: str | Path, row: int, bench: Benchmark,
               messages: bool = False) -> Any:
    """A string column (or, with ``messages``, a chat message list); a list of strings gets a hint
    at the benchmark that has lists."""
    value = record[key]
    if isinstance(value, str):
        return value
    if messages and isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return value
    if isinstance(value, list):
        hint = f"; is this {_OTHER_LAYOUT['list']}?" if key != "prompt" else \
            " (or a chat message list of {'role', 'content'} objects)"
        raise DataError(path, row, f"column {key!r} holds a list of {len(value)} where {bench.name} takes one "
                                   f"string{hint}")
    raise DataError(path, row, f"column {key!r} must be a string, got {type(value).__name__}")


def text_list(record: Mapping[str, Any], key: str, *, path: str | Path, row: int, bench: Benchmark,
              size: int | None = None) -> list[str]:
    """A list-of-strings column (exactly ``size`` long when given)."""
    value = record[key]
    if isinstance(value, str):
        raise DataError(path, row, f"column {key!r} holds one string where {bench.name} takes a list of responses; "
                                   f"is this {_OTHER_LAYOUT['rewardbench']}?")
    if hasattr(value, "tolist"):  # numpy arrays from Parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise DataError(path, row, f"column {key!r} must be a list of strings, got {type(value).__name__}")
    if size is not None and len(value) != size:
        raise DataError(path, row, f"column {key!r} holds {len(value)} responses; {bench.name} has exactly {size} "
                                   f"({bench.layout})")
    if not value:
        raise DataError(path, row, f"column {key!r} is an empty list")
    return list(value)
