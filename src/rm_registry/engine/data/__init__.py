"""Data helpers shared by every plugin: reading records with precise errors, chat-message
rendering, the over-long sequence policy, and padding to the longest sequence of a batch.

The first stage: file -> dataset -> batch. In: a data file (JSON Lines, Parquet, Arrow, a
``save_to_disk`` folder, ``hf://`` from the local hub cache) and a tokenizer. Out: the plugin's
samples (token ids, EOS last, fitted to ``model.encoder_seq_length``), then batches
``tokens [N, S]`` / ``lengths [N]`` padded to the longest row.

Modules: this one (reading, chat rendering, :class:`TextSample`, :func:`encode_text`,
:func:`fit_length`, :func:`pad_batch`, :func:`tokenize_datasets`); ``_sources`` (the file forms,
``model.data.columns``, content hashes); ``_tokens`` (samples as flat token arrays, batched
encoding); ``_cache`` (the token cache: build once, map read-only); ``_splits``
(``model.data.data_prefix``: the files of each split, NeMo blends); ``_batching`` (which samples go
into which step and micro-batch, under the token budget).

Only :func:`pad_batch` needs torch (imported inside it); the token arrays need numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from ..._errors import ConfigError, DataError
from ._sources import DataSource, iter_records

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..._protocol import Tokenizer

__all__ = [
    "OVERLONG_POLICIES",
    "ChatText",
    "DataSource",
    "DatasetStats",
    "ListDataset",
    "TextSample",
    "tokenize_datasets",
    "read_jsonl",
    "render_text",
    "join_prompt_response",
    "encode_text",
    "fit_group",
    "fit_length",
    "pad_batch",
]

#: What happens to a sequence longer than ``model.encoder_seq_length``
#: (config key ``model.data.overlong_policy``):
#:  - ``drop``: the sample (for pairwise data the whole pair, for a group of sequences the whole
#:    group: :func:`fit_group`) is skipped and counted;
#:  - ``truncate``: the sequence keeps its first ``seq_length - 1`` tokens plus EOS, counted;
#:  - ``error``: the run stops with a DataError naming the file, the line and the sequence (``key``).
OVERLONG_POLICIES = ("drop", "truncate", "error")


@dataclass
class DatasetStats:
    """Counts reported after reading one split."""

    read: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"read": self.read, "kept": self.kept, "truncated": self.truncated, "dropped": self.dropped}


@dataclass
class ListDataset:
    """A list of samples plus the counts of how it was read (what ``build_datasets`` returns)."""

    samples: list[Any]
    stats: DatasetStats = field(default_factory=DatasetStats)
    path: str | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        return self.samples[index]


@dataclass(frozen=True)
class TextSample:
    """One sample before tokenizing, as a plugin's ``text_samples`` yields it.

    Attributes:
        texts: The sample's sequences, in the order ``sample_from_tokens`` gets them back (a
            pair: chosen then rejected).
        line: The 1-based line (or row) of the sample, for messages.
        keys: A name per text for messages (``"chosen"``, ``"responses[2]"``); default
            ``text``, or ``text[i]`` for several.
        lines: The line of each text where they differ (NeMo-Aligner's alternating pairs);
            default ``line`` for all.
        fields: Numbers stored with the sample: a float, a fixed-length sequence of floats (the
            same length in every sample of a file), or ``None``; every sample of a file has the
            same names.
    """

    texts: Sequence[str]
    line: int
    keys: Sequence[str] | None = None
    lines: Sequence[int] | None = None
    fields: Mapping[str, float | Sequence[float] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.texts)
        if n < 1:
            raise ValueError(f"TextSample at line {self.line}: a sample needs at least one text")
        for name in ("keys", "lines"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"TextSample at line {self.line}: {len(value)} {name} for {n} texts")

    def key_names(self) -> list[str]:
        if self.keys is not None:
            return list(self.keys)
        return ["text"] if len(self.texts) == 1 else [f"text[{i}]" for i in range(len(self.texts))]

    def text_lines(self) -> list[int]:
        return list(self.lines) if self.lines is not None else [self.line] * len(self.texts)


def tokenize_datasets(plugin: Any, data_paths: Mapping[str, str | Path | None], tokenizer: Tokenizer,
                      cfg: Any, *, progress: bool = False) -> dict[str, Sequence[Any]]:
    """``build_datasets`` of a plugin that describes its samples (``text_samples`` and
    ``sample_from_tokens``): every split tokenized in batches into flat arrays in memory (no cache;
    training reads through the token cache itself). Datasets carry ``stats`` and ``path``.

    Raises:
        DataError: from the plugin's ``text_samples``, or an over-long sequence under policy
            ``error``, or a file where every sample was dropped as too long.
    """
    from omegaconf import DictConfig, OmegaConf

    from ._sources import with_columns
    from ._tokens import in_memory_dataset

    columns = OmegaConf.select(cfg, "model.data.columns", default=None) if isinstance(cfg, DictConfig) else None
    return {split: in_memory_dataset(plugin, path if getattr(path, "columns", None) else with_columns(path, columns),
                                     tokenizer, cfg, progress=progress)
            for split, path in data_paths.items() if path is not None}


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(number, record)`` for each record of a data file: the 1-based line of each
    non-blank line of JSON Lines, or the 1-based row of a Parquet file, an Arrow file, a
    ``save_to_disk`` folder or a ``hf://`` hub name (``_sources``). The name is historical: every
    plugin reading its files through it reads every one of these forms, and a
    :class:`~rm_registry.engine.data.DataSource` path (``model.data.columns``) renames columns.

    Raises:
        DataError: the file is missing, unreadable, empty, or a line is not a JSON object;
            the message names the file and the 1-based line (or row).
    """
    return iter_records(path)


class ChatText(str):
    """A conversation rendered as text (``"<role>: <content>"`` lines) that keeps its messages.

    It is the plain rendering for every string use, so plugins need not know about it;
    :func:`encode_text` renders ``messages`` with the tokenizer's chat template when it has one
    (a tokenizer from a Hugging Face folder), the same way at training, evaluation and scoring.
    """

    messages: list[dict[str, Any]]

    def __new__(cls, text: str, messages: Sequence[dict[str, Any]]) -> ChatText:
        obj = super().__new__(cls, text)
        obj.messages = [dict(m) for m in messages]
        return obj

    def __reduce__(self) -> Any:  # picklable (DataLoader workers, all_gather_object)
        return (ChatText, (str(self), self.messages))


def render_text(value: Any, *, path: str | Path, line: int, key: str) -> str:
    """Turn a text field into one string.

    Accepts a string, or a chat message list ``[{"role": ..., "content": ...}, ...]``
    (TRL, NeMo-RL), rendered one message per line as ``"<role>: <content>"`` (a :class:`ChatText`,
    which :func:`encode_text` renders with the model's chat template where there is one).

    Raises:
        DataError: for any other type, naming the key.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        parts = []
        for i, m in enumerate(value):
            if "content" not in m or not isinstance(m["content"], str):
                raise DataError(path, line, f"'{key}'[{i}] has no string 'content'")
            role = m.get("role", "user")
            parts.append(f"{role}: {m['content']}")
        return ChatText("\n".join(parts), value)
    raise DataError(
        path, line, f"'{key}' must be a string or a list of chat messages, got {type(value).__name__}"
    )


def join_prompt_response(prompt: Any, response: Any, *, path: str | Path, line: int,
                         response_key: str = "response") -> str:
    """The text of a prompt followed by one response, the same for training and scoring.

    Two strings are concatenated as they are (the data carries its own separator, as in TRL);
    otherwise (chat message lists) the rendered parts are joined with a newline, which renders two
    message lists exactly as one conversation.

    Raises:
        DataError: a value that is neither a string nor a message list, naming the key.
    """
    p = render_text(prompt, path=path, line=line, key="prompt")
    r = render_text(response, path=path, line=line, key=response_key)
    if isinstance(prompt, str) and isinstance(response, str):
        return p + r
    if isinstance(p, ChatText) and isinstance(r, ChatText):
        return ChatText(f"{p}\n{r}" if p else r, [*p.messages, *r.messages])
    return f"{p}\n{r}" if p else r


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` followed by EOS (the reward is read at this last real token).

    A tokenizer from a Hugging Face folder (``hf_rules``) follows what transformers and TRL do,
    so that the pooled token is the one ``*ForSequenceClassification`` pools (the rightmost token
    that is not ``pad_token_id``):

    - a conversation (:class:`ChatText`) with a chat template: the template's tokens, nothing
      appended (as TRL's reward trainer and ``apply_chat_template``);
    - any other text: ``tokenizer(text)`` (with the tokenizer's own special tokens) plus EOS,
      unless it already ends with EOS, or EOS is the pad token (transformers would skip it, so
      the last text token is scored, on both sides).
    """
    if not getattr(tokenizer, "hf_rules", False):
        return [*tokenizer.encode(text), tokenizer.eos_id]
    if isinstance(text, ChatText) and getattr(tokenizer, "chat_template", None):
        return list(tokenizer.encode_chat(text.messages))  # type: ignore[attr-defined]
    ids = list(tokenizer.encode(str(text)))
    if (ids and ids[-1] == tokenizer.eos_id) or tokenizer.eos_id == tokenizer.pad_id:
        return ids
    return [*ids, tokenizer.eos_id]


def fit_length(
    ids: list[int], max_len: int, policy: str, *, eos_id: int, path: str | Path, line: int, key: str | None = None
) -> tuple[list[int] | None, bool]:
    """Apply the over-long policy to one encoded sequence.

    Args:
        key: Which sequence of the line this is, for the ``error`` message (``"rejected"``,
            ``"responses[2]"``); ``None`` for a line of one sequence.

    Returns:
        ``(ids, truncated)``; ``ids`` is ``None`` when the sequence must be dropped.

    Raises:
        DataError: with policy ``error``, naming the file, the line, the key and both lengths.
        ConfigError: for an unknown policy.
    """
    if len(ids) <= max_len:
        return ids, False
    if policy == "drop":
        return None, False
    if policy == "truncate":
        return [*ids[: max_len - 1], eos_id], True
    if policy == "error":
        what = f"{key!r} has" if key else "sequence has"
        raise DataError(
            path,
            line,
            f"{what} {len(ids)} tokens, more than model.encoder_seq_length={max_len}; "
            "raise it, or set model.data.overlong_policy=drop or truncate",
        )
    raise ConfigError(f"model.data.overlong_policy={policy!r}: expected one of {', '.join(OVERLONG_POLICIES)}")


def fit_group(
    sequences: Sequence[list[int]], keys: Sequence[str], max_len: int, policy: str, *, eos_id: int,
    path: str | Path, line: int,
) -> tuple[list[list[int]] | None, bool]:
    """Apply the over-long policy to the sequences of one sample (a pair, a ranked list, ...).

    The sample is kept or dropped **as a whole**: with ``drop``, one over-long sequence drops the
    sample (a pair or ranking missing a member would change its meaning); with ``truncate``
    each over-long sequence is cut; with ``error`` the message names the file, the line and the
    sequence's key. Count the result in :class:`DatasetStats` once per sample.

    Args:
        sequences: Encoded sequences (EOS included), one per key.
        keys: Their names for messages, e.g. ``["chosen", "rejected"]`` or
            ``["responses[0]", "responses[1]", ...]``.

    Returns:
        ``(sequences, truncated)``: ``None`` when the sample is dropped; ``truncated`` when any
        sequence was cut.
    """
    if len(keys) != len(sequences):
        raise ValueError(f"fit_group: {len(sequences)} sequences but {len(keys)} keys")
    out: list[list[int]] = []
    truncated = False
    for ids, key in zip(sequences, keys):
        fitted, cut = fit_length(ids, max_len, policy, eos_id=eos_id, path=path, line=line, key=key)
        if fitted is None:
            return None, False
        out.append(fitted)
        truncated |= cut
    return out, truncated


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id lists to the longest one.

    Returns:
        ``tokens`` ``[N, S]`` int64 (S = longest length) and ``lengths`` ``[N]`` int64.
    """
    import torch

    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    width = int(lengths.max()) if len(sequences) else 0
    tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        tokens[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return tokens, lengths
