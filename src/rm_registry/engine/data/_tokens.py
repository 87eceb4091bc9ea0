"""Samples as flat token arrays: how a plugin that describes its samples is tokenized and stored.

A plugin with the optional members ``text_samples`` and ``sample_from_tokens`` (see
``docs/writing-a-plugin.md``) hands the engine :class:`TextSample` objects: the texts of one sample
(a pair, a labelled text, a ranked list...), the line of each, and its numeric fields (``margin``,
``label``...). The engine then

* encodes the texts in batches (the tokenizer's ``encode_batch``: the ``tokenizers`` library
  encodes a batch on every core), with a progress bar in samples/s;
* applies ``model.data.overlong_policy`` to each sample as a whole (as :func:`fit_group` does);
* lays all token ids end to end in one array (``uint16`` for vocabularies up to 65,536 ids, else
  ``uint32``), with offsets per sequence and per sample, and each field as a float64 array with
  a presence mask: a few bytes a token instead of about 40 for a list of Python ints;
* gives a :class:`TokenDataset`, whose ``dataset[i]`` is ``plugin.sample_from_tokens(...)`` of
  sample ``i``, made when asked (a batch at a time).

The arrays live in memory or, through the token cache (``_cache``), in files mapped read-only by
every process (the pages are shared, not copied).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..._errors import DataError
from . import ChatText, DatasetStats, TextSample, fit_length

if TYPE_CHECKING:  # pragma: no cover
    from omegaconf import DictConfig

    from ..._protocol import RewardModelPlugin, Tokenizer

__all__ = ["TextSample", "TokenArrays", "TokenDataset", "encode_texts", "describes_samples", "tokenize_file",
           "token_dtype"]

_CHUNK = 512  # samples encoded per batch


def describes_samples(plugin: Any) -> bool:
    """The plugin has both optional members ``text_samples`` and ``sample_from_tokens``."""
    return callable(getattr(plugin, "text_samples", None)) and callable(getattr(plugin, "sample_from_tokens", None))


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocab_size <= 65,536), else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """:func:`rm_registry.engine.data.encode_text` of every text, plain texts in one batch call
    (``tokenizer.encode_batch`` where the tokenizer has it: parallel in ``tokenizers``)."""
    from . import encode_text

    hf_rules = bool(getattr(tokenizer, "hf_rules", False))
    templated = hf_rules and bool(getattr(tokenizer, "chat_template", None))
    plain = [i for i, t in enumerate(texts) if not (templated and isinstance(t, ChatText))]
    out: list[list[int] | None] = [None] * len(texts)
    batch = getattr(tokenizer, "encode_batch", None)
    if callable(batch) and plain:
        eos, pad = tokenizer.eos_id, tokenizer.pad_id
        for i, ids in zip(plain, batch([str(texts[i]) for i in plain])):
            ids = list(ids)
            if not hf_rules or not ((ids and ids[-1] == eos) or eos == pad):
                ids.append(eos)
            out[i] = ids
    for i, t in enumerate(texts):
        if out[i] is None:
            out[i] = encode_text(tokenizer, t)
    return out  # type: ignore[return-value]


@dataclass
class TokenArrays:
    """The flat arrays of one split (S sequences, N samples, T tokens).

    Attributes:
        tokens: ``[T]`` token ids (uint16 / uint32), every sequence end to end.
        seq_offsets: ``[S + 1]`` int64: sequence j is ``tokens[seq_offsets[j]:seq_offsets[j + 1]]``.
        seq_lines: ``[S]`` int64, the line of each sequence.
        sample_offsets: ``[N + 1]`` int64: sample i holds sequences
            ``sample_offsets[i]:sample_offsets[i + 1]``.
        fields: name -> ``(values [N] or [N, W] float64, present [N] bool)``.
    """

    tokens: np.ndarray
    seq_offsets: np.ndarray
    seq_lines: np.ndarray
    sample_offsets: np.ndarray
    fields: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def num_samples(self) -> int:
        return int(self.sample_offsets.shape[0]) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])


class _Builder:
    """Collects kept samples chunk by chunk; token ids go to ``sink`` (a file) or to memory."""

    def __init__(self, dtype: np.dtype, sink: BinaryIO | None) -> None:
        self.dtype, self.sink = dtype, sink
        self.token_chunks: list[np.ndarray] = []
        self.seq_lengths: list[np.ndarray] = []
        self.seq_lines: list[np.ndarray] = []
        self.seqs_per_sample: list[np.ndarray] = []
        self.fields: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.widths: dict[str, int] = {}
        self.names: tuple[str, ...] | None = None
        self.num_tokens = 0

    def _field_width(self, name: str, value: Any, path: str | Path, line: int) -> int:
        if value is None:
            return self.widths.get(name, -1)
        width = 0 if np.ndim(value) == 0 else len(value)
        known = self.widths.setdefault(name, width)
        if known != width:
            raise DataError(path, line, f"field {name!r} has {width or 'one'} value(s) here but "
                                        f"{known or 'one'} in earlier samples of this file")
        return width

    def add_chunk(self, kept: list[tuple[list[list[int]], list[int], Mapping[str, Any]]], path: str | Path) -> None:
        if not kept:
            return
        names = self.names
        for seqs, lines, fields in kept:
            if names is None:
                names = self.names = tuple(sorted(fields))
            elif tuple(sorted(fields)) != names:
                raise ValueError(f"{path}: sample at line {lines[0]} has fields {sorted(fields)} but earlier samples "
                                 f"{list(names)}: every sample of a file must have the same field names")
        flat = [s for seqs, _, _ in kept for s in seqs]
        lengths = np.fromiter((len(s) for s in flat), dtype=np.int64, count=len(flat))
        ids = np.fromiter(itertools.chain.from_iterable(flat), dtype=np.int64, count=int(lengths.sum()))
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"a token id ({int(ids.min())}..{int(ids.max())}) does not fit {self.dtype}")
        ids = ids.astype(self.dtype)
        if self.sink is not None:
            self.sink.write(ids.tobytes())
        else:
            self.token_chunks.append(ids)
        self.num_tokens += int(ids.size)
        self.seq_lengths.append(lengths)
        self.seq_lines.append(np.asarray([ln for _, lines, _ in kept for ln in lines], dtype=np.int64))
        self.seqs_per_sample.append(np.asarray([len(seqs) for seqs, _, _ in kept], dtype=np.int64))
        for name in names or ():
            widths = [self._field_width(name, f[name], path, lines[0]) for _, lines, f in kept]
            width = max(self.widths.get(name, 0), max(widths))
            shape = (len(kept),) if width <= 0 else (len(kept), width)
            values = np.zeros(shape, dtype=np.float64)
            present = np.zeros(len(kept), dtype=bool)
            for i, (_, _, f) in enumerate(kept):
                if f[name] is not None:
                    values[i] = f[name]
                    present[i] = True
            self.fields.setdefault(name, []).append((values, present))

    def finish(self, tokens: np.ndarray | None = None) -> TokenArrays:
        lengths = np.concatenate(self.seq_lengths) if self.seq_lengths else np.zeros(0, np.int64)
        per_sample = np.concatenate(self.seqs_per_sample) if self.seqs_per_sample else np.zeros(0, np.int64)
        fields = {}
        for name, parts in self.fields.items():
            width = self.widths.get(name, 0)
            values = [v if width <= 0 or v.ndim == 2 else np.zeros((len(v), width)) for v, _ in parts]
            fields[name] = (np.concatenate(values), np.concatenate([p for _, p in parts]))
        if tokens is None:
            tokens = np.concatenate(self.token_chunks) if self.token_chunks else np.zeros(0, self.dtype)
        return TokenArrays(
            tokens=tokens,
            seq_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            seq_lines=np.concatenate(self.seq_lines) if self.seq_lines else np.zeros(0, np.int64),
            sample_offsets=np.concatenate([[0], np.cumsum(per_sample)]).astype(np.int64),
            fields=fields,
        )


def _chunks(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def tokenize_file(plugin: RewardModelPlugin, path: str | Path, tokenizer: Tokenizer, cfg: DictConfig, *,
                  sink: BinaryIO | None = None, progress: bool = False, desc: str = "tokenizing"
                  ) -> tuple[_Builder, DatasetStats]:
    """Read one file with ``plugin.text_samples``, encode it in batches and collect the kept samples.

    Returns:
        The filled builder (call ``finish()``; with ``sink`` the token ids were written there)
        and the counts (samples read, kept, truncated, dropped).

    Raises:
        DataError: from the plugin (naming file and line), an over-long sequence under policy
            ``error``, or a file where every sample was dropped as too long.
    """
    from ..progress import progress_bar

    max_len = int(cfg.model.encoder_seq_length)
    policy = str(cfg.model.data.overlong_policy)
    eos = tokenizer.eos_id
    builder = _Builder(token_dtype(int(tokenizer.vocab_size)), sink)
    stats = DatasetStats()
    bar = progress_bar(None, desc, enabled=progress, unit=" samples", delay=2.0)
    try:
        for chunk in _chunks(plugin.text_samples(path, cfg), _CHUNK):  # type: ignore[attr-defined]
            encoded = encode_texts(tokenizer, [t for s in chunk for t in s.texts])
            kept = []
            pos = 0
            for sample in chunk:
                stats.read += 1
                ids_list = encoded[pos : pos + len(sample.texts)]
                pos += len(sample.texts)
                seqs: list[list[int]] = []
                cut_any = False
                for ids, key, line in zip(ids_list, sample.key_names(), sample.text_lines()):
                    fitted, cut = fit_length(ids, max_len, policy, eos_id=eos, path=path, line=line,
                                             key=key if len(sample.texts) > 1 else None)
                    if fitted is None:
                        break
                    seqs.append(fitted)
                    cut_any |= cut
                if len(seqs) < len(sample.texts):
                    stats.dropped += 1
                    continue
                stats.kept += 1
                stats.truncated += int(cut_any)
                kept.append((seqs, sample.text_lines(), dict(sample.fields)))
            builder.add_chunk(kept, path)
            bar.update(len(chunk))
    finally:
        bar.close()
    if stats.read and not stats.kept:
        raise DataError(path, None, f"no sample left: all {stats.read} are longer than model.encoder_seq_length="
                                    f"{max_len} (model.data.overlong_policy={policy}); raise "
                                    "model.encoder_seq_length or use truncate")
    return builder, stats


class TokenDataset(Sequence[Any]):
    """A split's samples over :class:`TokenArrays`; ``dataset[i]`` is the plugin's sample, made
    when asked by ``plugin.sample_from_tokens(sequences, fields, lines)``.

    Attributes:
        stats: The counts of how the split was read. path: its file. cache: the cache folder the
            arrays are mapped from, or ``None`` (in memory).
    """

    def __init__(self, plugin: Any, arrays: TokenArrays, stats: DatasetStats, path: str,
                 cache: Path | None = None) -> None:
        self.plugin, self.arrays, self.stats, self.path, self.cache = plugin, arrays, stats, path, cache
        #: How it was read, for the run's "train: N samples from FILE (...)" line; None: in memory.
        self.cache_note: str | None = None

    def __len__(self) -> int:
        return self.arrays.num_samples

    def __getitem__(self, index: int) -> Any:  # type: ignore[override]
        a = self.arrays
        n = a.num_samples
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {index} of {n}")
        first, last = int(a.sample_offsets[i]), int(a.sample_offsets[i + 1])
        seqs = [a.tokens[int(a.seq_offsets[j]) : int(a.seq_offsets[j + 1])].tolist() for j in range(first, last)]
        lines = [int(x) for x in a.seq_lines[first:last]]
        fields: dict[str, Any] = {}
        for name, (values, present) in a.fields.items():
            if not present[i]:
                fields[name] = None
            elif values.ndim == 1:
                fields[name] = float(values[i])
            else:
                fields[name] = tuple(float(v) for v in values[i])
        return self.plugin.sample_from_tokens(seqs, fields, lines)

    @property
    def samples(self) -> list[Any]:
        """Every sample, made now (what a :class:`~rm_registry.engine.data.ListDataset` holds)."""
        return [self[i] for i in range(len(self))]

    def sequence_counts(self) -> tuple[list[int], list[int]]:
        """``(rows, longest row)`` of every sample, from the offsets (no sample is made)."""
        a = self.arrays
        lengths = np.diff(a.seq_offsets)
        rows = np.diff(a.sample_offsets)
        longest = np.zeros(a.num_samples, dtype=np.int64)
        nonempty = rows > 0
        if nonempty.any():
            longest[nonempty] = np.maximum.reduceat(lengths, a.sample_offsets[:-1][nonempty]) if lengths.size else 0
        return rows.tolist(), longest.tolist()

    def __repr__(self) -> str:
        where = f"mapped from {self.cache}" if self.cache else "in memory"
        return f"TokenDataset({self.path!r}, {len(self)} samples, {self.arrays.num_tokens} tokens, {where})"


def in_memory_dataset(plugin: RewardModelPlugin, path: str | Path, tokenizer: Tokenizer, cfg: DictConfig, *,
                      progress: bool = False) -> TokenDataset:
    """One file tokenized into arrays held in memory (no cache)."""
    builder, stats = tokenize_file(plugin, path, tokenizer, cfg, progress=progress, desc=f"tokenizing {_short(path)}")
    return TokenDataset(plugin, builder.finish(), stats, str(path))


def _short(path: str | Path) -> str:
    text = str(path)
    return text if len(text) <= 40 else "..." + text[-37:]

