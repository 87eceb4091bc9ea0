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
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from .._errors import ConfigError, DataError
from .._registry import get_reward_model
from . import checkpoint as ckpt
from . import parallel
from .config import load_saved_config
from .data import encode_text, fit_length, pad_batch, read_jsonl, render_text
from .tokenizer import tokenizer_from_dir
from .trainer import _progress, evaluate_dataset

if TYPE_CHECKING:  # pragma: no cover
    from .._protocol import RewardModelPlugin, Tokenizer

__all__ = ["LoadedRewardModel", "load_reward_model", "read_score_inputs", "score_file"]

#: Keys that may be overridden when loading a checkpoint (the rest describes the trained model).
LOAD_OVERRIDES = ("model.tensor_model_parallel_size", "model.micro_batch_size", "model.data.overlong_policy")


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
                progress: bool = False) -> torch.Tensor:
        """Raw head outputs ``[B, K]`` for already-tokenized sequences (EOS included).

        Sequences are sorted by length so that each batch pads little; the result is in input
        order. Split across data-parallel ranks under torchrun; every rank returns all rows.
        """
        batch_size = batch_size or int(self.cfg.model.micro_batch_size)
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        mine = list(range(self.info.dp_rank, len(chunks), self.info.dp))
        self.model.eval()
        results: list[tuple[list[int], torch.Tensor]] = []
        bar = _progress(len(mine), "score", enabled=progress and self.info.is_main)
        for c in mine:
            tokens, lengths = pad_batch([token_ids[i] for i in chunks[c]], self.tokenizer.pad_id)
            out = self.model(tokens.to(self.info.device), lengths.to(self.info.device))
            results.append((chunks[c], out.float().cpu()))
            bar.update(1)
        bar.close()
        if self.info.dp > 1:
            from megatron.core import parallel_state

            gathered: list[Any] = [None] * self.info.dp
            torch.distributed.all_gather_object(gathered, results, group=parallel_state.get_data_parallel_group())
            results = [item for part in gathered for item in part]
        k = results[0][1].shape[-1] if results else 1
        out_all = torch.empty(len(token_ids), k)
        for idx, values in results:
            out_all[idx] = values
        return out_all

    def encode(self, text: str) -> list[int]:
        """Token ids for scoring ``text``: EOS appended, over-long text cut to ``encoder_seq_length``."""
        ids = encode_text(self.tokenizer, text)
        max_len = int(self.cfg.model.encoder_seq_length)
        if len(ids) > max_len:
            ids = [*ids[: max_len - 1], self.tokenizer.eos_id]
        return ids

    def score(self, texts: Iterable[str], *, batch_size: int | None = None, progress: bool = False) -> list[dict[str, Any]]:
        """One JSON-ready dict per text, with a float ``reward`` (plus what the plugin adds)."""
        ids = [self.encode(t) for t in texts]
        if not ids:
            return []
        return self.plugin.score_outputs(self.rewards(ids, batch_size=batch_size, progress=progress), self.cfg)

    def evaluate(self, data: str | Path, *, progress: bool = False) -> dict[str, Any]:
        """The plugin's metrics over a labelled file in one of its training formats."""
        datasets = self.plugin.build_datasets({"test": data}, self.tokenizer, self.cfg)
        dataset = datasets["test"]
        if len(dataset) == 0:
            raise DataError(data, None, "no usable samples (all dropped as too long? see model.data.overlong_policy)")
        return evaluate_dataset(self.plugin, self.model, dataset, self.cfg, self.tokenizer, self.info,
                                progress=progress)


