"""Step-labelled data for the ``process_reward`` plugin: reading, format detection, tokenizing.

Records come from any file the engine reads (JSON Lines, Parquet, Arrow, a ``save_to_disk``
folder, ``hf://``; ``model.data.columns`` renames columns). Two formats, detected per record:

- ``trl`` (TRL's ``PRMTrainer``): ``{"prompt": ..., "completions": [step, ...], "labels": [label, ...]}``,
  one label a step. Tokenized as TRL does: the prompt (a string, or chat messages rendered with the
  tokenizer's chat template where it has one) and each step without special tokens, BOS before the
  prompt where the tokenizer has one, ``step_separator`` appended to every step, the label on the
  last token of each step.
- ``placeholder`` (Math-Shepherd, OpenRLHF's PRM): ``{"input": text, "value": [label, ...]}``, the
  text holding ``step_tag`` after each step; the text before each tag is a step (the first one
  starts with the question), and the label sits on the tag's last token. ``input_key`` and
  ``label_key`` name the two keys. The same steps in both formats give the same token ids and
  labelled positions when each TRL step holds what the text holds between two tags and
  ``step_separator`` equals ``step_tag`` (and the tokenizer splits the text there alike).

For scoring and serving, ``{"text": ...}`` (with an optional ``prompt``, its beginning) is split into
steps at ``step_tag`` where the text holds one, else at ``step_separator``.

A label is ``true``/``false``, ``positive_label``/``negative_label`` (``+``/``-``), or a number in
[0, 1] (a soft label: Math-Shepherd's estimated probability of reaching the right answer).

Over-long samples (``model.encoder_seq_length``) follow ``model.data.overlong_policy``; ``truncate``
never cuts a labelled position: it drops whole trailing steps, then cuts the prompt from the left,
and drops the sample when even its first step does not fit. Such samples count as truncated or
dropped in the counts printed when a run starts.

Only :func:`collate` needs torch (imported inside it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from rm_registry import DataError
from rm_registry.engine.data import ChatText, DatasetStats, ListDataset, read_jsonl, render_text

from ._config import ProcessRewardSettings

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from omegaconf import DictConfig

    from rm_registry import Tokenizer

__all__ = ["FORMATS", "StepRecord", "StepSample", "build_datasets", "collate", "encode_record", "parse_label",
           "read_records", "score_sequences"]

#: The accepted formats (see the module docstring).
FORMATS = ("trl", "placeholder")


@dataclass(frozen=True)
class StepRecord:
    """One record as read, before tokenizing.

    Attributes:
        prompt: The text before the first step (``""`` for the placeholder format, whose first
            step starts with the question); a :class:`~rm_registry.engine.data.ChatText` for messages.
        steps: Each step's text, with its separator or tag.
        labels: One float in [0, 1] a step (``None`` entries: unlabelled, when scoring).
        line: 1-based line (or row) in the file.
        format: ``trl``, ``placeholder`` or ``text`` (scoring only).
    """

    prompt: str
    steps: tuple[str, ...]
    labels: tuple[float | None, ...]
    line: int
    format: str


@dataclass(frozen=True)
class StepSample:
    """One tokenized sample, what :func:`collate` takes.

    Attributes:
        ids: Token ids (prompt, then the steps; no EOS: nothing is read after the last step).
        positions: The index in ``ids`` of each labelled step's last token, increasing.
        labels: One float in [0, 1] per position.
        line: 1-based line of the source file.
        truncated: Steps or prompt tokens were cut to fit ``model.encoder_seq_length``.
    """

    ids: list[int]
    positions: list[int]
    labels: list[float]
    line: int
    truncated: bool = False


def parse_label(value: Any, settings: ProcessRewardSettings, *, path: str | Path, line: int, key: str) -> float:
    """A step label as a float in [0, 1].

    Raises:
        DataError: naming the file, the line and the entry, for anything but a bool, the
            positive/negative label strings, or a number in [0, 1].
    """
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, str):
        if value == settings.positive_label:
            return 1.0
        if value == settings.negative_label:
            return 0.0
    elif isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1:
        return float(value)
    raise DataError(path, line, f"{key} is {value!r}; a step label is true/false, {settings.positive_label!r}/"
                                f"{settings.negative_label!r} or a number in [0, 1]")


def _label_list(record: Mapping[str, Any], key: str, *, path: str | Path, line: int) -> list[Any]:
    value = record[key]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays from Parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DataError(path, line, f"'{key}' must be a list with one label a step, got {type(value).__name__}")
    return list(value)


def parse_record(record: Mapping[str, Any], settings: ProcessRewardSettings, *, path: str | Path, line: int,
                 labelled: bool = True) -> StepRecord:
    """One record in either format (``labelled=False``: labels optional, for scoring).

    Raises:
        DataError: naming the file, the line and the problem: unknown layout, labels and steps
            of different counts, a step with no text, a bad label.
    """
    s = settings
    if "completions" in record:
        fmt = "trl"
        prompt = render_text(record.get("prompt", ""), path=path, line=line, key="prompt")
        completions = record["completions"]
        if hasattr(completions, "tolist"):
            completions = completions.tolist()
        if not isinstance(completions, (list, tuple)) or not completions:
            raise DataError(path, line, "'completions' must be a non-empty list of step strings")
        for i, step in enumerate(completions):
            if not isinstance(step, str):
                raise DataError(path, line, f"completions[{i}] must be a string, got {type(step).__name__}")
            if not step.strip():
                raise DataError(path, line, f"completions[{i}] (step {i + 1}) has no text")
        steps = tuple(step + s.step_separator for step in completions)
        label_key = "labels"
    elif "text" in record and s.input_key not in record:
        return _text_record(record, s, path=path, line=line, labelled=labelled)
    elif s.input_key in record:
        fmt = "placeholder"
        key = s.input_key
        text = record[key]
        if not isinstance(text, str):
            raise DataError(path, line, f"'{key}' must be a string holding {s.step_tag!r} after each step, "
                                        f"got {type(text).__name__}")
        pieces = text.split(s.step_tag)
        if len(pieces) < 2:
            raise DataError(path, line, f"'{key}' holds no step tag {s.step_tag!r} "
                                        f"(model.process_reward.step_tag): no step to score")
        for i, piece in enumerate(pieces[:-1]):
            if not piece.strip():
                raise DataError(path, line, f"step {i + 1} of '{key}' (before step tag {i + 1}) has no text")
        prompt = ""
        steps = tuple(piece + s.step_tag for piece in pieces[:-1])  # text after the last tag: never read
        label_key = s.label_key
    else:
        raise DataError(path, line, f"expected TRL's 'prompt'/'completions'/'labels', or the placeholder format's "
                                    f"{s.input_key!r}/{s.label_key!r}; found keys {sorted(record)}")
    if label_key not in record:
        if labelled:
            raise DataError(path, line, f"no {label_key!r}: every step needs a label")
        return StepRecord(prompt, steps, (None,) * len(steps), line, fmt)
    raw = _label_list(record, label_key, path=path, line=line)
    if len(raw) != len(steps):
        what = "completions" if fmt == "trl" else f"step tags {s.step_tag!r}"
        raise DataError(path, line, f"{len(raw)} labels in {label_key!r} but {len(steps)} {what}; "
                                    "give one label a step")
    labels = tuple(parse_label(v, s, path=path, line=line, key=f"{label_key}[{i}]") for i, v in enumerate(raw))
    return StepRecord(prompt, steps, labels, line, fmt)


def _text_record(record: Mapping[str, Any], s: ProcessRewardSettings, *, path: str | Path, line: int,
                 labelled: bool) -> StepRecord:
    """``{"text": ..., "prompt": optional prefix of it}`` (what ``serve`` gets: vLLM's ``input``,
    OpenRLHF's ``query`` and ``prompts``): the text after the prompt split at ``step_tag`` where it
    holds one, else at ``step_separator``; each step ends with its delimiter, text after the last
    delimiter is not read. Scoring only (no labels)."""
    if labelled:
        raise DataError(path, line, "a {'text': ...} record has no step labels; training data is TRL's "
                                    f"prompt/completions/labels or {s.input_key!r}/{s.label_key!r}")
    text = record["text"]
    if not isinstance(text, str):
        raise DataError(path, line, f"'text' must be a string, got {type(text).__name__}")
    prompt = record.get("prompt") or ""
    if not isinstance(prompt, str) or not text.startswith(prompt):
        prompt = ""  # a prompt that is not the text's beginning is ignored (the text is scored as it is)
    rest = text[len(prompt):]
    delimiter = s.step_tag if s.step_tag in rest else s.step_separator
    pieces = rest.split(delimiter)[:-1]
    if not pieces:
        raise DataError(path, line, f"the text holds neither the step tag {s.step_tag!r} nor the step separator "
                                    f"{s.step_separator!r} after a step: no step to score")
    for i, piece in enumerate(pieces):
        if not piece.strip():
            raise DataError(path, line, f"step {i + 1} of 'text' (before {delimiter!r} number {i + 1}) has no text")
    steps = tuple(piece + delimiter for piece in pieces)
    return StepRecord(prompt, steps, (None,) * len(steps), line, "text")


def read_records(path: str | Path, settings: ProcessRewardSettings, *, labelled: bool = True) -> Iterator[StepRecord]:
    """The records of one file, in order (the format detected per record)."""
    for line, record in read_jsonl(path):
        yield parse_record(record, settings, path=path, line=line, labelled=labelled)


def _plain(tokenizer: Tokenizer, text: str) -> list[int]:
    encode = getattr(tokenizer, "encode_plain", None)
    return list(encode(text) if encode is not None else tokenizer.encode(text))


def _prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """BOS (where the tokenizer has one) and the prompt; a conversation through the chat template
    where the tokenizer has one (the template writes its own special tokens)."""
    if isinstance(prompt, ChatText) and getattr(tokenizer, "chat_template", None):
        return list(tokenizer.encode_chat(prompt.messages))  # type: ignore[attr-defined]
    bos = getattr(tokenizer, "bos_id", None)
    return ([bos] if bos is not None else []) + (_plain(tokenizer, prompt) if prompt else [])


def encode_record(record: StepRecord, tokenizer: Tokenizer, settings: ProcessRewardSettings, *, max_len: int,
                  policy: str, path: str | Path, last_step_only: bool = False) -> StepSample | None:
    """Tokenize one record; ``None`` when the over-long policy drops it.

    Raises:
        DataError: under ``model.data.overlong_policy=error`` for an over-long sample.
    """
    prefix = _prompt_ids(tokenizer, record.prompt)
    if settings.max_prompt_length is not None and len(prefix) > settings.max_prompt_length:
        prefix = prefix[-settings.max_prompt_length:]  # TRL keeps the prompt's end
    steps = [_plain(tokenizer, step) for step in record.steps]
    labels = list(record.labels)
    total = len(prefix) + sum(map(len, steps))
    truncated = False
    if total > max_len:
        if policy == "drop":
            return None
        if policy == "error":
            raise DataError(path, record.line, f"the sample has {total} tokens ({len(steps)} steps), more than "
                                               f"model.encoder_seq_length={max_len}; raise it, or set "
                                               "model.data.overlong_policy=drop or truncate")
        truncated = True
        while len(steps) > 1 and len(prefix) + sum(map(len, steps)) > max_len:
            steps.pop()
            labels.pop()
        room = max_len - len(steps[0])
        if room < 0:
            return None  # not even the first step fits
        if len(prefix) + len(steps[0]) > max_len:
            prefix = prefix[len(prefix) - room:] if room else []
    ids = list(prefix)
    positions: list[int] = []
    for step in steps:
        ids.extend(step)
        positions.append(len(ids) - 1)
    kept = [(p, y) for p, y in zip(positions, labels)]
    if last_step_only:
        kept = kept[-1:]
    return StepSample(ids, [p for p, _ in kept], [float(y) if y is not None else math.nan for _, y in kept],
                      record.line, truncated)


def build_datasets(data_paths: Mapping[str, str | Path | None], tokenizer: Tokenizer,
                   cfg: DictConfig | Mapping[str, Any]) -> dict[str, ListDataset]:
    """One :class:`~rm_registry.engine.data.ListDataset` of :class:`StepSample` per split present.

    ``train_on_last_step_only`` applies to the ``train`` split alone (evaluation reads every step, as TRL).
    """
    settings = ProcessRewardSettings.from_config(cfg)
    max_len = int(cfg["model"]["encoder_seq_length"])
    policy = str(cfg["model"]["data"]["overlong_policy"])
    out: dict[str, ListDataset] = {}
    for split, path in data_paths.items():
        if path is None:
            continue
        stats = DatasetStats()
        samples: list[StepSample] = []
        for record in read_records(path, settings):
            stats.read += 1
            sample = encode_record(record, tokenizer, settings, max_len=max_len, policy=policy, path=path,
                                   last_step_only=settings.train_on_last_step_only and split == "train")
            if sample is None:
                stats.dropped += 1
                continue
            stats.kept += 1
            stats.truncated += sample.truncated
            samples.append(sample)
        out[split] = ListDataset(samples, stats, str(path))
    return out


def score_sequences(record: Mapping[str, Any], tokenizer: Tokenizer, cfg: DictConfig, *, path: str | Path,
                    line: int) -> list[tuple[list[int], list[int]]]:
    """The one sequence of a ``score`` record and its step positions (labels, if any, are ignored).

    Over-long records: cut as in training under ``truncate`` and ``drop`` (scoring drops nothing:
    the steps that fit are scored), refused under ``error``.
    """
    settings = ProcessRewardSettings.from_config(cfg)
    parsed = parse_record(record, settings, path=path, line=line, labelled=False)
    policy = "error" if str(cfg["model"]["data"]["overlong_policy"]) == "error" else "truncate"
    sample = encode_record(parsed, tokenizer, settings, max_len=int(cfg["model"]["encoder_seq_length"]),
                           policy=policy, path=path)
    if sample is None:
        raise DataError(path, line, f"the first step alone is longer than model.encoder_seq_length="
                                    f"{cfg['model']['encoder_seq_length']}; nothing can be scored")
    return [(sample.ids, sample.positions)]


def collate(samples: Sequence[StepSample], pad_id: int) -> dict[str, torch.Tensor]:
    """``tokens [B, S]``, ``lengths [B]``, ``reward_positions [M, 2]`` (sample row, token index of
    each labelled step, sample after sample) and ``step_labels [M]`` (float32 in [0, 1])."""
    import torch

    from rm_registry.engine.data import pad_batch

    tokens, lengths = pad_batch([s.ids for s in samples], pad_id)
    points = [(row, p) for row, s in enumerate(samples) for p in s.positions]
    positions = torch.tensor(points, dtype=torch.long).reshape(-1, 2)
    labels = torch.tensor([y for s in samples for y in s.labels], dtype=torch.float32)
    return {"tokens": tokens, "lengths": lengths, "reward_positions": positions, "step_labels": labels}
