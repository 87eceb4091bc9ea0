"""Use a trained checkpoint in-process: load it, score texts, evaluate a labelled file.

    >>> from rm_registry.engine import load_reward_model
    >>> rm = load_reward_model("runs/rm1")                       # doctest: +SKIP
    >>> rm.score(["User: hi\\nAssistant: hello!"])              # doctest: +SKIP
    [{'reward': 1.73}]

The checkpoint folder carries the config and the tokenizer, so nothing else is needed. Under
``torchrun`` the inputs are split across data-parallel ranks and every rank gets all results in
input order.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from .._errors import ConfigError, DataError
from .._registry import get_reward_model
from . import _contract, parallel
from .checkpoint import _provenance
from . import checkpoint as ckpt
from .checkpoint._fs import atomic_write_text, check_output_file
from .checkpoint._safe_pickle import check_contained
from .config import build_config, drop_moved_keys, flatten, load_saved_config, merge_closed, parse_overrides, validate_engine_config
from .data import encode_text, fit_length, pad_batch, read_jsonl
from .data._splits import read_split_file
from .data._batching import SampleCosts, eval_batches, max_tokens_per_micro_batch
from .evaluation import evaluate_dataset, gather_over_data_parallel
from .hf import apply_pretrained, load_hf_weights, looks_like_hf_folder, read_config
from .hf._config import is_token_classifier
from .progress import progress_bar
from .tokenizer import folder_tokenizer, tokenizer_from_dir

if TYPE_CHECKING:  # pragma: no cover
    from .._protocol import RewardModelPlugin, Tokenizer

__all__ = ["LoadedRewardModel", "checkpoint_plugin", "load_reward_model", "read_score_records", "score_file"]

from ._load_keys import LOAD_OVERRIDES  # the keys that may be overridden when loading


@dataclass
class LoadedRewardModel:
    """A trained reward model ready for scoring and evaluation."""

    plugin: RewardModelPlugin
    cfg: DictConfig
    tokenizer: Tokenizer
    model: torch.nn.Module
    checkpoint: Path
    info: parallel.ParallelInfo

    @torch.no_grad()
    def rewards(self, token_ids: Sequence[Sequence[int]], *, batch_size: int | None = None,
                progress: bool = False, positions: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """Raw head outputs ``[B, K]`` for already-tokenized sequences (EOS included).

        Sequences are sorted by length so that each batch pads little, and batches hold at most
        ``model.max_tokens_per_micro_batch`` padded tokens; the result is in input order. Split
        across data-parallel ranks under torchrun; every rank returns all rows.

        With ``positions`` (token-level architectures: for each sequence the token indices to read
        the head at, as the plugin's ``score_sequences`` gives them) the result is ``[P, K]``, one row
        per position, sequence after sequence.
        """
        batch_size = batch_size or int(self.cfg.model.micro_batch_size)
        costs = SampleCosts([1] * len(token_ids), [len(ids) for ids in token_ids])
        chunks = eval_batches(costs, micro_batch_size=batch_size, max_tokens=max_tokens_per_micro_batch(self.cfg),
                              sort=True)
        mine = list(range(self.info.dp_rank, len(chunks), self.info.dp))
        self.model.eval()
        results: list[tuple[list[int], torch.Tensor]] = []
        bar = progress_bar(len(mine), "score", enabled=progress and self.info.is_main)
        def batch(c: int) -> dict[str, Any]:
            tokens, lengths = pad_batch([token_ids[i] for i in chunks[c]], self.tokenizer.pad_id)
            out: dict[str, Any] = {"tokens": tokens, "lengths": lengths}
            if positions is not None:
                out[_contract.REWARD_POSITIONS] = torch.tensor(
                    [(row, p) for row, i in enumerate(chunks[c]) for p in positions[i]], dtype=torch.long).reshape(-1, 2)
            return _contract.batch_to(out, self.info.device)

        # one pass of the model each (several through the pipeline stages together under pipeline parallelism)
        for c, (_, out) in zip(mine, _contract.batches_rewards(self.model, (batch(c) for c in mine), None)):
            results.append((chunks[c], out.float().cpu()))
            bar.update(1)
        bar.close()
        results = gather_over_data_parallel(results, self.info)
        k = results[0][1].shape[-1] if results else 1
        if positions is None:
            out_all = torch.empty(len(token_ids), k)
            for idx, values in results:
                out_all[idx] = values
            return out_all
        starts = [0]
        for p in positions:
            starts.append(starts[-1] + len(p))
        out_all = torch.empty(starts[-1], k)
        for idx, values in results:
            at = 0
            for i in idx:
                out_all[starts[i] : starts[i + 1]] = values[at : at + len(positions[i])]
                at += len(positions[i])
        return out_all

    def encode(self, text: str) -> tuple[list[int], bool]:
        """Token ids for scoring ``text`` (EOS appended) and whether it was cut to ``encoder_seq_length``."""
        return self._fit(encode_text(self.tokenizer, text), "truncate")

    def _fit(self, ids: list[int], policy: str, *, path: str | Path = "<texts>", line: int = 0,
             key: str | None = None) -> tuple[list[int], bool]:
        """``ids`` cut to ``encoder_seq_length`` (``truncate``) or refused (``error``: a DataError
        naming ``path``, ``line`` and ``key``), and whether they were cut."""
        fitted, cut = fit_length(ids, int(self.cfg.model.encoder_seq_length), policy, eos_id=self.tokenizer.eos_id,
                                 path=path, line=line, key=key)
        assert fitted is not None  # only "drop" drops
        return fitted, cut

    def score(self, texts: Iterable[str], *, batch_size: int | None = None, progress: bool = False) -> list[dict[str, Any]]:
        """One JSON-ready dict per text, with a float ``reward`` (plus what the plugin adds).

        Texts longer than ``model.encoder_seq_length`` are cut to fit, with a warning (or refused
        with ``model.data.overlong_policy=error``).
        """
        if isinstance(texts, str):
            raise TypeError("score() takes a list of texts; wrap a single text in a list: score([text])")
        ids = self._encode_all(list(texts))
        if not ids:
            return []
        return self.plugin.score_outputs(self.rewards(ids, batch_size=batch_size, progress=progress), self.cfg)

    def score_records(self, records: Iterable[Mapping[str, Any]], *, batch_size: int | None = None,
                      progress: bool = False) -> list[dict[str, Any]]:
        """One JSON-ready dict per record, as ``rm-registry score`` writes one per input line.

        A record is what one line of a score input file holds: ``{"text": ...}`` or
        ``{"prompt": ..., "response": ...}``, or what the plugin's ``score_texts`` reads (a
        prompt with several responses, ...); the plugin's ``score_records`` makes each output
        (default: :meth:`score`'s object). Over-long texts are handled as in :meth:`score`.
        """
        records = list(records)
        if _contract.is_token_level(self.plugin):
            return self._score_sequences(
                [(i, _contract.score_sequences(self.plugin, r, self.tokenizer, self.cfg, path="<records>", line=i))
                 for i, r in enumerate(records, 1)], batch_size=batch_size, progress=progress)
        groups = [_contract.score_texts(self.plugin, r, path="<records>", line=i) for i, r in enumerate(records, 1)]
        ids = self._encode_all([text for group in groups for text in group])
        if not ids:
            return []
        rewards = self.rewards(ids, batch_size=batch_size, progress=progress)
        return _contract.score_records(self.plugin, rewards, [len(g) for g in groups], self.cfg)

    def _score_sequences(self, groups: Sequence[tuple[int, Any]], *, batch_size: int | None,
                         progress: bool) -> list[dict[str, Any]]:
        """``score_records`` of a token-level plugin: ``groups`` holds each record's
        ``score_sequences`` (token ids and read positions); one output object per record."""
        ids = [list(seq) for _, group in groups for seq, _ in group]
        positions = [list(pos) for _, group in groups for _, pos in group]
        if not ids:
            return []
        rewards = self.rewards(ids, batch_size=batch_size, progress=progress, positions=positions)
        sizes = [sum(len(pos) for _, pos in group) for _, group in groups]
        return _contract.score_records(self.plugin, rewards, sizes, self.cfg)

    def _encode_all(self, texts: list[str]) -> list[list[int]]:
        """Token ids of every text; over-long ones cut with a warning, or refused under policy ``error``."""
        max_len = int(self.cfg.model.encoder_seq_length)
        full = [encode_text(self.tokenizer, t) for t in texts]
        if self.cfg.model.data.overlong_policy == "error":
            first = next((i for i, ids in enumerate(full) if len(ids) > max_len), None)
            if first is not None:
                raise ConfigError(
                    f"text {first} (0-based) is longer than model.encoder_seq_length={max_len} "
                    "and model.data.overlong_policy=error; load with model.data.overlong_policy=truncate to cut it"
                )
        encoded = [self._fit(ids, "truncate") for ids in full]
        cut = sum(was_cut for _, was_cut in encoded)
        if cut:
            warnings.warn(f"{cut} of {len(encoded)} texts were longer than model.encoder_seq_length="
                          f"{self.cfg.model.encoder_seq_length} and were cut to fit", UserWarning, stacklevel=3)
        return [ids for ids, _ in encoded]

    def evaluate(self, data: str | Path, *, progress: bool = False) -> dict[str, Any]:
        """The plugin's metrics over a labelled file in one of its training formats."""
        dataset = read_split_file(self.plugin, "test", str(data), self.tokenizer, self.cfg,
                                  progress=progress and self.info.is_main)
        stats = getattr(dataset, "stats", None)
        counts = stats.as_dict() if hasattr(stats, "as_dict") else dict(stats or {})
        if (counts.get("dropped") or counts.get("truncated")) and self.info.is_main:
            print(f"{data}: {counts.get('kept', len(dataset))} samples evaluated; {counts.get('dropped', 0)} dropped "
                  f"and {counts.get('truncated', 0)} truncated as longer than model.encoder_seq_length="
                  f"{self.cfg.model.encoder_seq_length} (model.data.overlong_policy="
                  f"{self.cfg.model.data.overlong_policy})", file=sys.stderr)
        if len(dataset) == 0:
            raise DataError(data, None, "no usable samples (all dropped as too long? see model.data.overlong_policy)")
        return evaluate_dataset(self.plugin, self.model, dataset, self.cfg, self.tokenizer, self.info,
                                progress=progress)

    def validation_splits(self) -> dict[str, str]:
        """The run's own validation data: ``{split: its files}`` for ``validation`` and NeMo-Aligner's
        extra ``validation_<name>`` sets of the saved config (empty for a Hugging Face folder)."""
        from .data._splits import describe, normalize_prefix

        prefix = OmegaConf.select(self.cfg, "model.data.data_prefix", default=None) or {}
        out = {}
        for split, value in prefix.items():
            if str(split) == "validation" or str(split).startswith("validation_"):
                entries = normalize_prefix(str(split), value)
                if entries:
                    out[str(split)] = describe(entries)
        return out

    def evaluate_validation(self, *, progress: bool = False) -> dict[str, dict[str, Any]]:
        """The plugin's metrics over each of the run's own validation splits, as TRL's
        ``trainer.evaluate()`` does: ``{split: metrics}`` (see :meth:`validation_splits`).

        Raises:
            ConfigError: the checkpoint names no validation data (a Hugging Face folder, or a run
                trained without ``--validation-data``).
            DataError: a validation file that is no longer there, naming it.
        """
        from .data._splits import build_split_datasets

        splits = self.validation_splits()
        if not splits:
            what = "is a Hugging Face folder" if looks_like_hf_folder(self.checkpoint) else \
                "was trained without validation data (model.data.data_prefix.validation is null)"
            raise ConfigError(f"evaluate without --data uses the run's own validation data, but {self.checkpoint} "
                              f"{what}; pass --data FILE")
        prefix = {k: v for k, v in self.cfg.model.data.data_prefix.items() if str(k) in splits}
        datasets, _ = build_split_datasets(self.plugin, prefix, self.tokenizer, self.cfg,
                                           progress=progress and self.info.is_main)
        out = {}
        for split, dataset in datasets.items():
            if len(dataset) == 0:
                raise DataError(splits[split], None, "no usable samples (all dropped as too long? see "
                                                     "model.data.overlong_policy)")
            out[split] = evaluate_dataset(self.plugin, self.model, dataset, self.cfg, self.tokenizer, self.info,
                                          progress=progress)
        return out

    def benchmark(self, name: str, data: str | Path, *, output: str | Path | None = None,
                  swap_sample: int | None = None, progress: bool = False) -> Any:
        """Score a benchmark file (``rewardbench``, ``rewardbench2``, ``rm-bench``) in its own
        column layout and compute its figures and the probes, as ``evaluate --benchmark`` does.

        Returns a :class:`~rm_registry.engine.evaluation.benchmarks.BenchmarkRun` (``.results`` is
        ``results.json``, ``.per_example`` one object per row); with ``output`` the three files are
        written there. See docs/evaluation.md.
        """
        from .evaluation.benchmarks import DEFAULT_SWAP_SAMPLE, run_benchmark

        return run_benchmark(self, name, data, output=output, progress=progress,
                             swap_sample=DEFAULT_SWAP_SAMPLE if swap_sample is None else swap_sample)


def _load_overrides(cfg: DictConfig, overrides: Iterable[str], plugin: RewardModelPlugin) -> DictConfig:
    """Merge the overrides allowed at load time, checked like training overrides."""
    items = list(overrides)
    if not items:
        return cfg
    layer = parse_overrides(items)
    own = f"model.{plugin.name}."
    for key in flatten(OmegaConf.to_container(layer)):
        if key not in LOAD_OVERRIDES and not key.startswith(own):
            raise ConfigError(
                f"override {key!r}: when loading a checkpoint only {', '.join(LOAD_OVERRIDES)} and the "
                f"architecture's own keys ({own}*) may be set; the rest describes the trained model"
            )
    return merge_closed(cfg, layer, "command line", _contract.config_types(plugin))


def load_reward_model(checkpoint: str | Path, *, overrides: Iterable[str] = (),
                      distribution: str | None = None) -> LoadedRewardModel:
    """Load a run folder (its latest complete checkpoint), one checkpoint folder, or a Hugging Face
    ``*ForSequenceClassification`` folder (see docs/pretrained.md).

    Only the weights are read (not the optimizer state). The model is built for the current
    layout: one process by default, or ``model.tensor_model_parallel_size=N`` under torchrun,
    whatever the layout it was trained with.

    Args:
        checkpoint: ``runs/rm1`` or ``runs/rm1/checkpoints/step_0000300``.
        overrides: ``key=value`` for the keys in :data:`LOAD_OVERRIDES` and the architecture's
            own section (for example ``model.regression.attribute_weights=[...]`` to re-weight
            attributes at scoring time). Validated like training overrides.
        distribution: Which installed distribution provides the architecture, when two do.

    Raises:
        ConfigError: no complete checkpoint there, or an override that is not allowed or invalid.
        UnsafeCheckpointError: the folder holds a pickle that is not checkpoint data, or a path
            leading out of it (see docs/security.md); nothing of it was executed.
    """
    if looks_like_hf_folder(checkpoint):
        return _load_hf_folder(Path(checkpoint), overrides, distribution)
    path = ckpt.find_latest(Path(checkpoint))
    check_contained(path)  # no file of the folder may lead elsewhere; pickles: ckpt.load_checkpoint
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{path}: no config.yaml in this checkpoint")
    cfg = load_saved_config(config_path.read_text(), str(config_path))
    cfg.model.tensor_model_parallel_size = 1
    cfg.model.pipeline_model_parallel_size = 1
    plugin = _provenance.plugin_for_checkpoint(path, str(cfg.model.reward_model_type), distribution=distribution)
    overrides = list(overrides)

    def load_weights(model: torch.nn.Module) -> None:
        try:
            ckpt.load_checkpoint(path, model, state=False)
        except ConfigError as exc:
            own = [o for o in overrides if o.startswith(f"model.{plugin.name}.")]
            if not own:
                raise
            raise ConfigError(
                f"{', '.join(own)}: this override changes the shape of the trained model, so {path} no longer "
                "loads; only settings that keep it (for example weights used to combine outputs) can be changed "
                "at load time"
            ) from exc

    return _ready(plugin, cfg, overrides, lambda: tokenizer_from_dir(path / "tokenizer"), load_weights, path)


def _ready(plugin: RewardModelPlugin, cfg: DictConfig, overrides: Iterable[str], tokenizer: Callable[[], Tokenizer],
           load_weights: Callable[[torch.nn.Module], None], checkpoint: Path) -> LoadedRewardModel:
    """The last steps of every load: the overrides merged and checked, the parallel state, the
    model built and filled by ``load_weights``, in eval mode."""
    cfg = _load_overrides(cfg, overrides, plugin)
    if isinstance(cfg.model.micro_batch_size, int):  # no optimizer steps here: one batch is one pass
        cfg.model.global_batch_size = cfg.model.micro_batch_size
    validate_engine_config(cfg)
    plugin.validate_config(cfg)
    _contract.resolve_config(plugin, cfg)  # checkpoints saved before it resolved get the same values
    tok = tokenizer()
    info = parallel.initialize(tensor_model_parallel_size=int(cfg.model.tensor_model_parallel_size),
                               pipeline_model_parallel_size=int(cfg.model.pipeline_model_parallel_size),
                               seed=int(cfg.seed))
    model = plugin.model_class.from_config(cfg, vocab_size=tok.vocab_size).to(info.device)
    load_weights(model)
    model.eval()
    from .model import compile_backbone

    compile_backbone(model, cfg, info.device)
    return LoadedRewardModel(plugin=plugin, cfg=cfg, tokenizer=tok, model=model, checkpoint=checkpoint, info=info)


def _hf_folder_plugin(folder: Path, distribution: str | None) -> tuple[RewardModelPlugin, dict[str, Any], list[str], int]:
    """The architecture of a Hugging Face folder (``rm_registry`` section of our exports; otherwise
    ``process_reward`` for a ``*ForTokenClassification``, ``binary_ranking`` for one label, else
    ``regression``), with its config, label names and K."""
    hf = read_config(folder)
    meta = hf.get("rm_registry") if isinstance(hf.get("rm_registry"), dict) else {}
    labels = hf.get("id2label") if isinstance(hf.get("id2label"), dict) else {}
    names = [str(labels[k]) for k in sorted(labels, key=int)] if labels else []
    k = len(names) or int(hf.get("num_labels", 1))
    default = "process_reward" if is_token_classifier(hf) else "binary_ranking" if k == 1 else "regression"
    name = meta.get("reward_model_type") or default
    return get_reward_model(str(name), distribution=distribution), hf, names, k


def _load_hf_folder(folder: Path, overrides: Iterable[str], distribution: str | None) -> LoadedRewardModel:
    """A Hugging Face reward-model folder: the architecture from its ``config.json`` (``rm_registry``
    section of our exports; otherwise ``binary_ranking`` for one label, else the plugin that
    accepts the labels' names), the weights converted on the fly."""
    plugin, hf, names, k = _hf_folder_plugin(folder, distribution)
    meta = hf.get("rm_registry") if isinstance(hf.get("rm_registry"), dict) else {}
    cfg = build_config(plugin)
    OmegaConf.set_struct(cfg, False)
    cfg.pretrained_checkpoint.restore_from_path = str(folder)
    cfg.model.encoder_seq_length = int(hf.get("max_position_embeddings") or hf.get("n_positions") or 2048)
    OmegaConf.set_struct(cfg, True)
    apply_pretrained(cfg, {})
    if meta.get("model"):
        drop_moved_keys(meta)  # folders exported by earlier versions
        cfg = merge_closed(cfg, OmegaConf.create({"model": meta["model"]}), f"{folder / 'config.json'} rm_registry")
    elif k > 1:
        layer = _contract.config_for_output_names(plugin, names)
        if layer:
            cfg = merge_closed(cfg, OmegaConf.create(dict(layer)), f"{folder / 'config.json'} id2label")
    return _ready(plugin, cfg, overrides, lambda: folder_tokenizer(folder),
                  lambda model: load_hf_weights(model, folder, cfg, load_head=True), folder)


def read_score_records(path: str | Path, plugin: RewardModelPlugin | None) -> list[tuple[int, list[str]]]:
    """``(line, texts)`` per line of a ``score`` input file: the texts ``plugin.score_texts`` reads
    (a group of one or more), or one text by the default rule: ``{"text": ...}``, or
    ``{"prompt": ..., "response": ...}`` joined as in training (values may be chat message lists).

    Raises:
        DataError: naming the file, the line and the problem.
    """
    if plugin is not None and _contract.is_token_level(plugin):
        # A token-level plugin tokenizes its records itself (score_sequences needs the model's
        # tokenizer): here only the file is read; its records are checked when scored.
        return [(line, []) for line, _ in read_jsonl(path)]
    return [(line, _contract.score_texts(plugin, rec, path=path, line=line)) for line, rec in read_jsonl(path)]


def checkpoint_plugin(checkpoint: str | Path, *, distribution: str | None = None) -> RewardModelPlugin:
    """The installed plugin of a checkpoint (run, checkpoint or Hugging Face folder), without building the model.

    Raises:
        ConfigError: no complete checkpoint there.
        PluginNotFoundError: its architecture is not installed (naming the distribution to install).
    """
    if looks_like_hf_folder(checkpoint):
        return _hf_folder_plugin(Path(checkpoint), distribution)[0]
    path = ckpt.find_latest(Path(checkpoint))
    check_contained(path)  # as load_reward_model: nothing read from it may lead elsewhere
    cfg = load_saved_config((path / "config.yaml").read_text(encoding="utf-8"), str(path / "config.yaml"))
    return _provenance.plugin_for_checkpoint(path, str(cfg.model.reward_model_type), distribution=distribution)


def score_file(model: LoadedRewardModel, data: str | Path, output: str | Path, *,
               batch_size: int | None = None, progress: bool = True) -> int:
    """Score every line of ``data`` and write one JSON object per line to ``output``, in input order.

    Each line is one record: the texts of ``plugin.score_texts`` (default: one ``text`` or
    ``prompt`` + ``response``) are scored together and ``plugin.score_records`` (default: today's
    ``score_outputs`` object) makes its one output object. ``output`` is written atomically (a
    temporary file renamed into place) by the main rank, so a failure never leaves a partial
    file. ``output`` ``"-"`` is standard output. Returns the number of lines scored.
    """
    if str(output) != "-":
        check_output_file(Path(output))
    if _contract.is_token_level(model.plugin):
        groups = [(line, _contract.score_sequences(model.plugin, rec, model.tokenizer, model.cfg, path=data, line=line))
                  for line, rec in read_jsonl(data)]
        _write_scores(model, model._score_sequences(groups, batch_size=batch_size, progress=progress), output)
        return len(groups)
    records = read_score_records(data, model.plugin)
    ids: list[list[int]] = []
    too_long = 0
    policy = "error" if model.cfg.model.data.overlong_policy == "error" else "truncate"
    for line, texts in records:
        for number, text in enumerate(texts):
            encoded, cut = model._fit(encode_text(model.tokenizer, text), policy, path=data, line=line,
                                      key=f"text {number} of the line" if len(texts) > 1 else None)
            too_long += cut
            ids.append(encoded)
    rewards = model.rewards(ids, batch_size=batch_size, progress=progress)
    results = _contract.score_records(model.plugin, rewards, [len(texts) for _, texts in records], model.cfg)
    _write_scores(model, results, output)
    if model.info.is_main:
        if too_long:
            print(f"{data}: {too_long} of {len(ids)} texts were longer than model.encoder_seq_length="
                  f"{model.cfg.model.encoder_seq_length} "
                  "and were cut to fit", file=sys.stderr)
    return len(results)


def _write_scores(model: LoadedRewardModel, results: Sequence[Mapping[str, Any]], output: str | Path) -> None:
    """One JSON object per line to ``output`` (atomically; ``-``: standard output), on the main rank."""
    if not model.info.is_main:
        return
    text = "".join(json.dumps(r) + "\n" for r in results)
    if str(output) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(Path(output), text)