def load_reward_model(checkpoint: str | Path, *, overrides: Iterable[str] = ()) -> LoadedRewardModel:
    """Load a run folder (its latest complete checkpoint) or one checkpoint folder.

    Args:
        checkpoint: ``runs/rm1`` or ``runs/rm1/checkpoints/step_0000300``.
        overrides: ``key=value`` for the keys in :data:`LOAD_OVERRIDES` (for example the tensor
            parallel size of this run, which may differ from the training run's).

    Raises:
        ConfigError: no complete checkpoint there, or an override that is not allowed.
    """
    path = ckpt.find_latest(Path(checkpoint))
    config_path = path / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{path}: no config.yaml in this checkpoint")
    cfg = load_saved_config(config_path.read_text(), str(config_path))
    cfg.model.tensor_model_parallel_size = 1
    cfg.model.pipeline_model_parallel_size = 1
    items = list(overrides)
    for item in items:
        key = item.split("=", 1)[0]
        if "=" not in item or key not in LOAD_OVERRIDES:
            raise ConfigError(f"override {item!r}: only {', '.join(k + '=...' for k in LOAD_OVERRIDES)} may be set "
                              "when loading a checkpoint")
    if items:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(items))
    plugin = get_reward_model(str(cfg.model.reward_model_type))
    tokenizer = tokenizer_from_dir(path / "tokenizer")
    info = parallel.initialize(tensor_model_parallel_size=int(cfg.model.tensor_model_parallel_size),
                               pipeline_model_parallel_size=1, seed=int(cfg.seed))
    model = plugin.model_class.from_config(cfg, vocab_size=tokenizer.vocab_size).to(info.device)
    with warnings.catch_warnings():
        # Only the weights matter here; the note that the per-rank *trainer* state (optimizer) is
        # rank 0's under another layout concerns --resume, not scoring or evaluation.
        warnings.filterwarnings("ignore", message=r".*per-rank trainer state is rank 0's", category=RuntimeWarning)
        ckpt.load_checkpoint(path, model)
    model.eval()
    return LoadedRewardModel(plugin=plugin, cfg=cfg, tokenizer=tokenizer, model=model, checkpoint=path, info=info)


def read_score_inputs(path: str | Path) -> list[tuple[int, str]]:
    """``(line, text)`` pairs to score from JSON Lines: ``{"text": ...}`` or ``{"prompt": ..., "response": ...}`` per line.

    The prompt and the response are joined with a newline. Values may be chat message lists.

    Raises:
        DataError: naming the file, the line and the problem.
    """
    texts = []
    for line, rec in read_jsonl(path):
        if "text" in rec:
            texts.append((line, render_text(rec["text"], path=path, line=line, key="text")))
        elif "prompt" in rec and "response" in rec:
            prompt = render_text(rec["prompt"], path=path, line=line, key="prompt")
            response = render_text(rec["response"], path=path, line=line, key="response")
            texts.append((line, f"{prompt}\n{response}"))
        else:
            raise DataError(path, line, f"expected a 'text' key, or 'prompt' and 'response'; found {sorted(rec)}")
    return texts


def score_file(model: LoadedRewardModel, data: str | Path, output: str | Path, *,
               batch_size: int | None = None, progress: bool = True) -> int:
    """Score every line of ``data`` and write one JSON object per line to ``output``, in input order.

    ``output`` is written atomically (a temporary file renamed into place) by the main rank, so a
    failure never leaves a partial file. Returns the number of lines scored.
    """
    records = read_score_inputs(data)
    max_len = int(model.cfg.model.encoder_seq_length)
    ids: list[list[int]] = []
    too_long = 0
    for line, text in records:
        full = encode_text(model.tokenizer, text)
        if len(full) > max_len:
            too_long += 1
            if model.cfg.model.data.overlong_policy == "error":
                fit_length(full, max_len, "error", eos_id=model.tokenizer.eos_id, path=data, line=line)
            full = [*full[: max_len - 1], model.tokenizer.eos_id]
        ids.append(full)
    results = model.plugin.score_outputs(model.rewards(ids, batch_size=batch_size, progress=progress), model.cfg)
    if model.info.is_main:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for r in results:
                    fh.write(json.dumps(r) + "\n")
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if too_long:
            print(f"{data}: {too_long} of {len(ids)} texts were longer than model.encoder_seq_length={max_len} "
                  "and were cut to fit", file=sys.stderr)
    return len(results)
